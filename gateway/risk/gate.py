"""The risk check in the transfer path (gateway side, before routing).

For a batch: one GetActivity per shard involved (not per transfer), then the
engine decides each transfer in order, each one seeing the earlier ones of
the batch as if they had moved. The decision goes on the transfer (`risk`,
stored by the node with the record):

- ALLOW: routed as usual.
- BLOCK: routed to the record holder, which records it ABORTED / RISK_BLOCKED
  without moving money (so a resend of the id gets the same refusal).
- REVIEW: handed to the `ReviewSink` (see review.py).

Alerts for REVIEW/BLOCK and alert-only rules are written *before* routing
(see alerts.py: a gateway that dies mid-call leaves no flagged transfer
without its alert), then settled: kept for the transfers whose stored record
carries this call's alert id, removed where it does not (a resend of a
recorded id returns the first record, whose alert exists), updated where the
outcome adds to it (a review hold's deadline). One log event per non-ALLOW
decision.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway import convert
from gateway.dispatch import Budget
from gateway.risk import alerts, engine
from gateway.risk.alerts import AlertSink
from gateway.risk.config import RiskConfig
from gateway.risk.engine import Assessment
from gateway.risk.features import AccountActivity, Features
from gateway.risk.reload import ConfigHolder
from gateway.risk.review import ReviewSink
from gateway.risk.state import ActivitySource, Found, Query
from gateway.upstream import unavailable
from shardbank import errors
from shardbank.v1 import types_pb2

log = structlog.get_logger("gateway.risk")

Send = Callable[[list[types_pb2.Transfer]], Awaitable[list[types_pb2.Transfer]]]
DEPOSIT = types_pb2.TRANSFER_KIND_DEPOSIT
WITHDRAWAL = types_pb2.TRANSFER_KIND_WITHDRAWAL


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def queries_of(transfer: types_pb2.Transfer) -> list[Query]:
    """The debit account with the credit as counterparty; the credit account."""
    queries: list[Query] = []
    if transfer.kind != DEPOSIT:
        counterparty = 0 if transfer.kind == WITHDRAWAL else transfer.credit_account_id
        queries.append((transfer.debit_account_id, counterparty))
    if transfer.kind != WITHDRAWAL:
        queries.append((transfer.credit_account_id, 0))
    return queries


class BatchView:
    """The accounts of one batch, as the shards reported them, updated as the
    engine lets each transfer through."""

    def __init__(self, found: dict[Query, Found], config: RiskConfig) -> None:
        self._found = found
        self._accounts: dict[int, AccountActivity] = {q[0]: f.account for q, f in found.items()}
        # Every account object of a customer (one per query): a payment out of
        # one adds to the daily total all of them see.
        self._of_customer: dict[str, list[AccountActivity]] = {}
        for found_one in found.values():
            if found_one.account.customer_id:
                self._of_customer.setdefault(found_one.account.customer_id, []).append(found_one.account)
        self._band = config.near_band()

    def features(self, transfer: types_pb2.Transfer, now_ms: int) -> Features:
        debit = credit = None
        known = False
        if transfer.kind != DEPOSIT:
            debit = self._accounts.get(transfer.debit_account_id)
            answer = self._found.get((transfer.debit_account_id, transfer.credit_account_id))
            known = (answer is not None and answer.counterparty_known) or (
                debit is not None and transfer.credit_account_id in debit.known_payees
            )
        if transfer.kind != WITHDRAWAL:
            credit = self._accounts.get(transfer.credit_account_id)
        return Features(transfer, now_ms, debit, credit, counterparty_known=known)

    def moved(self, transfer: types_pb2.Transfer) -> None:
        low, high = self._band
        debit = self._accounts.get(transfer.debit_account_id)
        if debit is not None:
            debit.paid_out(transfer.amount, transfer.credit_account_id, low <= transfer.amount < high)
            for other in self._of_customer.get(debit.customer_id, ()):
                if other is not debit:
                    other.customer_out_24h = other.customer_out_24h.plus(transfer.amount)
        credit = self._accounts.get(transfer.credit_account_id)
        if credit is not None:
            credit.paid_in(transfer.amount, transfer.debit_account_id)


def assess_batch(
    transfers: list[types_pb2.Transfer], found: dict[Query, Found], config: RiskConfig, now_ms: int
) -> list[Assessment]:
    """Pure: the decision for each transfer of a batch, in order."""
    view = BatchView(found, config)
    assessments = []
    for transfer in transfers:
        assessment = engine.assess(view.features(transfer, now_ms), config)
        if assessment.decision == engine.ALLOW:
            view.moved(transfer)
        assessments.append(assessment)
    return assessments


# The automatic freeze on a severe rule: (account id, rule name).
Freeze = Callable[[int, str], Awaitable[object]]


@dataclass(eq=False)
class _Item:
    transfer: types_pb2.Transfer
    assessment: Assessment | None = None
    alert_id: str = ""
    outcome: types_pb2.Transfer | None = None


class RiskGate:
    def __init__(
        self,
        holder: ConfigHolder,
        source: ActivitySource,
        alert_sink: AlertSink,
        review: ReviewSink,
        clock_ms: Callable[[], int] = wall_clock_ms,
        freeze: Freeze | None = None,
    ) -> None:
        """`freeze`: called for a BLOCK of HIGH severity with (the account
        the rules looked at, the first rule) — the review desk's automatic
        freeze, itself off unless the gateway runs with --freeze-on-severe."""
        self.holder = holder
        self._source = source
        self._alerts = alert_sink
        self._review = review
        self._clock_ms = clock_ms
        self._freeze = freeze

    async def run(
        self, transfers: list[types_pb2.Transfer], budget: Budget, send: Send
    ) -> list[types_pb2.Transfer]:
        """Decide, route (through `send`), hold for review, alert; one outcome per transfer."""
        config = self.holder.current
        items = [_Item(t) for t in transfers]
        queries = [q for t in transfers for q in queries_of(t)]
        fetched = await self._source.fetch(queries, config, budget)
        found, missing = fetched.found, fetched.unavailable
        now_ms = self._clock_ms()
        checked: list[_Item] = []
        for item in items:
            if missing and any(q[0] in missing for q in queries_of(item.transfer)):
                error = unavailable(errors.SHARD_UNAVAILABLE, "risk check: a shard did not answer")
                item.outcome = convert.unsettled_transfer(item.transfer, error, cross_shard=False)
            else:
                checked.append(item)
        for item, assessment in zip(
            checked, assess_batch([i.transfer for i in checked], found, config, now_ms), strict=True
        ):
            item.assessment = assessment
            if assessment.needs_alert:
                item.alert_id = alerts.new_alert_id(now_ms)
            item.transfer.risk.CopyFrom(assessment.to_proto(item.alert_id))
        intents = {
            item.alert_id: alerts.alert_record(
                item.alert_id, now_ms, item.transfer, item.assessment, _review(item.assessment)
            )
            for item in checked
            if item.alert_id and item.assessment is not None
        }
        await self._alerts.write(list(intents.values()))
        await self._route(checked, budget, send)
        await self._settle_alerts(checked, intents, now_ms)
        if self._freeze is not None:
            await self._freeze_severe(checked, self._freeze)
        return [i.outcome for i in items if i.outcome is not None]

    async def _freeze_severe(self, checked: list[_Item], freeze: Freeze) -> None:
        """Freeze once per account, after the outcomes are known, and never
        let a failed freeze change a transfer's outcome (it is already final)."""
        frozen: set[int] = set()
        for item in checked:
            assessment = item.assessment
            if assessment is None or assessment.decision != engine.BLOCK or assessment.severity != "HIGH":
                continue
            account_id = assessment.subject_account_id or item.transfer.debit_account_id
            if account_id in frozen or not assessment.rules:
                continue
            frozen.add(account_id)
            try:
                await freeze(account_id, assessment.rules[0])
            except errors.BankError as error:
                log.warning("risk_freeze_failed", account_id=account_id, reason=error.reason)

    async def _route(self, checked: list[_Item], budget: Budget, send: Send) -> None:
        held: list[_Item] = []
        routed: list[_Item] = []
        for item in checked:
            review = item.assessment is not None and item.assessment.decision == engine.REVIEW
            (held if review else routed).append(item)
        if routed:
            for item, outcome in zip(routed, await send([i.transfer for i in routed]), strict=True):
                item.outcome = outcome
        if held:
            outcomes = await self._review.hold_for_review(
                [i.transfer for i in held], [i.assessment for i in held if i.assessment is not None], budget
            )
            for item, outcome in zip(held, outcomes, strict=True):
                item.outcome = outcome

    async def _settle_alerts(
        self, checked: list[_Item], intents: dict[str, dict[str, Any]], now_ms: int
    ) -> None:
        settlements: list[alerts.Settlement] = []
        for item in checked:
            assessment, outcome = item.assessment, item.outcome
            if assessment is None or outcome is None:
                continue
            if assessment.decision != engine.ALLOW or assessment.alert_only:
                log.warning(
                    "risk_decision",
                    transfer_id=item.transfer.id,
                    decision=assessment.decision_name,
                    score=assessment.score,
                    rules=list(assessment.rules),
                    aml_typologies=list(assessment.aml_typologies),
                    debit_account_id=item.transfer.debit_account_id,
                    credit_account_id=item.transfer.credit_account_id,
                    outcome=outcome.reason or "OK",
                )
            intent = intents.get(item.alert_id)
            if intent is None:
                continue
            if not _stored_here(outcome, item.alert_id):
                settlements.append((intent, None))
                continue
            pending = _review(assessment) and outcome.status == types_pb2.TRANSFER_STATUS_PENDING
            final = alerts.alert_record(item.alert_id, now_ms, outcome, assessment, pending)
            if final != intent:
                settlements.append((intent, final))
        await self._alerts.settle(settlements)


def _review(assessment: Assessment | None) -> bool:
    return assessment is not None and assessment.decision == engine.REVIEW


def _stored_here(outcome: types_pb2.Transfer, alert_id: str) -> bool:
    """Did this call's decision become the transfer's (not an earlier record's)?"""
    if outcome.risk.alert_id != alert_id:
        return False
    return outcome.status != types_pb2.TRANSFER_STATUS_REJECTED or outcome.reason in (
        errors.RISK_REVIEW_UNAVAILABLE,
        errors.RISK_BLOCKED,
    )
