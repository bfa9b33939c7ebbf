"""Send a batch to its destinations and collect one result per item, in order.

Items are grouped per destination and the groups sent concurrently. An item
whose answer says the slot map moved (SLOT_MOVED, CROSS_SHARD) is routed
again after a map refresh (still moved after the last round: UNAVAILABLE
SLOT_MOVING); an item whose destination was unreachable is
resent after a backoff, with the SAME body (transfer ids are idempotent), as
long as the caller's deadline and `ATTEMPTS_MAX` allow. What is still
undecided at the end gets the plan's `give_up` result (code UNAVAILABLE; never
a claim that it happened).

No gRPC here: destinations are reached through a `Plan`, so the loop is
tested with fakes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import grpc
import structlog

from gateway.routing import Disposition, Target, group
from shardbank import errors

log = structlog.get_logger("gateway.dispatch")

I = TypeVar("I")  # noqa: E741 (an item, as sent)
R = TypeVar("R")  # its result

# Rounds of sending one batch: the first try, re-routes and resends together.
ATTEMPTS_MAX = 8
# Backoff between rounds that met an unreachable destination: initial * 2^n, capped, +- jitter.
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# Time kept back from the caller's deadline to build and send the reply.
REPLY_MARGIN_S = 0.05
# Shortest deadline given to one downstream call.
CALL_TIMEOUT_S_MIN = 0.05


class Budget:
    """The caller's deadline, as seen from the gateway."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ends_at = clock() + seconds

    def remaining_s(self) -> float:
        return self._ends_at - self._clock()

    def call_timeout_s(self) -> float:
        """Deadline for one downstream call: what is left, less the reply margin."""
        return max(CALL_TIMEOUT_S_MIN, self.remaining_s() - REPLY_MARGIN_S)

    def affords(self, wait_s: float) -> bool:
        """Is there time to wait this long and still make one more call?"""
        return self.remaining_s() - wait_s > REPLY_MARGIN_S + CALL_TIMEOUT_S_MIN


def backoff_s(round_index: int) -> float:
    base: float = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * float(2**round_index))
    return base * random.uniform(0.5, 1.0)


class Plan(Protocol[I, R]):
    """How one kind of item is routed, sent and judged."""

    def target(self, item: I) -> Target:
        """Its destination now; raises BankError (UNAVAILABLE) if none is known."""

    async def send(self, target: Target, items: list[I], timeout_s: float) -> list[R]:
        """One call; returns a result per item in order, or raises BankError for the call."""

    def classify(self, result: R) -> Disposition: ...

    def renew(self, item: I) -> I:
        """A copy to retry with after RENEW (e.g. a new account id)."""

    def give_up(self, item: I, error: errors.BankError) -> R:
        """The result of an item that could not be settled (or whose call failed for good)."""


class Topology(Protocol):
    async def refresh_map(self) -> None: ...

    async def unreachable(self, target: Target, error: errors.BankError) -> None:
        """A call to `target` failed with UNAVAILABLE: refresh what may have moved."""


def is_retryable(error: errors.BankError) -> bool:
    return bool(error.code == grpc.StatusCode.UNAVAILABLE)


@dataclass
class _State(Generic[I, R]):
    items: list[I]
    results: list[R | None]
    open: set[int]
    last_error: dict[int, errors.BankError] = field(default_factory=dict)
    last_result: dict[int, R] = field(default_factory=dict)


async def dispatch(
    items: list[I],
    plan: Plan[I, R],
    topology: Topology,
    budget: Budget,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    attempts_max: int = ATTEMPTS_MAX,
) -> list[R]:
    state: _State[I, R] = _State(list(items), [None] * len(items), set(range(len(items))))
    for round_index in range(attempts_max):
        moved, unreachable = await _round(state, plan, topology, budget)
        if not state.open or round_index == attempts_max - 1:
            break
        # A second MOVED in a row backs off too: during a slot move the node
        # that now owns the slot may not have seen the new map yet (it polls).
        wait_s = backoff_s(round_index) if unreachable or (moved and round_index > 0) else 0.0
        if not budget.affords(wait_s):
            break
        if moved:
            await topology.refresh_map()
        if wait_s > 0:
            await sleep(wait_s)
    return _settle(state, plan)


