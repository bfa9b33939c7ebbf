"""Bounded retries of UNAVAILABLE with tenacity, and the deadline of each try.

Only `Unavailable` is retried: the call did not take effect, or it is
idempotent because the caller fixed the transfer id before the first try.
Every attempt has a deadline, capped by what is left of the total budget, so
a call never runs longer than `total_s_max` plus one backoff step.

The first try runs outside tenacity: building its retry machinery per call
was ~45% of a load generator's CPU with one transfer per call (py-spy, S3), and
almost every call succeeds first time. Only a call whose first try was
UNAVAILABLE pays for it, and then backs off exactly as before (the same
exponential steps, the same budget, the same number of tries in all).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from clients import errors

T = TypeVar("T")

# Shortest deadline an attempt is given, even when the budget is nearly spent.
ATTEMPT_DEADLINE_S_MIN = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a call tries when the cluster answers UNAVAILABLE."""

    # Tries in all, the first included (1 = no retry).
    attempts_max: int = 6
    # Budget for all tries and the waits between them.
    total_s_max: float = 20.0
    # Exponential backoff between tries: initial * 2^n (+ jitter up to initial), capped.
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        if self.total_s_max <= 0 or self.backoff_initial_s < 0 or self.backoff_max_s < 0:
            raise ValueError("retry times must be positive")


NO_RETRY = RetryPolicy(attempts_max=1)


def _tenacity_kwargs(policy: RetryPolicy, budget: _Budget) -> dict[str, object]:
    """The retries after a failed first try: tries 2..attempts_max, the backoff
    continuing from its second step, stopping when the call's budget is spent."""
    return {
        "stop": stop_after_attempt(policy.attempts_max - 1) | stop_after_delay(max(0.0, budget.left_s())),
        # wait_exponential + wait_random rather than wait_exponential_jitter, whose
        # parameters changed between tenacity 8 and 9.
        "wait": wait_exponential(multiplier=2 * policy.backoff_initial_s, max=policy.backoff_max_s)
        + wait_random(0, policy.backoff_initial_s),
        "retry": retry_if_exception_type(errors.Unavailable),
        "reraise": True,
    }


def first_backoff_s(policy: RetryPolicy) -> float:
    """The wait between the first try and the second (tenacity's first step, jittered)."""
    return min(policy.backoff_max_s, policy.backoff_initial_s) + random.uniform(0, policy.backoff_initial_s)


class _Budget:
    def __init__(self, policy: RetryPolicy, deadline_s: float) -> None:
        self._ends_at = time.monotonic() + policy.total_s_max
        self._deadline_s = deadline_s

    def left_s(self) -> float:
        return self._ends_at - time.monotonic()

    def attempt_deadline_s(self) -> float:
        return max(ATTEMPT_DEADLINE_S_MIN, min(self._deadline_s, self.left_s()))

    def affords_retry(self, policy: RetryPolicy, wait_s: float) -> bool:
        return policy.attempts_max > 1 and self.left_s() > wait_s


def call(policy: RetryPolicy, deadline_s: float, attempt: Callable[[float], T]) -> T:
    """Run `attempt(deadline_s_of_this_try)` until it succeeds or the policy gives up.

    `attempt` raises gRPC errors or ShardbankErrors; both leave as ShardbankError.
    """
    budget = _Budget(policy, deadline_s)

    def one_try() -> T:
        try:
            return attempt(budget.attempt_deadline_s())
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    try:
        return one_try()
    except errors.Unavailable:
        wait_s = first_backoff_s(policy)
        if not budget.affords_retry(policy, wait_s):
            raise
    time.sleep(wait_s)
    for retry_state in Retrying(**_tenacity_kwargs(policy, budget)):  # type: ignore[arg-type]
        with retry_state:
            return one_try()
    raise AssertionError("tenacity stopped without a result or an error")  # pragma: no cover


async def call_async(policy: RetryPolicy, deadline_s: float, attempt: Callable[[float], Awaitable[T]]) -> T:
    """The asyncio twin of `call`."""
    budget = _Budget(policy, deadline_s)

    async def one_try() -> T:
        try:
            return await attempt(budget.attempt_deadline_s())
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None

    try:
        return await one_try()
    except errors.Unavailable:
        wait_s = first_backoff_s(policy)
        if not budget.affords_retry(policy, wait_s):
            raise
    await asyncio.sleep(wait_s)
    async for retry_state in AsyncRetrying(**_tenacity_kwargs(policy, budget)):  # type: ignore[arg-type]
        with retry_state:
            return await one_try()
    raise AssertionError("tenacity stopped without a result or an error")  # pragma: no cover
