"""A risk officer's decision on a transfer held for review (leader only).

A review hold is a 2PC transfer the round left PREPARED on purpose: the
record holder holds the debit, the credit shard has the pending credit, and
both carry `review_deadline_unix_ms`. Deciding it is the rest of the
protocol, with the same rules (`decisions.py`):

- approve: Prepare the credit leg again (idempotent: PREPARED stays PREPARED,
  a leg lost with its shard is prepared now), then Decide COMMIT at the record
  holder iff the credit leg is PREPARED, else ABORT with its refusal; Finish
  the credit leg with the record holder's answer;
- reject: Decide ABORT (RISK_REJECTED), Finish ABORT;
- past the deadline: Decide ABORT (REVIEW_EXPIRED) whatever was asked, and
  the caller learns FAILED_PRECONDITION REVIEW_EXPIRED. The record holder
  refuses a late COMMIT on its own clock too.

Every call carries the leader's epoch, so a deposed leader cannot decide. The
record holder's answer is the truth: asking again for the same decision
answers the same transfer; asking for the other on a final one is
FAILED_PRECONDITION with the reason (RISK_REJECTED, REVIEW_EXPIRED,
REVIEW_APPROVED, or the refusal that aborted it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import structlog

from coordinator import decisions
from coordinator.decisions import Answer, Plan, Step, Truth, Verdict, Vote
from coordinator.shards import Leadership, Shards
from shardbank import errors, ids
from shardbank.directory import UnknownShard
from shardbank.v1 import ledger_pb2, types_pb2

log = structlog.get_logger("review")

PENDING = types_pb2.TRANSFER_STATUS_PENDING
COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED
CODE_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


def _abort_plan(reason: str, message: str) -> Plan:
    return Plan(Step.DECIDE, ledger_pb2.DECISION_ABORT, decisions.CODE_ABORTED, reason, message)


REJECT = _abort_plan(errors.RISK_REJECTED, "rejected by a risk officer")
EXPIRE = _abort_plan(errors.REVIEW_EXPIRED, "not reviewed before the deadline")


def precondition(reason: str, message: str, record: types_pb2.Transfer | None = None) -> errors.BankError:
    """FAILED_PRECONDITION naming the transfer's alert (ErrorInfo metadata
    `alert_id`), so the gateway can record an expiry on it."""
    error = errors.BankError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)
    if record is not None and record.risk.alert_id:
        error.metadata["alert_id"] = record.risk.alert_id
    return error


def final_answer(record: types_pb2.Transfer, approve: bool) -> types_pb2.Transfer:
    """A final review record asked again: the same decision is answered with
    the transfer (idempotent), the other one refused with why it is final."""
    if record.status == COMMITTED:
        if approve:
            return record
        raise precondition(errors.REVIEW_APPROVED, f"transfer {record.id} was approved and completed", record)
    if not approve and record.reason == errors.RISK_REJECTED:
        return record
    raise precondition(record.reason or errors.NOT_UNDER_REVIEW, f"transfer {record.id} was aborted", record)


class Review:
    def __init__(
        self, shards: Shards, leadership: Leadership, clock_ms: Callable[[], int] | None = None
    ) -> None:
        self._shards = shards
        self._leadership = leadership
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        # One decision per transfer at a time on this leader (two officers
        # clicking at once); the record holder is the real arbiter anyway.
        self._busy: dict[str, asyncio.Lock] = {}

    async def review(self, transfer_id: str, approve: bool, actor: str) -> types_pb2.Transfer:
        transfer_id = ids.normalize_transfer_id(transfer_id)
        epoch = self._leadership.epoch
        if epoch == 0:
            raise errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "not the leader")
        lock = self._busy.setdefault(transfer_id, asyncio.Lock())
        try:
            async with lock:
                result = await self._review(transfer_id, approve, epoch)
        finally:
            if not lock.locked():
                self._busy.pop(transfer_id, None)
        log.info(
            "transfer_reviewed",
            transfer_id=transfer_id,
            approve=approve,
            actor=actor,
            epoch=epoch,
            status=types_pb2.TransferStatus.Name(result.status),
            reason=result.reason,
        )
        return result

    async def _review(self, transfer_id: str, approve: bool, epoch: int) -> types_pb2.Transfer:
        record, record_holder, credit_shard = await self._record(transfer_id)
        if not record.review_deadline_unix_ms:
            raise precondition(errors.NOT_UNDER_REVIEW, f"transfer {transfer_id} is not held for review")
        if record.status == COMMITTED and approve:
            # Approved before; the credit leg may not be finished yet (a leader died).
            await self._finish(record, credit_shard, Verdict(Truth.COMMITTED), epoch)
        if record.status != PENDING:
            return final_answer(record, approve)
        expired = self._clock_ms() >= record.review_deadline_unix_ms
        if expired or not approve:
            plan = EXPIRE if expired else REJECT
        else:
            await self._check_accounts_usable(record, record_holder, credit_shard)
            plan = await self._approval_plan(record, credit_shard, epoch)
        verdict = await self._decide(record, record_holder, plan, epoch)
        if verdict.truth == Truth.UNKNOWN and verdict.reason == errors.REVIEW_EXPIRED:
            # The record holder's clock says it is late: end it as expired.
            verdict = await self._decide(record, record_holder, EXPIRE, epoch)
        if verdict.truth == Truth.UNKNOWN:
            raise errors.BankError(
                grpc.StatusCode.UNAVAILABLE, verdict.reason, "decision not recorded; retry"
            )
        await self._finish(record, credit_shard, verdict, epoch)
        outcome = decisions.outcome(record, verdict)
        outcome.cross_shard = record_holder != credit_shard
        if verdict.truth == Truth.ABORTED and verdict.reason == errors.REVIEW_EXPIRED:
            raise precondition(
                errors.REVIEW_EXPIRED, f"the review of {transfer_id} expired; hold released", record
            )
        if verdict.truth == Truth.COMMITTED and not approve:
            raise precondition(
                errors.REVIEW_APPROVED, f"transfer {transfer_id} was approved and completed", record
            )
        if verdict.truth == Truth.ABORTED and approve:
            raise precondition(
                verdict.reason or errors.NOT_UNDER_REVIEW, f"transfer {transfer_id} was aborted"
            )
        return outcome

    async def _record(self, transfer_id: str) -> tuple[types_pb2.Transfer, str, str]:
        """The record holder's record and the two shards, or NOT_FOUND / UNAVAILABLE.
        A slot move may have just taken the record elsewhere: with no record
        at the holder our map names, the map is re-read once and asked again."""
        try:
            return await self._record_once(transfer_id)
        except errors.BankError as error:
            if error.reason != errors.NOT_UNDER_REVIEW:
                raise
        await self._shards.router.refresh()
        return await self._record_once(transfer_id)

    async def _record_once(self, transfer_id: str) -> tuple[types_pb2.Transfer, str, str]:
        router = self._shards.router
        shard_ids = router.shard_ids()
        answers = await asyncio.gather(*(self._shards.get_transfers(s, [transfer_id]) for s in shard_ids))
        found = [a[0] for a in answers if not isinstance(a, errors.BankError) and a[0].status]
        if not found:
            if any(isinstance(a, errors.BankError) for a in answers):
                raise errors.BankError(
                    grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "a shard did not answer"
                )
            raise errors.not_found(errors.TRANSFER_NOT_FOUND, f"no transfer {transfer_id}")
        body = found[0]
        try:
            record_holder = router.owner(body.debit_account_id)
            credit_shard = router.owner(body.credit_account_id)
        except UnknownShard as exc:
            raise errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, str(exc)) from None
        answer = answers[shard_ids.index(record_holder)] if record_holder in shard_ids else None
        if answer is None or isinstance(answer, errors.BankError):
            raise errors.BankError(
                grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, f"{record_holder} did not answer"
            )
        record = answer[0]
        if not record.status:
            # Only a credit leg exists: the record holder never held it.
            raise precondition(errors.NOT_UNDER_REVIEW, f"transfer {transfer_id} is not held for review")
        return record, record_holder, credit_shard

    async def _check_accounts_usable(
        self, record: types_pb2.Transfer, record_holder: str, credit_shard: str
    ) -> None:
        """A frozen or closed account takes no debit and no credit: an account
        frozen while its transfer waited is not moved by an approval (the
        officer rejects it, or unfreezes first). Read just before the decision;
        a freeze landing after that read is as if it came after the approval."""
        sides = ((record_holder, record.debit_account_id), (credit_shard, record.credit_account_id))
        answers = await asyncio.gather(*(self._shards.get_accounts(s, [a]) for s, a in sides))
        for answer in answers:
            if isinstance(answer, errors.BankError):
                raise errors.BankError(
                    grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "a shard did not answer"
                )
            account = answer[0].account
            if answer[0].code == 0 and account.status == types_pb2.ACCOUNT_STATUS_FROZEN:
                raise precondition(errors.ACCOUNT_FROZEN, f"account {account.id} is frozen", record)
            if answer[0].code == 0 and account.status == types_pb2.ACCOUNT_STATUS_CLOSED:
                raise precondition(errors.ACCOUNT_CLOSED, f"account {account.id} is closed", record)

    async def _approval_plan(self, record: types_pb2.Transfer, credit_shard: str, epoch: int) -> Plan:
        """Commit iff the credit leg is PREPARED (prepared again if it was lost)."""
        answer = await self._shards.prepare(
            credit_shard, epoch, [ledger_pb2.PrepareItem(transfer=record, role=types_pb2.LEG_ROLE_CREDIT)]
        )
        credit = (
            decisions.unreachable(answer)
            if isinstance(answer, errors.BankError)
            else decisions.classify(answer[0])
        )
        if credit.vote == Vote.UNKNOWN:
            raise errors.BankError(
                grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "credit shard did not answer; retry"
            )
        return decisions.plan(Answer(Vote.PREPARED), credit)

    async def _decide(self, record: types_pb2.Transfer, shard_id: str, plan: Plan, epoch: int) -> Verdict:
        item = ledger_pb2.DecideItem(
            transfer_id=record.id, decision=plan.decision, code=plan.code, reason=plan.reason, transfer=record
        )
        answer = await self._shards.decide(shard_id, epoch, [item])
        if isinstance(answer, errors.BankError):
            reason = errors.NOT_LEADER if answer.reason == errors.STALE_EPOCH else errors.SHARD_UNAVAILABLE
            return Verdict(Truth.UNKNOWN, decisions.CODE_UNAVAILABLE, reason, answer.message)
        leg = answer[0]
        if leg.state == ledger_pb2.LEG_STATE_PREPARED and leg.reason == errors.REVIEW_EXPIRED:
            return Verdict(Truth.UNKNOWN, CODE_PRECONDITION, errors.REVIEW_EXPIRED, "late approval")
        return decisions.verdict_of_decide(plan, leg)

    async def _finish(self, record: types_pb2.Transfer, shard_id: str, verdict: Verdict, epoch: int) -> None:
        """Finish the credit leg now; if the shard does not answer, recovery
        finishes it once the leg's deadline has passed (it stays PREPARED)."""
        decision = (
            ledger_pb2.DECISION_COMMIT if verdict.truth == Truth.COMMITTED else ledger_pb2.DECISION_ABORT
        )
        item = ledger_pb2.DecideItem(
            transfer_id=record.id,
            decision=decision,
            code=verdict.code,
            reason=verdict.reason,
            transfer=record,
        )
        answer = await self._shards.finish(shard_id, epoch, [item])
        if not isinstance(answer, errors.BankError) and answer[0].reason == errors.CONTRADICTORY_DECISION:
            log.error("invariant_finish_contradicted", transfer_id=record.id, shard_id=shard_id, epoch=epoch)
