"""Workload generators: deterministic under a seed, within their documented ranges."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from legato.bench.workloads import WORKLOADS, build_workload, resolve_params
from legato.bench.workloads.common import tenant_sequence
from legato.sim.workload import Segment, Workload


def _segments(workload: Workload) -> list[Segment]:
    segs = [s for p in workload.programs for c in p.calls for s in c.prompt]
    segs += [Segment(c.output_seg_id, c.output_tokens) for p in workload.programs for c in p.calls]
    return segs


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_same_seed_same_workload_and_other_seed_differs(name: str) -> None:
    a = build_workload(name, 16, seed=3)
    assert a == build_workload(name, 16, seed=3)
    assert a.programs != build_workload(name, 16, seed=4).programs
    assert len(a.programs) == 16


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_structure_invariants(name: str) -> None:
    workload = build_workload(name, 24, seed=1)
    sizes: dict[int, int] = {}
    for seg in _segments(workload):
        assert sizes.setdefault(seg.seg_id, seg.tokens) == seg.tokens, "equal ids must mean equal length"
        assert seg.tokens > 0
    outputs = [c.output_seg_id for p in workload.programs for c in p.calls]
    assert len(outputs) == len(set(outputs)), "every call's output is new content"
    for program in workload.programs:
        assert program.arrival_s == 0.0  # closed loop by default
        for i, call in enumerate(program.calls):
            assert all(0 <= d < i for d in call.deps), "deps point to earlier calls"
            assert (call.tool is None) == (call.tool_latency_s == 0.0)
        last = program.calls[-1]
        assert last.tool is None


def test_swe_ranges_and_prefix_growth() -> None:
    workload = build_workload("swe", 40, seed=7, params={"tenants": 2})
    systems: dict[str, set[int]] = {}
    for program in workload.programs:
        assert 10 <= len(program.calls) <= 60
        systems.setdefault(program.tenant, set()).add(program.calls[0].prompt[0].seg_id)
        assert 2000 <= program.calls[0].prompt[0].tokens <= 4000
        for prev, call in pairwise(program.calls):
            assert 100 <= prev.output_tokens <= 600
            assert call.prompt[: len(prev.prompt)] == prev.prompt, "each step extends the previous prompt"
            out, observation = call.prompt[len(prev.prompt) :]
            assert out == Segment(prev.output_seg_id, prev.output_tokens)
            assert 200 <= observation.tokens <= 3000
            assert prev.tool in {"bash", "edit", "search", "test"}
            assert 0 < prev.tool_latency_s <= 300
    assert {t: len(ids) for t, ids in systems.items()} == {"tenant-0": 1, "tenant-1": 1}
    assert systems["tenant-0"] != systems["tenant-1"]


def test_swe_params_are_coerced_and_recorded() -> None:
    workload = build_workload(
        "swe", 8, seed=0, params={"steps_min": "3", "steps_max": "5", "arrival_rate": "2"}
    )
    assert all(3 <= len(p.calls) <= 5 for p in workload.programs)
    arrivals = [p.arrival_s for p in workload.programs]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals) and arrivals[-1] > 0
    assert workload.params["steps_max"] == 5 and workload.params["system_min"] == 2000


def test_multiagent_workers_share_prefix_and_reducer_joins() -> None:
    for program in build_workload("multiagent", 10, seed=2).programs:
        planner, reducer = program.calls[0], program.calls[-1]
        firsts = [c for c in program.calls if c.node.startswith("worker-") and c.node.endswith("-0")]
        assert 4 <= len(firsts) <= 8
        plan = Segment(planner.output_seg_id, planner.output_tokens)
        for worker in firsts:
            assert worker.deps == (0,)
            assert worker.prompt[:3] == (*planner.prompt, plan)
        assert len({w.prompt[3].seg_id for w in firsts}) == len(firsts), "sub-tasks differ"
        assert len(reducer.deps) == len(firsts)
        for first in firsts:
            worker = first.node.rsplit("-", 1)[0]
            chain = [c for c in program.calls if c.node.startswith(worker + "-")]
            assert 2 <= len(chain) <= 5
            for prev, call in pairwise(chain):
                assert prev.tool == "search" and 500 <= call.prompt[-1].tokens <= 4000
        assert 3000 <= planner.prompt[0].tokens <= 6000


def test_text2sql_repair_loop_is_bounded() -> None:
    workload = build_workload("text2sql", 60, seed=5, params={"repair_prob": "0.9", "max_repairs": "2"})
    for program in workload.programs:
        nodes = [c.node for c in program.calls]
        assert nodes[:2] == ["link", "generate"] and nodes[-1] == "answer"
        assert sum(n.startswith("repair-") for n in nodes) <= 2
        assert all(c.tool == "sql" for c in program.calls[1:-1])
    # questions on the same database share system prompt + schema
    by_db = Counter(p.calls[0].prompt[1].seg_id for p in workload.programs)
    assert max(by_db.values()) > 1


def test_rl_grpo_groups_of_siblings_share_their_prompt() -> None:
    workload = build_workload("rl-grpo", 20, seed=9)
    groups: dict[str | None, list[int]] = {}
    for program in workload.programs:
        groups.setdefault(program.group, []).append(program.calls[0].prompt[1].seg_id)
        assert 4 <= len(program.calls) <= 16
    assert sorted(len(v) for v in groups.values()) == [4, 8, 8]  # last group truncated
    assert all(len(set(v)) == 1 for v in groups.values())
    assert len({v[0] for v in groups.values()}) == 3


def test_chat_turns_extend_history() -> None:
    for program in build_workload("chat", 8, seed=4).programs:
        assert 2 <= len(program.calls) <= 12
        for prev, call in pairwise(program.calls):
            assert call.prompt[: len(prev.prompt) + 1] == (
                *prev.prompt,
                Segment(prev.output_seg_id, prev.output_tokens),
            )
            assert prev.tool == "user"


def test_tenant_sequence_counts_weights_and_interleave() -> None:
    seq = tenant_sequence(11, 2, "2,1", "10,1")
    counts = Counter(t.name for t in seq)
    assert counts == {"tenant-0": 10, "tenant-1": 1}
    assert {t.name: t.weight for t in seq} == {"tenant-0": 2.0, "tenant-1": 1.0}
    even = [t.name for t in tenant_sequence(6, 2, "", "")]
    assert even == ["tenant-0", "tenant-1"] * 3


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown workload 'nope'; valid: swe"),
        ("swe", {"stepz": "3"}, "unknown parameter(s) stepz"),
        ("swe", {"steps_min": "x"}, "steps_min='x' must be an integer"),
        ("swe", {"steps_min": "9", "steps_max": "3"}, "steps_min/steps_max"),
        ("swe", {"tenants": "2", "tenant_weights": "1,2,3"}, "tenant_weights has 3 entries"),
        ("chat", {"arrival_rate": "-1"}, "arrival_rate must be >= 0"),
        ("trace:", {}, "needs a file path"),
    ],
)
def test_bad_input_names_what_to_fix(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_workload(name, 4, seed=0, params=params)
    assert message in str(info.value)


def test_resolve_params_lists_defaults() -> None:
    params = resolve_params("rl-grpo", {"group_size": "4"})
    assert params["group_size"] == 4 and params["turns_max"] == 16
