"""Smoke test of `legato bench engine --quick`: it runs end to end on identical weights and
reports every measurement and target ratio (timings themselves are too noisy to assert)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def test_engine_bench_quick_reports_everything(tmp_path: Path) -> None:
    from legato.bench.engine_bench import DECODE_BATCHES, main

    out = tmp_path / "engine.json"
    result = main(out, device="cpu", quick=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["sanity"]["greedy_match"], result["sanity"]  # same weights, same greedy tokens
    assert set(result["decode"]) == {str(b) for b in DECODE_BATCHES}
    for row in [*result["decode"].values(), result["prefill"]]:
        assert row["torch_engine_tok_s"] > 0 and row["transformers_tok_s"] > 0
    assert result["ttft"]["miss_s"] > 0 and result["ttft"]["hit_s"] > 0
    targets = result["targets"]
    assert targets["decode_b32_ratio"] == result["decode"]["32"]["ratio"]
    assert isinstance(targets["decode_b32_met"], bool) and isinstance(targets["hit_met"], bool)
