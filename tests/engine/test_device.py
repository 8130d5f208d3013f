"""`check_device`: the one check of an engine's `--device` (every command and `EngineConfig`),
a usage error at once for a bad name or for CUDA where torch sees no GPU (CI has none)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from legato.cli import app
from legato.engine_adapter.torch.config import ConfigError, EngineConfig, check_device


@pytest.mark.parametrize(
    "device",
    ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "tpu", "", " cpu", "cuda:0 ", "cuda:\u0663", "cuda:\udcff"],
)
def test_a_device_name_other_than_cpu_cuda_or_cuda_n_is_refused(device: str) -> None:
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        check_device(device)
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        EngineConfig(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_says_so(device: str) -> None:
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        EngineConfig(device=device)


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "engine"],
        ["bench", "structured"],
        ["bench", "spec"],
        ["bench", "rl"],
        ["engine", "serve"],
    ],
)
def test_every_device_option_is_checked_when_the_command_line_is_parsed(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--device", "gpu"])
    assert result.exit_code == 2, result.output
    assert "device must be cpu, cuda or cuda:N" in result.output
