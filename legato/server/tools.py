"""Which tools REST-submitted programs may call: a registry configured when the server starts.

Programs name tools; clients cannot upload code. `legato serve --tools SPEC` picks the registry:

- `path/to/tools.py`: the file is imported (like `legato run`'s FILE convention); its
  `registry = ToolRegistry()` is used if it defines one, else the default registry its
  `@legato.tool` decorators filled.
- `package.module:name`: `name` in that module must be a `ToolRegistry`.
- none: the default registry (tools registered by code imported before the server started).

The validator checks every submitted program against this registry, so a program naming an
unknown tool is refused with 422 before it runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from legato.programs.loader import LoadError, import_python_file
from legato.tools.registry import ToolRegistry, default_registry


class ToolsLoadError(ValueError):
    """`--tools` does not name a usable registry; the message says what to change."""


def _import_file(path: Path) -> object:
    try:
        return import_python_file(path, "legato_tools")
    except LoadError as exc:
        raise ToolsLoadError(f"--tools {path}: {exc}") from exc


def load_registry(spec: str | None) -> ToolRegistry:
    if not spec:
        return default_registry
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ToolsLoadError(f"--tools {spec}: no such file")
        found = getattr(_import_file(path), "registry", None)
        if found is None:
            return default_registry
        if not isinstance(found, ToolRegistry):
            raise ToolsLoadError(
                f"--tools {spec}: `registry` is a {type(found).__name__}, not a ToolRegistry"
            )
        return found
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ToolsLoadError(f"--tools {spec!r}: give a .py file or 'package.module:registry'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolsLoadError(f"--tools {spec!r}: cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, ToolRegistry):
        raise ToolsLoadError(f"--tools {spec!r}: {module_name}.{attr} is not a ToolRegistry")
    return found
