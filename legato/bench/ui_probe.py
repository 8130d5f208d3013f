"""What the operator page costs under load: `legato bench load` polls `/ui/api/snapshot` as the
page does (once a second) while its agents run, and reports how long the answers took.

Two times per poll: the server's own (`took_s` in the answer: gathering every panel, the
programs table included) and the one this client saw (plus the network and this process, which
also drives every agent, so it is the pessimistic one), next to the client-seen time of
`GET /healthz` right after it: the same path through this client and the server's event loop
for an endpoint that does no work, the baseline the snapshot's time is compared with. The
live-program count the page showed is recorded with them, so the report says at how many live
programs the times were measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

POLL_S = 1.0  # the page's own poll period (legato/server/ui/static/app.js POLL_MS)


@dataclass(slots=True)
class UiProbe:
    server_s: list[float] = field(default_factory=list)
    client_s: list[float] = field(default_factory=list)
    healthz_s: list[float] = field(default_factory=list)
    live_programs: list[int] = field(default_factory=list)
    failures: int = 0

    async def poll(self, client: httpx.AsyncClient, stop: anyio.Event) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                with anyio.fail_after(30):
                    response = await client.get("/ui/api/snapshot")
                body = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, TimeoutError, ValueError):
                body = None
            elapsed = time.perf_counter() - start
            if isinstance(body, dict) and "took_s" in body:
                self.client_s.append(elapsed)
                self.server_s.append(float(body["took_s"]))
                self.live_programs.append(int(body["programs"]["total"]))
                start = time.perf_counter()
                try:
                    with anyio.fail_after(30):
                        await client.get("/healthz")
                    self.healthz_s.append(time.perf_counter() - start)
                except (httpx.HTTPError, TimeoutError):
                    pass
            else:
                self.failures += 1  # an older server without /ui, or an error
            with anyio.move_on_after(POLL_S):
                await stop.wait()

    def summary(self, percentiles: Any) -> dict[str, Any] | None:
        """Percentiles in milliseconds, at the live-program counts seen; None without a poll."""
        if not self.server_s:
            return None
        heavy = max(self.live_programs)
        at_peak = [s for s, n in zip(self.server_s, self.live_programs, strict=True) if n >= 0.9 * heavy]
        ms = 1000.0
        return {
            "polls": len(self.server_s),
            "failures": self.failures,
            "live_programs_max": heavy,
            "live_programs_median": sorted(self.live_programs)[len(self.live_programs) // 2],
            "server_ms": {k: v * ms for k, v in percentiles(self.server_s).items()},
            "server_ms_at_peak": {k: v * ms for k, v in percentiles(at_peak).items()},
            "client_ms": {k: v * ms for k, v in percentiles(self.client_s).items()},
            "client_healthz_ms": {k: v * ms for k, v in percentiles(self.healthz_s).items()},
        }


def ui_line(summary: dict[str, Any] | None) -> str | None:
    if summary is None:
        return None
    s, peak, c = summary["server_ms"], summary["server_ms_at_peak"], summary["client_ms"]
    h = summary["client_healthz_ms"]
    return (
        f"/ui data endpoint  server p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms "
        f"(at >= 90% of {summary['live_programs_max']} live programs: p50 {peak['p50']:.1f}, "
        f"max {peak['max']:.1f} ms); client-seen p50 {c['p50']:.1f} ms vs GET /healthz "
        f"{h['p50']:.1f} ms; {summary['polls']} polls"
    )


__all__ = ["UiProbe", "ui_line"]
