"""Evaluating declarative routers: conditions over state, first matching route wins.

Conditions are total: a missing path reads as None and a comparison between incompatible types
is simply false, so a router never crashes a run because an LLM produced odd output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from legato.programs.spec import ConditionSpec, RouterSpec
from legato.programs.state import lookup_path


def _len(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, Mapping | list | tuple):
        return item in container
    return False


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: bool(a == b),
    "ne": lambda a, b: bool(a != b),
    "lt": lambda a, b: bool(a < b),
    "le": lambda a, b: bool(a <= b),
    "gt": lambda a, b: bool(a > b),
    "ge": lambda a, b: bool(a >= b),
    "contains": _contains,
    "not_contains": lambda a, b: not _contains(a, b),
    "in": lambda a, b: _contains(b, a),
    "not_in": lambda a, b: not _contains(b, a),
    "truthy": lambda a, _b: bool(a),
    "falsy": lambda a, _b: not a,
    "is_null": lambda a, _b: a is None,
    "not_null": lambda a, _b: a is not None,
    "len_eq": lambda a, b: _len(a) == b,
    "len_gt": lambda a, b: (n := _len(a)) is not None and n > b,
    "len_lt": lambda a, b: (n := _len(a)) is not None and n < b,
}


def holds(cond: ConditionSpec, state: Mapping[str, Any]) -> bool:
    try:
        return _OPS[cond.op](lookup_path(state, cond.var), cond.value)
    except TypeError:
        return False


def route(router: RouterSpec, state: Mapping[str, Any]) -> str:
    for candidate in router.routes:
        if all(holds(c, state) for c in candidate.when):
            return candidate.to
    return router.default
