"""The seam with the review workflow: what happens to a transfer the engine
holds for review (decision REVIEW).

`ReviewSink.hold_for_review` gets the transfers (each with its `risk` set,
alert id included) and the engine's assessments, and returns one outcome per
transfer. The review workflow (debit held through two-phase commit with a
review deadline, approve/reject/timeout by a risk officer) implements it;
until it is wired in, `RefuseReview` refuses such transfers with
FAILED_PRECONDITION `RISK_REVIEW_UNAVAILABLE` and records nothing (the id
stays free), so nothing moves without the review a REVIEW decision demands.
"""

from __future__ import annotations

from typing import Protocol

from gateway.dispatch import Budget
from gateway.review.desk import ReviewDesk
from gateway.risk.engine import Assessment
from shardbank import errors
from shardbank.v1 import types_pb2

# What the customer reads: no rule names, no score.
REVIEW_UNAVAILABLE_MESSAGE = "the transfer needs a review that is not available now"


class ReviewSink(Protocol):
    async def hold_for_review(
        self, transfers: list[types_pb2.Transfer], assessments: list[Assessment], budget: Budget
    ) -> list[types_pb2.Transfer]:
        """One outcome per transfer, in order."""


class DeskReview:
    """The real hold: the review desk prepares both legs through the
    coordinator with a review deadline (gateway.review.desk). The gate writes
    the alert itself afterwards (with the outcome's deadline), so the desk is
    told not to mark alerts that do not exist yet."""

    def __init__(self, desk: ReviewDesk) -> None:
        self._desk = desk

    async def hold_for_review(
        self, transfers: list[types_pb2.Transfer], assessments: list[Assessment], budget: Budget
    ) -> list[types_pb2.Transfer]:
        return await self._desk.hold(transfers, [t.risk for t in transfers], budget, mark_alerts=False)


class RefuseReview:
    async def hold_for_review(
        self, transfers: list[types_pb2.Transfer], assessments: list[Assessment], budget: Budget
    ) -> list[types_pb2.Transfer]:
        outcomes = []
        for transfer in transfers:
            outcome = types_pb2.Transfer()
            outcome.CopyFrom(transfer)
            outcome.status = types_pb2.TRANSFER_STATUS_REJECTED
            error = errors.precondition(errors.RISK_REVIEW_UNAVAILABLE, REVIEW_UNAVAILABLE_MESSAGE)
            outcome.code, outcome.reason, outcome.message = error.code_value, error.reason, error.message
            outcomes.append(outcome)
        return outcomes
