"""The review desk: where REVIEW decisions become holds and officers decide them.

`hold(transfers, assessments)` is the risk engine's one hook: each transfer
goes to the coordinator leader as a *review hold* — two-phase commit prepared
on both legs (even when both accounts share a shard), the debit held at the
record holder, the credit pending, `review_deadline_unix_ms` and the
assessment stored with the record — and comes back PENDING with reason
UNDER_REVIEW. Nothing is kept in the gateway: a gateway killed with holds
outstanding loses none (they are ledger records), and any gateway can
decide them.

`review(transfer_id, approve, ...)` asks the leader to decide (the
coordinator's ReviewTransfer: commit, or abort with RISK_REJECTED), then
records the outcome on the transfer's alert. A hold nobody decides is
aborted by the coordinator's recovery once its deadline has passed
(REVIEW_EXPIRED), which releases the money; see docs/2pc.md "Review holds".

`freeze_on_severe(account_id, rule)` is the optional automatic freeze the
engine may trigger for a severe rule (config flag, off by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import structlog

from gateway import convert, dispatch, plans, routing
from gateway.auth import audit
from gateway.dispatch import Budget
from gateway.review.store import AlertStore
from gateway.routing import Target
from gateway.upstream import Cluster, downstream_error
from shardbank import alerts, errors, limits
from shardbank.v1 import coordinator_pb2, ledger_pb2, types_pb2

log = structlog.get_logger("gateway.review")

# A held transfer waits this long for an officer by default (then it is
# rejected automatically and the hold released): one working day.
REVIEW_DEADLINE_MS_DEFAULT = 24 * 3600 * 1000
# Shortest and longest deadline a gateway may be configured with (tests use
# seconds; the ledger refuses anything beyond 30 days).
REVIEW_DEADLINE_MS_MIN = 1000
REVIEW_DEADLINE_MS_MAX = 7 * 24 * 3600 * 1000
# Who the automatic freeze is recorded as, in the ledger and the audit log.
RISK_ENGINE_ACTOR = "risk-engine"
HOLDABLE_KINDS = (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT)
APPROVED, REJECTED, EXPIRED, PENDING = "APPROVED", "REJECTED", "EXPIRED", "PENDING"


@dataclass(frozen=True)
class ReviewConfig:
    review_deadline_ms: int = REVIEW_DEADLINE_MS_DEFAULT
    # Freeze the account the rule looked at when a severe rule fires.
    freeze_on_severe: bool = False

    def __post_init__(self) -> None:
        if not REVIEW_DEADLINE_MS_MIN <= self.review_deadline_ms <= REVIEW_DEADLINE_MS_MAX:
            raise ValueError(f"review deadline must be {REVIEW_DEADLINE_MS_MIN}..{REVIEW_DEADLINE_MS_MAX} ms")


class ReviewPlan(plans.TransferPlan):
    """Review holds always go to the coordinator leader (2PC), even when
    both accounts live on one shard: a single-shard post cannot wait."""

    def target(self, item: types_pb2.Transfer) -> Target:
        return routing.COORDINATOR


def _unsupported(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    return convert.rejected_transfer(
        transfer,
        errors.precondition(
            errors.REVIEW_NOT_SUPPORTED, "only transfers and payments can be held for review"
        ),
    )


class ReviewDesk:
    def __init__(
        self,
        cluster: Cluster,
        store: AlertStore,
        config: ReviewConfig | None = None,
        audit_log: audit.AuditLog | None = None,
        clock_ms: Callable[[], int] = alerts.now_ms,
    ) -> None:
        self._cluster = cluster
        self.store = store
        self.config = config or ReviewConfig()
        self._audit = audit_log
        self._clock_ms = clock_ms

    # --- the engine's hook -------------------------------------------------------

    async def hold(
        self,
        transfers: Sequence[types_pb2.Transfer],
        assessments: Sequence[types_pb2.RiskAssessment],
        budget: Budget | None = None,
        mark_alerts: bool = True,
    ) -> list[types_pb2.Transfer]:
        """Hold each (validated) transfer for review; outcomes in order.
        `mark_alerts=False` when the caller writes the alerts afterwards with
        the review state (the risk gate does).

        A held one is PENDING / UNDER_REVIEW. One the ledger refuses at
        prepare (insufficient funds, frozen...) is ABORTED with that reason,
        as it would have been without review. DEPOSIT/WITHDRAWAL cannot be
        held (cash is handed over at the counter): REJECTED
        REVIEW_NOT_SUPPORTED, and the engine should BLOCK or ALLOW them.
        """
        if len(transfers) != len(assessments):
            raise ValueError("one assessment per transfer")
        budget = budget or Budget(limits.CALL_DEADLINE_S)
        deadline_ms = self._clock_ms() + self.config.review_deadline_ms
        results: list[types_pb2.Transfer | None] = [None] * len(transfers)
        indices: list[int] = []
        held: list[types_pb2.Transfer] = []
        for index, (transfer, assessment) in enumerate(zip(transfers, assessments, strict=True)):
            if transfer.kind not in HOLDABLE_KINDS:
                results[index] = _unsupported(transfer)
                continue
            item = types_pb2.Transfer()
            item.CopyFrom(transfer)
            item.risk.CopyFrom(assessment)
            item.risk.decision = types_pb2.RISK_DECISION_REVIEW
            item.review_deadline_unix_ms = deadline_ms
            indices.append(index)
            held.append(item)
        routed = await dispatch.dispatch(held, ReviewPlan(self._cluster), self._cluster, budget)
        for index, outcome in zip(indices, routed, strict=True):
            results[index] = outcome
        if mark_alerts:
            await self._mark_pending(routed)
        log.info(
            "transfers_held_for_review",
            transfer_ids=[o.id for o in routed if o.reason == errors.UNDER_REVIEW][:32],
            refused=[(o.id, o.reason) for o in routed if o.reason != errors.UNDER_REVIEW][:32],
            review_deadline_unix_ms=deadline_ms,
        )
        return [r for r in results if r is not None]

    async def _mark_pending(self, outcomes: Sequence[types_pb2.Transfer]) -> None:
        """The alerts of the held transfers say PENDING, with the deadline.
        A failure here is logged, not raised: the hold exists in the ledger
        whatever etcd says, and the officer can find it by transfer id."""
        for outcome in outcomes:
            alert_id = outcome.risk.alert_id
            if outcome.reason != errors.UNDER_REVIEW or not alert_id:
                continue
            try:
                await self.store.call(
                    alerts.set_review_state,
                    alert_id,
                    PENDING,
                    RISK_ENGINE_ACTOR,
                    "",
                    outcome.review_deadline_unix_ms,
                )
            except errors.BankError as error:
                log.error(
                    "alert_review_state_failed",
                    alert_id=alert_id,
                    transfer_id=outcome.id,
                    reason=error.reason,
                )

    # --- the officers' decision ----------------------------------------------------

    async def review(
        self, transfer_id: str, approve: bool, note: str, actor: str, budget: Budget
    ) -> tuple[types_pb2.Transfer, str]:
        """Approve or reject a held transfer: (the transfer after it, its alert id).
        Raises the coordinator's refusal (FAILED_PRECONDITION with the reason)
        after recording an expiry on the alert."""
        alerts.check_note(note)
        request = coordinator_pb2.CoordinatorReviewRequest(
            transfer_id=transfer_id, approve=approve, actor=actor
        )
        try:
            transfer = await self._ask_leader(request, budget)
        except errors.BankError as error:
            alert_id = error.metadata.get("alert_id", "")
            if error.reason == errors.REVIEW_EXPIRED and alert_id:
                await self._record_outcome(alert_id, EXPIRED, actor, note, transfer_id)
            raise
        alert_id = transfer.risk.alert_id
        if alert_id:
            state = APPROVED if transfer.status == types_pb2.TRANSFER_STATUS_COMMITTED else REJECTED
            await self._record_outcome(alert_id, state, actor, note, transfer_id)
        return transfer, alert_id

    async def _record_outcome(
        self, alert_id: str, state: str, actor: str, note: str, transfer_id: str
    ) -> None:
        try:
            await self.store.call(alerts.set_review_state, alert_id, state, actor, note)
        except errors.BankError as error:
            # The decision is final in the ledger; the alert is only its note.
            log.error(
                "alert_review_state_failed", alert_id=alert_id, transfer_id=transfer_id, reason=error.reason
            )

    async def _ask_leader(
        self, request: coordinator_pb2.CoordinatorReviewRequest, budget: Budget
    ) -> types_pb2.Transfer:
        """ReviewTransfer at the leader, re-sent after NOT_LEADER/UNAVAILABLE
        (the same decision again is idempotent) within the caller's deadline."""
        error = errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "no coordinator answered")
        for round_index in range(dispatch.ATTEMPTS_MAX):
            try:
                stub = await self._cluster.leader.stub()
                reply: types_pb2.Transfer = await stub.ReviewTransfer(
                    request, timeout=budget.call_timeout_s()
                )
                return reply
            except grpc.RpcError as exc:
                error = downstream_error(exc, routing.COORDINATOR)
            except errors.BankError as refused:
                error = refused
            if not dispatch.is_retryable(error):
                raise error
            wait_s = dispatch.backoff_s(round_index)
            if not budget.affords(wait_s):
                break
            await self._cluster.unreachable(routing.COORDINATOR, error)
            await asyncio.sleep(wait_s)
        raise error

    # --- automatic freeze --------------------------------------------------------

    async def freeze_on_severe(self, account_id: int, rule: str) -> ledger_pb2.AccountResult | None:
        """Freeze the account because `rule` (a severe one) fired, if the
        gateway is configured to (`freeze_on_severe`); None when it is not.
        Recorded in the ledger's status history and in the audit log with
        actor `risk-engine` and the rule as the reason. An already frozen
        account is left as it is (FAILED_PRECONDITION ACCOUNT_ALREADY_FROZEN)."""
        if not self.config.freeze_on_severe:
            return None
        item = ledger_pb2.StatusRequestItem(
            account_id=account_id, action=ledger_pb2.STATUS_ACTION_FREEZE, reason=f"risk rule {rule}"
        )
        (result,) = await dispatch.dispatch(
            [item],
            plans.AccountPlan(self._cluster, plans.change_status_call(RISK_ENGINE_ACTOR)),
            self._cluster,
            Budget(limits.CALL_DEADLINE_S),
        )
        if self._audit is not None:
            entry = audit.Entry(
                RISK_ENGINE_ACTOR,
                RISK_ENGINE_ACTOR,
                "account.freeze",
                str(account_id),
                result.code,
                result.reason or rule,
            )
            await self._audit.append([entry])
        log.warning(
            "account_frozen_by_risk_rule",
            account_id=account_id,
            rule=rule,
            code=result.code,
            reason=result.reason,
        )
        return result
