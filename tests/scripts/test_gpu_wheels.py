"""`scripts/gpu_wheels.py`: what travels to the GPU machine is the closure of Legato's runtime
requirements at the versions installed here, less what the GPU image holds."""

from __future__ import annotations

import runpy
from importlib import metadata
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_wheels.py"


def test_the_wheel_list_is_the_runtime_closure_at_the_installed_versions() -> None:
    pins = runpy.run_path(str(SCRIPT))["closure"]()
    for needed in (
        "fastapi",
        "pydantic",
        "pydantic-core",
        "uvicorn",
        "redis",
        "hiredis",
        "pytest-asyncio",
        "jsonschema",
    ):
        assert pins[needed] == metadata.version(needed), needed
    for in_image in ("torch", "numpy", "matplotlib"):
        assert in_image not in pins
    assert "tomli" not in pins  # a Python < 3.11 requirement: not on the machine's 3.12