async def _round(
    state: _State[I, R], plan: Plan[I, R], topology: Topology, budget: Budget
) -> tuple[bool, bool]:
    """Send every open item once; returns (some slot moved, some destination unreachable)."""
    targets: list[Target | None] = [None] * len(state.items)
    unreachable = False
    for index in sorted(state.open):
        try:
            targets[index] = plan.target(state.items[index])
        except errors.BankError as error:
            _unsettled(state, index, error)
            unreachable = True
    groups = group(targets)
    timeout_s = budget.call_timeout_s()
    sends = [
        _send(plan, target, [state.items[i] for i in indices], timeout_s)
        for target, indices in groups.items()
    ]
    # One destination (every single-transfer call): awaited here, no task to create.
    answers = [await sends[0]] if len(sends) == 1 else await asyncio.gather(*sends)
    moved = False
    for (target, indices), answer in zip(groups.items(), answers, strict=True):
        if isinstance(answer, errors.BankError):
            if is_retryable(answer):
                unreachable = True
                await topology.unreachable(target, answer)
                for index in indices:
                    _unsettled(state, index, answer)
            else:
                for index in indices:
                    _close(state, index, plan.give_up(state.items[index], answer))
            continue
        for index, result in zip(indices, answer, strict=True):
            disposition = plan.classify(result)
            if disposition is Disposition.DONE:
                _close(state, index, result)
                continue
            state.last_result[index] = result
            if disposition is Disposition.MOVED:
                moved = True
            elif disposition is Disposition.RENEW:
                state.items[index] = plan.renew(state.items[index])
            else:
                unreachable = True
    return moved, unreachable


async def _send(
    plan: Plan[I, R], target: Target, items: list[I], timeout_s: float
) -> list[R] | errors.BankError:
    try:
        results = await plan.send(target, items, timeout_s)
    except errors.BankError as error:
        return error
    if len(results) != len(items):
        log.error("reply_length_mismatch", target=str(target), sent=len(items), received=len(results))
        return errors.BankError(
            grpc.StatusCode.INTERNAL,
            errors.INTERNAL,
            f"{target} answered {len(results)} of {len(items)} items",
        )
    return results


def _close(state: _State[I, R], index: int, result: R) -> None:
    state.results[index] = result
    state.open.discard(index)


def _unsettled(state: _State[I, R], index: int, error: errors.BankError) -> None:
    """The item's destination could not be reached: that, not an older answer, is its news."""
    state.last_error[index] = error
    state.last_result.pop(index, None)


def _settle(state: _State[I, R], plan: Plan[I, R]) -> list[R]:
    """Results of the items still open: the last answer a destination gave,
    else the plan's give-up result. An item still re-routed after the last
    round (SLOT_MOVED, CROSS_SHARD: the slot map was changing under a move)
    gives up as UNAVAILABLE SLOT_MOVING, nothing recorded: a refusal a client
    retries with the same id, never one that looks final."""
    for index in sorted(state.open):
        last = state.last_result.get(index)
        if last is not None and plan.classify(last) is Disposition.MOVED:
            moving = errors.BankError(
                grpc.StatusCode.UNAVAILABLE, errors.SLOT_MOVING, "the slot map is changing; retry"
            )
            state.results[index] = plan.give_up(state.items[index], moving)
            continue
        if last is not None:
            state.results[index] = last
            continue
        error = state.last_error.get(index) or errors.BankError(
            grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "no destination answered in time"
        )
        state.results[index] = plan.give_up(state.items[index], error)
    settled = [r for r in state.results if r is not None]
    if len(settled) != len(state.results):
        raise AssertionError("an item has no result")  # pragma: no cover
    return settled
