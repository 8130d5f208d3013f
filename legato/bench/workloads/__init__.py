"""Workload generators, by name, and the one entry point that builds any workload.

Every generator is a function `(n_programs, seed, **params) -> Workload`, deterministic under
`seed`, with keyword parameters that all have defaults (documented in each module). Besides the
generators in `WORKLOADS`, `build_workload` accepts trace replays: `trace:PATH` (a Mooncake block
trace, `mooncake`), `sessions:PATH` (an OpenAI-chat call log, `sessions`) and `chat:PATH` (agent
sessions as message lists, `chat_log`); they share `legato.bench.traces` and take the load options
`arrival=trace|burst|poisson:RATE` and `time_scale=X`.

Parameters may arrive as strings (from `legato bench --param key=value`); they are converted to
the type of the parameter's default, and unknown names are rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping

from legato.bench.workloads import chat, multiagent, rl_grpo, swe, text2sql
from legato.sim.workload import Workload

Generator = Callable[..., Workload]

WORKLOADS: dict[str, Generator] = {
    "swe": swe.generate,
    "multiagent": multiagent.generate,
    "text2sql": text2sql.generate,
    "rl-grpo": rl_grpo.generate,
    "chat": chat.generate,
}

TRACE_PREFIXES = ("trace:", "sessions:", "chat:")


def workload_names() -> list[str]:
    """Every accepted workload name (the trace forms take a path after the colon)."""
    return [*WORKLOADS, *(f"{prefix}PATH" for prefix in TRACE_PREFIXES)]


def _trace_loader(prefix: str) -> Generator:
    from legato.bench.workloads import chat_log, mooncake, sessions

    loaders: dict[str, Generator] = {
        "trace:": mooncake.load_trace,
        "sessions:": sessions.load_sessions,
        "chat:": chat_log.load_chat,
    }
    return loaders[prefix]


def _generator(name: str) -> tuple[Generator, dict[str, object]]:
    """The function that builds workload `name` and the fixed arguments it needs."""
    if name in WORKLOADS:
        return WORKLOADS[name], {}
    for prefix in TRACE_PREFIXES:
        if name.startswith(prefix):
            path = name[len(prefix) :]
            if not path:
                raise ValueError(f"workload {name!r} needs a file path after {prefix!r}")
            return _trace_loader(prefix), {"path": path}
    raise ValueError(f"unknown workload {name!r}; valid: {', '.join(workload_names())}")


def _coerce(key: str, value: object, default: object) -> object:
    """Convert a string parameter to the type of its default (`None` defaults take an int)."""
    if not isinstance(value, str):
        return value
    target: type = int if default is None else type(default)
    if target is str:
        return value
    try:
        if target is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return target(value)
    except ValueError:
        kind = {int: "an integer", float: "a number", bool: "true or false"}.get(target, target.__name__)
        raise ValueError(f"parameter {key}={value!r} must be {kind}") from None


def resolve_params(name: str, params: Mapping[str, object]) -> dict[str, object]:
    """Every parameter of workload `name` with its value: defaults, overridden by `params`."""
    fn, fixed = _generator(name)
    signature = inspect.signature(fn)
    tunable = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in fixed
    }
    unknown = sorted(set(params) - set(tunable))
    if unknown:
        valid = ", ".join(sorted(tunable))
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for workload {name!r}; valid: {valid}")
    return {key: _coerce(key, params.get(key, default), default) for key, default in tunable.items()}


def build_workload(
    name: str, n_programs: int, seed: int, params: Mapping[str, object] | None = None
) -> Workload:
    """Build workload `name` with `n_programs` programs; `Workload.params` records every parameter.

    Raises ValueError (naming what to fix) for an unknown name, parameter or bad value.
    """
    if n_programs <= 0:
        raise ValueError(f"programs must be > 0, got {n_programs}")
    fn, fixed = _generator(name)
    resolved = resolve_params(name, params or {})
    workload = fn(fixed["path"], n_programs, seed, **resolved) if fixed else fn(n_programs, seed, **resolved)
    return dataclasses.replace(workload, params={**resolved, **workload.params})
