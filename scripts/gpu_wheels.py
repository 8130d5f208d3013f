"""The pinned requirements `scripts/gpu_check.sh prepare` downloads as wheels for the GPU machine.

That machine's image already holds torch, numpy and the heavy numeric stack, and can fetch
nothing; everything else Legato imports at run time (and pytest with pytest-asyncio, for the
engine tests) travels as wheels of exactly the versions installed in this checkout's `.venv`, so
the GPU run uses what CI tests. Prints `name==version` lines: the closure of Legato's runtime
requirements over the installed distributions' metadata, without the packages below.
"""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement

# In the GPU image already, large, and tied to its CUDA build (torch) or its numpy.
IN_IMAGE = {"torch", "numpy", "matplotlib", "tokenizers", "safetensors", "triton", "sympy"}
ROOTS_FOR_TESTS = ("pytest", "pytest-asyncio", "jsonschema")  # the engine tests import jsonschema


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The GPU machine: CPython 3.12 on x86-64 Linux (its image's python3).
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def requirement(text: str, extras: frozenset[str] = frozenset()) -> tuple[str, frozenset[str]] | None:
    """The distribution a requirement names and the extras it asks of it, or None where its
    marker holds on the GPU machine for none of `extras` (those of the distribution that
    declares it: `redis[hiredis]` brings hiredis)."""
    req = Requirement(text)
    if req.marker is not None and not any(req.marker.evaluate({**TARGET, "extra": e}) for e in ("", *extras)):
        return None
    return canonical(req.name), frozenset(req.extras)


def closure() -> dict[str, str]:
    todo = [r for text in metadata.requires("legato") or [] if (r := requirement(text))]
    todo += [(canonical(n), frozenset()) for n in ROOTS_FOR_TESTS]
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name in IN_IMAGE:
            continue
        seen.add((name, extras))
        dist = metadata.distribution(name)
        pins[name] = dist.version
        todo += [r for text in dist.requires or [] if (r := requirement(text, extras))]
    return pins


if __name__ == "__main__":
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")
