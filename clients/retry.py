"""Bounded retries of UNAVAILABLE with tenacity, and the deadline of each try.

Only `Unavailable` is retried: the call did not take effect, or it is
idempotent because the caller fixed the transfer id before the first try.
Every attempt has a deadline, capped by what is left of the total budget, so
a call never runs longer than `total_s_max` plus one backoff step.
"""

from __future__ import annotations

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


def _tenacity_kwargs(policy: RetryPolicy) -> dict[str, object]:
    return {
        "stop": stop_after_attempt(policy.attempts_max) | stop_after_delay(policy.total_s_max),
        # wait_exponential + wait_random rather than wait_exponential_jitter, whose
        # parameters changed between tenacity 8 and 9.
        "wait": wait_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)
        + wait_random(0, policy.backoff_initial_s),
        "retry": retry_if_exception_type(errors.Unavailable),
        "reraise": True,
    }


class _Budget:
    def __init__(self, policy: RetryPolicy, deadline_s: float) -> None:
        self._ends_at = time.monotonic() + policy.total_s_max
        self._deadline_s = deadline_s

    def attempt_deadline_s(self) -> float:
        left = self._ends_at - time.monotonic()
        return max(ATTEMPT_DEADLINE_S_MIN, min(self._deadline_s, left))


def call(policy: RetryPolicy, deadline_s: float, attempt: Callable[[float], T]) -> T:
    """Run `attempt(deadline_s_of_this_try)` until it succeeds or the policy gives up.

    `attempt` raises gRPC errors or ShardbankErrors; both leave as ShardbankError.
    """
    budget = _Budget(policy, deadline_s)
    for retry_state in Retrying(**_tenacity_kwargs(policy)):  # type: ignore[arg-type]
        with retry_state:
            try:
                return attempt(budget.attempt_deadline_s())
            except grpc.RpcError as exc:
                raise errors.from_rpc_error(exc) from None
    raise AssertionError("tenacity stopped without a result or an error")  # pragma: no cover


async def call_async(policy: RetryPolicy, deadline_s: float, attempt: Callable[[float], Awaitable[T]]) -> T:
    """The asyncio twin of `call`."""
    budget = _Budget(policy, deadline_s)
    async for retry_state in AsyncRetrying(**_tenacity_kwargs(policy)):  # type: ignore[arg-type]
        with retry_state:
            try:
                return await attempt(budget.attempt_deadline_s())
            except grpc.RpcError as exc:
                raise errors.from_rpc_error(exc) from None
    raise AssertionError("tenacity stopped without a result or an error")  # pragma: no cover
