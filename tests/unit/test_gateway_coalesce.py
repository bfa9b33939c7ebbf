"""The gateway's per-destination coalescer with a fake downstream: sends
share calls only under load, each caller gets its own results in order, a
failed call fails only its callers, deadlines and the batch limit hold."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from gateway.coalesce import Coalescer
from shardbank import errors

A, B = "shard-1", "shard-2"


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (no pytest asyncio plugin here)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 10.0))

    return run


def late(target: str) -> errors.BankError:
    return errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, f"{target} late")


@dataclass
class Downstream:
    """Answers each item with (target, item); holds every call until released."""

    calls: list[tuple[str, list[str], float]] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)
    fail: dict[int, errors.BankError] = field(default_factory=dict)  # call index -> error
    hold: bool = True

    async def send(self, target: str, items: list[str], timeout_s: float) -> list[str]:
        index = len(self.calls)
        self.calls.append((target, list(items), timeout_s))
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.hold:
            await gate.wait()
        if index in self.fail:
            raise self.fail[index]
        return [f"{target}:{item}" for item in items]

    def release(self, index: int) -> None:
        self.gates[index].set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def coalescer(down: Downstream, in_flight_max: int = 1, items_max: int = 100) -> Coalescer[str, str, str]:
    return Coalescer(down.send, late, in_flight_max=in_flight_max, items_max=items_max)


@in_loop
async def test_a_lone_send_goes_at_once_and_alone() -> None:
    down = Downstream(hold=False)
    lanes = coalescer(down)
    assert await lanes.send(A, ["t1", "t2"], 5.0) == [f"{A}:t1", f"{A}:t2"]
    assert [c[1] for c in down.calls] == [["t1", "t2"]]


@in_loop
async def test_sends_queued_behind_a_call_share_the_next_one_in_order() -> None:
    down = Downstream()
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    rest = [asyncio.ensure_future(lanes.send(A, [f"b{i}", f"c{i}"], 5.0)) for i in range(5)]
    await settle()
    assert len(down.calls) == 1  # everyone else waits for the one in flight
    down.release(0)
    await settle()
    assert len(down.calls) == 2
    assert down.calls[1][1] == [x for i in range(5) for x in (f"b{i}", f"c{i}")]
    down.release(1)
    assert await first == [f"{A}:a"]
    for i, task in enumerate(rest):
        assert await task == [f"{A}:b{i}", f"{A}:c{i}"]


@in_loop
async def test_destinations_have_their_own_lanes() -> None:
    down = Downstream()
    lanes = coalescer(down)
    tasks = [asyncio.ensure_future(lanes.send(t, ["x"], 5.0)) for t in (A, B)]
    await settle()
    assert sorted(c[0] for c in down.calls) == [A, B]  # B did not wait behind A
    down.release(0)
    down.release(1)
    assert [await t for t in tasks] == [[f"{A}:x"], [f"{B}:x"]]


@in_loop
async def test_up_to_in_flight_max_calls_go_before_anything_queues() -> None:
    down = Downstream()
    lanes = coalescer(down, in_flight_max=2)
    tasks = [asyncio.ensure_future(lanes.send(A, [str(i)], 5.0)) for i in range(4)]
    await settle()
    assert [c[1] for c in down.calls] == [["0"], ["1"]]
    assert lanes.in_flight(A) == 2
    down.release(1)
    await settle()
    assert [c[1] for c in down.calls][2:] == [["2", "3"]]
    for index in (0, 2):
        down.release(index)
    assert [await t for t in tasks] == [[f"{A}:{i}"] for i in range(4)]
    assert lanes.in_flight(A) == 0


@in_loop
async def test_a_failed_call_fails_only_the_callers_it_carried() -> None:
    down = Downstream(fail={1: late(A)})
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    carried = [asyncio.ensure_future(lanes.send(A, [f"b{i}"], 5.0)) for i in range(3)]
    await settle()
    down.release(0)
    await settle()
    after = asyncio.ensure_future(lanes.send(A, ["c"], 5.0))  # queued behind the failing call
    await settle()
    down.release(1)
    await settle()
    down.release(2)
    assert await first == [f"{A}:a"]
    for task in carried:
        with pytest.raises(errors.BankError) as caught:
            await task
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert await after == [f"{A}:c"]
    assert [c[1] for c in down.calls] == [["a"], ["b0", "b1", "b2"], ["c"]]


@in_loop
async def test_a_caller_past_its_deadline_is_told_unavailable_and_not_sent_if_still_queued() -> None:
    down = Downstream()
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    hasty = asyncio.ensure_future(lanes.send(A, ["hasty"], 0.01))
    patient = asyncio.ensure_future(lanes.send(A, ["patient"], 5.0))
    with pytest.raises(errors.BankError) as caught:
        await hasty
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == errors.SHARD_UNAVAILABLE
    down.release(0)
    await settle()
    down.release(1)
    assert await first == [f"{A}:a"]
    assert await patient == [f"{A}:patient"]
    assert [c[1] for c in down.calls] == [["a"], ["patient"]]  # the expired one was never sent


@in_loop
async def test_the_shared_call_gets_the_longest_deadline_of_its_callers() -> None:
    down = Downstream()
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 1.0))
    await settle()
    shared = [asyncio.ensure_future(lanes.send(A, [str(s)], s)) for s in (2.0, 7.0, 3.0)]
    await settle()
    down.release(0)
    await settle()
    down.release(1)
    await asyncio.gather(first, *shared)
    assert down.calls[0][2] == pytest.approx(1.0, abs=0.1)
    assert down.calls[1][2] == pytest.approx(7.0, abs=0.1)


@in_loop
async def test_a_caller_whose_deadline_passes_mid_call_gets_unavailable_others_their_results() -> None:
    down = Downstream()
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    hasty = asyncio.ensure_future(lanes.send(A, ["hasty"], 0.05))
    patient = asyncio.ensure_future(lanes.send(A, ["patient"], 5.0))
    await settle()
    down.release(0)
    await settle()
    assert down.calls[1][1] == ["hasty", "patient"]  # both went out together
    with pytest.raises(errors.BankError):
        await hasty  # its deadline passed while the shared call was out: never "done"
    down.release(1)
    assert await patient == [f"{A}:patient"]
    assert await first == [f"{A}:a"]


@in_loop
async def test_the_queue_goes_at_once_when_it_reaches_the_batch_limit() -> None:
    down = Downstream()
    lanes = coalescer(down, items_max=4)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    queued = [asyncio.ensure_future(lanes.send(A, [f"q{i}"], 5.0)) for i in range(9)]
    await settle()
    # Two full batches left without waiting for the call in flight; one item waits.
    assert [c[1] for c in down.calls] == [["a"], ["q0", "q1", "q2", "q3"], ["q4", "q5", "q6", "q7"]]
    for index in range(3):
        down.release(index)
    await settle()
    assert [c[1] for c in down.calls][3:] == [["q8"]]
    down.release(3)
    await asyncio.gather(first, *queued)
    assert all(len(c[1]) <= 4 for c in down.calls)


@in_loop
async def test_a_caller_cancelled_while_queued_is_not_sent() -> None:
    down = Downstream()
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    gone = asyncio.ensure_future(lanes.send(A, ["gone"], 5.0))
    kept = asyncio.ensure_future(lanes.send(A, ["kept"], 5.0))
    await settle()
    gone.cancel()
    await settle()
    down.release(0)
    await settle()
    down.release(1)
    await asyncio.gather(first, kept)
    assert [c[1] for c in down.calls] == [["a"], ["kept"]]


@in_loop
async def test_a_short_reply_fails_its_callers_as_internal() -> None:
    async def short(target: str, items: list[str], timeout_s: float) -> list[str]:
        return items[:-1]

    lanes: Coalescer[str, str, str] = Coalescer(short, late)
    with pytest.raises(errors.BankError) as caught:
        await lanes.send(A, ["a", "b"], 5.0)
    assert caught.value.code == grpc.StatusCode.INTERNAL


@in_loop
async def test_a_bug_below_fails_its_callers_as_internal_and_the_lane_keeps_serving() -> None:
    calls = 0

    async def buggy(target: str, items: list[str], timeout_s: float) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("bug")
        return items

    lanes: Coalescer[str, str, str] = Coalescer(buggy, late)
    with pytest.raises(errors.BankError) as caught:
        await lanes.send(A, ["a"], 5.0)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert await lanes.send(A, ["b"], 5.0) == ["b"]
    assert lanes.in_flight(A) == 0


@in_loop
async def test_the_same_id_from_two_callers_rides_one_call_and_each_gets_its_answer() -> None:
    down = Downstream()
    lanes = coalescer(down)
    first = asyncio.ensure_future(lanes.send(A, ["x"], 5.0))
    await settle()
    racing = [asyncio.ensure_future(lanes.send(A, ["same-id"], 5.0)) for _ in range(2)]
    await settle()
    down.release(0)
    await settle()
    down.release(1)
    assert await first == [f"{A}:x"]
    assert [await t for t in racing] == [[f"{A}:same-id"], [f"{A}:same-id"]]
    assert down.calls[1][1] == ["same-id", "same-id"]


def test_a_lane_needs_room() -> None:
    with pytest.raises(ValueError):
        Coalescer(Downstream().send, late, in_flight_max=0)


@in_loop
async def test_a_big_batch_goes_at_once_on_its_own_call() -> None:
    down = Downstream()
    lanes: Coalescer[str, str, str] = Coalescer(down.send, late, in_flight_max=1, solo_items_min=3)
    small = asyncio.ensure_future(lanes.send(A, ["a"], 5.0))
    await settle()
    big = asyncio.ensure_future(lanes.send(A, ["b1", "b2", "b3"], 5.0))
    await settle()
    assert [c[1] for c in down.calls] == [["a"], ["b1", "b2", "b3"]]  # not queued behind "a"
    down.release(1)
    assert await big == [f"{A}:b1", f"{A}:b2", f"{A}:b3"]
    down.release(0)
    assert await small == [f"{A}:a"]
