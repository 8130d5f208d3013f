"""Loading what `legato run FILE` runs: a program file, its inputs, and an engine.

The FILE convention (what examples follow):

- A Python file defines the program as a module-level `program`: a builder `CompiledProgram`
  (`Program(...).compile()`), a `ProgramSpec`, or an `@legato.agent` function. Without a
  `program` name, the file's single such object is used (more than one is an error).
- Optional `inputs`: a dict, or a zero-argument function (sync or async) returning one; it may
  do setup such as creating a database file. `--input k=v` / `--inputs-json` override keys.
- Tools are registered at import time with `@legato.tool` (the default registry), or the file
  defines `registry = ToolRegistry()` to use its own.
- Optional `tenant` (str) and `timeout_s` (float).
- A `.json` FILE is a serialised `ProgramSpec` (inputs then come from the command line).

Engines (`--engine`) are built by `legato.launch`, as for `legato serve`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from legato.programs.agent import AgentProgram
from legato.programs.builder import CompiledProgram
from legato.programs.spec import ProgramSpec
from legato.programs.validate import validate


class LoadError(ValueError):
    """FILE does not follow the convention; the message says what to change."""


@dataclass
class LoadedFile:
    path: Path
    program: CompiledProgram | AgentProgram
    inputs: Any  # dict, function returning one, or None: see `resolve_inputs`
    registry: Any | None  # a ToolRegistry the file defines, else None (default registry)
    tenant: str | None
    timeout_s: float | None


def import_python_file(path: Path, module_prefix: str = "legato_user") -> ModuleType:
    """Import a user's Python file under a fresh module name (its directory joins sys.path, so
    it can import its sibling modules). Used by `legato run FILE` and `legato serve --tools`."""
    name = f"{module_prefix}_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.parent.resolve())
    if parent not in sys.path:
        sys.path.insert(0, parent)  # so the file can import its sibling modules
    spec.loader.exec_module(module)
    return module


def _as_runnable(obj: Any, where: str) -> CompiledProgram | AgentProgram:
    if isinstance(obj, CompiledProgram | AgentProgram):
        return obj
    if isinstance(obj, ProgramSpec):
        return CompiledProgram(obj, validate(obj))
    raise LoadError(
        f"{where} is a {type(obj).__name__}; "
        "expected Program(...).compile(), a ProgramSpec or an @legato.agent"
    )


async def resolve_inputs(loaded: LoadedFile) -> dict[str, Any]:
    """The file's `inputs` (calling it, and awaiting it, when it is a function)."""
    value, path = loaded.inputs, loaded.path
    if value is None:
        return {}
    if callable(value):
        value = value()
        if inspect.isawaitable(value):
            value = await value
    if not isinstance(value, dict):
        raise LoadError(
            f"{path}: `inputs` must be a dict (or a function returning one), got {type(value).__name__}"
        )
    return value


def load_file(path: Path) -> LoadedFile:
    """Import FILE (running its top level) and find its program; `inputs` stays unresolved."""
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    if path.suffix == ".json":
        try:
            spec = ProgramSpec.from_json(path.read_bytes())
        except ValueError as exc:
            raise LoadError(f"{path}: not a valid program spec: {exc}") from exc
        return LoadedFile(path, _as_runnable(spec, str(path)), None, None, None, None)
    module = import_python_file(path)
    names = vars(module)
    if "program" in names:
        program = _as_runnable(names["program"], f"{path}: `program`")
    else:
        found = [v for v in names.values() if isinstance(v, CompiledProgram | AgentProgram)]
        if len(found) != 1:
            raise LoadError(
                f"{path}: define `program = ...` (found {len(found)} candidate programs: "
                f"{', '.join(getattr(f, 'name', '?') for f in found) or 'none'})"
            )
        program = found[0]
    inputs = names.get("inputs")
    timeout = names.get("timeout_s")
    return LoadedFile(
        path,
        program,
        inputs,
        names.get("registry"),
        names.get("tenant"),
        float(timeout) if timeout is not None else None,
    )


def parse_inputs(pairs: list[str], inputs_json: str | None) -> dict[str, Any]:
    """`k=v` pairs (v parsed as JSON when it is JSON, else taken as a string) and a JSON object."""
    result: dict[str, Any] = {}
    if inputs_json:
        try:
            data = json.loads(inputs_json)
        except json.JSONDecodeError as exc:
            raise LoadError(f"--inputs-json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise LoadError("--inputs-json must be a JSON object")
        result.update(data)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise LoadError(f"--input {pair!r}: expected KEY=VALUE")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result
