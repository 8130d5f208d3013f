"""Client-side tools: the run waits until the client submits a result."""

from __future__ import annotations

import anyio
import pytest

from legato.tools import (
    ClientTool,
    ClientToolBroker,
    DuplicateSubmissionError,
    ToolRegistry,
    ToolResult,
    ToolRuntime,
    UnknownClientCallError,
)


async def wait_pending(broker: ClientToolBroker, run_id: str, count: int = 1) -> None:
    with anyio.fail_after(5):
        # The broker has no "call registered" event (nothing in production needs one): poll.
        while len(broker.pending(run_id)) < count:  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def test_wait_until_submit() -> None:
    broker = ClientToolBroker()
    results: list[ToolResult] = []

    async def waiter() -> None:
        results.append(await broker.wait("r", "c1", "get_weather", {"city": "Oslo"}, timeout_s=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_pending(broker, "r")
        [pending] = broker.pending("r")
        assert (pending.name, pending.args, pending.call_id) == ("get_weather", {"city": "Oslo"}, "c1")
        assert broker.is_waiting("r") and broker.waiting_runs() == ["r"]
        assert not results
        broker.submit("r", "c1", {"temp_c": 4})
    assert results == [ToolResult(ok=True, output={"temp_c": 4})]
    assert not broker.is_waiting("r") and broker.pending("r") == []


async def test_submitted_error_is_a_failed_result() -> None:
    broker = ClientToolBroker()
    results: list[ToolResult] = []

    async def waiter() -> None:
        results.append(await broker.wait("r", "c1", "read_file", {}, timeout_s=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_pending(broker, "r")
        broker.submit("r", "c1", None, error="permission denied")
    assert not results[0].ok and results[0].error == "permission denied"


async def test_timeout_then_late_submit_is_rejected() -> None:
    broker = ClientToolBroker()
    with anyio.fail_after(5):
        result = await broker.wait("r", "c1", "slow_client", {}, timeout_s=0.05)
    assert not result.ok and result.error_kind == "timeout" and "slow_client" in (result.error or "")
    assert broker.pending("r") == []
    with pytest.raises(DuplicateSubmissionError, match="timed out"):
        broker.submit("r", "c1", "too late")


async def test_double_submit_and_unknown_calls() -> None:
    broker = ClientToolBroker()
    with pytest.raises(UnknownClientCallError, match="not waiting"):
        broker.submit("nope", "c1", 1)

    async def waiter(call_id: str) -> None:
        await broker.wait("r", call_id, "t", {}, timeout_s=5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "c1")
        tg.start_soon(waiter, "c2")
        await wait_pending(broker, "r", 2)
        with pytest.raises(UnknownClientCallError, match="pending: c1, c2"):
            broker.submit("r", "c3", 1)
        broker.submit("r", "c1", 1)
        with pytest.raises(DuplicateSubmissionError, match="already has a result"):
            broker.submit("r", "c1", 2)  # before the waiter woke up
        broker.submit("r", "c2", 2)
    with pytest.raises(DuplicateSubmissionError, match="already has a result"):
        broker.submit("r", "c1", 3)  # after


async def test_cancel_run_releases_waiters() -> None:
    broker = ClientToolBroker()
    results: list[ToolResult] = []

    async def waiter(call_id: str) -> None:
        results.append(await broker.wait("r", call_id, "t", {}, timeout_s=30))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "a")
            tg.start_soon(waiter, "b")
            await wait_pending(broker, "r", 2)
            broker.cancel_run("r")
    assert [r.error_kind for r in results] == ["cancelled", "cancelled"]
    assert not broker.is_waiting("r")


async def test_client_tool_through_the_runtime() -> None:
    registry = ToolRegistry()
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    registry.register(ClientTool("search_web", timeout=10, params_schema=schema))
    assert registry.spec("search_web").kind == "client"
    results: list[ToolResult] = []
    async with ToolRuntime(registry) as rt:
        bad = await rt.call("search_web", {}, run_id="r", call_id="c0", tenant="t")
        assert bad.error_kind == "bad_args" and "'q'" in (bad.error or "")

        async def step(call_id: str) -> None:
            results.append(await rt.call("search_web", {"q": "kv"}, run_id="r", call_id=call_id, tenant="t"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(step, "c1")
                await wait_pending(rt.client, "r")
                rt.client.submit("r", "c1", ["result"])
                tg.start_soon(step, "c2")
                await wait_pending(rt.client, "r")
                await rt.release_run("r")  # run cancelled: its waiter is released
    assert results[0].ok and results[0].output == ["result"]
    assert results[1].error_kind == "cancelled"
    assert rt.stats.count("search_web") == 1  # a cancelled wait is not a latency sample
