"""Run state: named variables whose writes combine through reducers.

A node never assigns state directly; it returns writes `{var: value}` and each variable's reducer
folds the value in (LangGraph's channels, Parrot's semantic variables). Because writes are plain
JSON values, the journal stores them as-is and a resumed run replays them through the same
reducers to rebuild exactly the state it had.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from legato.programs.spec import VarSpec


class Reducer(enum.StrEnum):
    REPLACE = "replace"  # new value wins
    APPEND = "append"  # list + [value]
    EXTEND = "extend"  # list + list(value)
    ADD = "add"  # numbers sum, strings / lists concatenate
    MERGE = "merge"  # dict update


class StateError(ValueError):
    """A write or read that does not fit the program's declared state."""


def _replace(_old: Any, new: Any) -> Any:
    return new


def _append(old: Any, new: Any) -> Any:
    return [*(old or []), new]


def _extend(old: Any, new: Any) -> Any:
    if not isinstance(new, list | tuple):
        raise StateError(f"'extend' needs a list, got {type(new).__name__}")
    return [*(old or []), *new]


def _add(old: Any, new: Any) -> Any:
    if old is None:
        return new
    try:
        return old + new
    except TypeError as exc:
        raise StateError(f"'add' cannot combine {type(old).__name__} and {type(new).__name__}") from exc


def _merge(old: Any, new: Any) -> Any:
    if not isinstance(new, dict):
        raise StateError(f"'merge' needs a dict, got {type(new).__name__}")
    return {**(old or {}), **new}


REDUCERS: dict[str, Callable[[Any, Any], Any]] = {
    Reducer.REPLACE: _replace,
    Reducer.APPEND: _append,
    Reducer.EXTEND: _extend,
    Reducer.ADD: _add,
    Reducer.MERGE: _merge,
}

_MISSING = object()


def lookup_path(root: Mapping[str, Any], path: str) -> Any:
    """Value at a dotted path (`result.ok`, `items.0.name`); None when any step is missing.
    Missing data reads as None rather than raising so declarative conditions stay total."""
    head, _, rest = path.partition(".")
    value: Any = root.get(head)
    if not rest:
        return value
    for key in rest.split("."):
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list | tuple) and key.lstrip("-").isdigit():
            index = int(key)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            return None
    return value


class State:
    """The variables of one run. Values are JSON data; `snapshot()` gives routers a deep copy."""

    def __init__(self, variables: Iterable[VarSpec]) -> None:
        self._specs = {var.name: var for var in variables}
        self._values: dict[str, Any] = {name: copy.deepcopy(v.default) for name, v in self._specs.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def get(self, path: str) -> Any:
        return lookup_path(self._values, path)

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Initial values: replace the defaults (not reduced), only for declared variables."""
        unknown = sorted(set(inputs) - set(self._specs))
        if unknown:
            raise StateError(
                f"unknown input variable(s) {', '.join(map(repr, unknown))}; "
                f"declared state variables: {', '.join(sorted(self._specs)) or '(none)'}"
            )
        for name, value in inputs.items():
            self._values[name] = copy.deepcopy(value)

    def apply(self, writes: Mapping[str, Any]) -> None:
        """Fold `writes` in through the reducers: all of them, or (on error) none."""
        new: dict[str, Any] = {}
        for name, value in writes.items():
            spec = self._specs.get(name)
            if spec is None:
                raise StateError(f"write to undeclared state variable {name!r}")
            try:
                new[name] = REDUCERS[spec.reducer](self._values[name], value)
            except (StateError, TypeError, ValueError) as exc:  # e.g. append onto a number
                raise StateError(f"state variable {name!r} (reducer {spec.reducer}): {exc}") from exc
        self._values.update(new)

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self._values)

    def values(self) -> dict[str, Any]:
        """The live values (no copy): for the executor's own reads."""
        return self._values


class Scope(Mapping[str, Any]):
    """State plus local names (a map body's item variable), locals first."""

    def __init__(self, state: Mapping[str, Any], local: Mapping[str, Any] | None = None) -> None:
        self._state = state
        self._local = local or {}

    def __getitem__(self, key: str) -> Any:
        if key in self._local:
            return self._local[key]
        return self._state[key]

    def __iter__(self) -> Any:
        yield from self._local
        yield from (k for k in self._state if k not in self._local)

    def __len__(self) -> int:
        return len(set(self._local) | set(self._state))
