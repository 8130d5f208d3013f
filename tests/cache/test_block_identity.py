"""One definition of block identity: the engine, its scheduler and other processes agree, and
tenants never share a block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from legato.cache.block_hash import cache_extra_keys, prefix_block_hashes, tenant_salt
from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.torch import build_core
from legato.engine_adapter.torch.model_runner import KV_LAYOUT
from legato.engine_adapter.torch.sequence import Sequence as Seq
from tests.tiny_model import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_tenant_salt_is_stable_and_distinct() -> None:
    assert tenant_salt("alice") == tenant_salt("alice") != tenant_salt("bob")
    assert "alice" not in tenant_salt("alice")
    with pytest.raises(ValueError):
        tenant_salt("")


def test_engine_scheduler_and_cache_function_agree() -> None:
    core = build_core(model_config=TINY, num_blocks=64)
    tokens = list(range(70))
    salt = tenant_salt("alice")
    keys = cache_extra_keys(core.fingerprint, core.dtype_name, KV_LAYOUT, salt)
    assert core.extra_keys(salt) == keys
    expected = prefix_block_hashes(tokens, 16, keys)
    seq = Seq("r", tokens, 70, SamplingParams(), 0, 0, keys, frozenset())
    assert seq.full_block_hashes(70, 16) == expected
    # what the scheduler really registers after computing the prompt is the same chain
    core.run_to_completion(
        [GenerateRequest("r", tuple(tokens), SamplingParams(max_tokens=1), cache_salt=salt)]
    )
    assert set(expected) <= set(core.blocks.cached)
    other = prefix_block_hashes(tokens, 16, core.extra_keys(tenant_salt("bob")))
    assert not set(other) & set(expected)


def test_another_process_computes_the_same_block_hashes() -> None:
    core = build_core(model_config=TINY, num_blocks=64)
    salt = tenant_salt("alice")
    code = (
        "import json; from legato.engine_adapter.torch import build_core;"
        "from tests.tiny_model import TINY;"
        "from legato.cache.block_hash import prefix_block_hashes;"
        "c = build_core(model_config=TINY, num_blocks=64);"
        f"hs = prefix_block_hashes(list(range(70)), 16, c.extra_keys({salt!r}));"
        "print(json.dumps([h.hex() for h in hs]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    here = [h.hex() for h in prefix_block_hashes(list(range(70)), 16, core.extra_keys(salt))]
    assert json.loads(out.stdout) == here
