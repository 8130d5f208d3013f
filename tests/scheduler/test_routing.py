"""Replica choice: program affinity, RL-group affinity, work stealing, oversized programs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from legato.scheduler.admission import KVBudget
from legato.scheduler.routing import Router


def _budget(*used: float) -> KVBudget:
    b = KVBudget(low=1.0, high=1.0)
    b.set_capacity([1000.0] * len(used))
    for i, tokens in enumerate(used):
        if tokens:
            b.admit(f"resident-{i}", i, tokens, [])
    return b


def _need(tokens: float) -> Callable[[int], tuple[Sequence[float], Sequence[float]]]:
    def need(replica: int) -> tuple[Sequence[float], Sequence[float]]:
        del replica
        return [tokens], [0.0]

    return need


def _never_idle(replica: int) -> bool:
    del replica
    return False


def test_new_program_goes_to_the_replica_with_most_room() -> None:
    router = Router()
    b = _budget(600.0, 200.0, 400.0)
    assert router.choose(b, _need(100.0), home=None, group=None, waited_s=0.0, idle=_never_idle) == 1
    assert router.choose(b, _need(900.0), home=None, group=None, waited_s=0.0, idle=_never_idle) is None


def test_program_affinity_keeps_a_program_home() -> None:
    router = Router()
    b = _budget(600.0, 100.0)
    # replica 1 has more room, but the program's KV lives on 0 and still fits there
    assert router.choose(b, _need(300.0), home=0, group=None, waited_s=0.0, idle=_never_idle) == 0


def test_group_siblings_follow_the_first_one() -> None:
    router = Router()
    b = _budget(500.0, 100.0)
    router.joined("g1", 0)
    assert router.group_home("g1") == 0
    assert router.choose(b, _need(200.0), home=None, group="g1", waited_s=0.0, idle=_never_idle) == 0
    # when the group's replica is full, a sibling waits for it (its prompt is computed once
    # there), and goes where there is room only when that replica is idle
    assert router.choose(b, _need(600.0), home=None, group="g1", waited_s=60.0, idle=_never_idle) is None
    assert router.choose(b, _need(600.0), home=None, group="g1", waited_s=0.0, idle=lambda r: True) == 1
    router.joined("g1", 0)
    router.left("g1")
    assert router.group_home("g1") == 0
    router.left("g1")
    assert router.group_home("g1") is None


def test_work_stealing_only_for_idle_replicas_or_long_waits() -> None:
    router = Router(steal_after_s=30.0)
    b = _budget(950.0, 100.0)
    assert router.choose(b, _need(200.0), waited_s=5.0, idle=_never_idle, home=0, group=None) is None
    assert router.choose(b, _need(200.0), waited_s=5.0, idle=lambda r: r == 1, home=0, group=None) == 1
    assert router.choose(b, _need(200.0), waited_s=31.0, idle=_never_idle, home=0, group=None) == 1
    # calls parked on its home replica pin a program there
    assert (
        router.choose(
            b, _need(200.0), waited_s=31.0, idle=lambda r: True, may_steal=False, home=0, group=None
        )
        is None
    )
    assert router.steals == 2


def test_oversized_program_runs_alone_on_an_empty_replica() -> None:
    router = Router()
    b = _budget(500.0, 0.0)
    assert router.choose(b, _need(5000.0), home=None, group=None, waited_s=0.0, idle=_never_idle) == 1
    assert router.choose(b, _need(5000.0), home=1, group=None, waited_s=0.0, idle=_never_idle) == 1
