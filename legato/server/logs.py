"""Structured logs: one JSON object per line, with the run, program and tenant ids a record
carries (`log.info(..., extra={"run_id": ...})`), so a run can be followed with `grep`/`jq`."""

from __future__ import annotations

import json
import logging
import sys
import time

CONTEXT_FIELDS = ("run_id", "program_id", "tenant", "path", "status")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "info") -> None:
    """JSON lines on stderr for the `legato` loggers (uvicorn keeps its own access log)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("legato")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
