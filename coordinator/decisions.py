"""The two-phase-commit decision rules, pure: answers in, plans and outcomes out.

No sockets here (dask's worker state machine is the model): `twopc.py` and
`recovery.py` do the I/O and ask this module what the answers mean. Every rule
below follows from two facts:

1. The record holder (the debit shard) is the truth. Its record moves
   PREPARED -> COMMITTED or PREPARED -> ABORTED exactly once, by a conditional
   write; a contradictory request is refused with the actual state, which the
   coordinator then follows.
2. A leg that is not ours (an id conflict: same id, other body) is never
   decided or finished by us: doing so could abort or commit someone else's
   transfer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from shardbank import errors
from shardbank.v1 import ledger_pb2, types_pb2

OK = 0
CODE_ABORTED = grpc.StatusCode.ABORTED.value[0]
CODE_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
CODE_ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS.value[0]


class Vote(enum.Enum):
    """What one leg's Prepare answer means to the coordinator."""

    PREPARED = "prepared"  # ours, holding: may commit
    COMMITTED = "committed"  # ours, already final (a re-submission)
    ABORTED = "aborted"  # ours, refused now or before: final
    CONFLICT = "conflict"  # the id is taken by another body: not ours, touch nothing
    NOT_RECORDED = "not_recorded"  # refused without a trace (malformed): nothing to undo
    SLOT_MOVED = "slot_moved"  # wrong shard: refresh the map, prepare again
    UNKNOWN = "unknown"  # no answer (shard down, deadline): the state is unknown


@dataclass(frozen=True)
class Answer:
    vote: Vote
    code: int = OK
    reason: str = ""
    message: str = ""
    # The record holder holds a single-shard record of this id (the transfer
    # was settled on one shard before a slot move made it cross-shard): its
    # state is the outcome, and any credit leg of this id is aborted.
    single_shard: bool = False


def classify(leg: ledger_pb2.Leg) -> Answer:
    """Classify a per-item Prepare answer. Order matters: reasons that say
    "this is not your leg" win over the state the node may echo."""
    code, reason = int(leg.code), leg.reason
    message = leg.transfer.message or reason
    unrecorded = leg.state in (ledger_pb2.LEG_STATE_UNSPECIFIED, ledger_pb2.LEG_STATE_UNKNOWN)
    if unrecorded and reason in (errors.SLOT_MOVED, errors.SLOT_MOVING):
        return Answer(Vote.SLOT_MOVED, code, reason, message)
    if reason == errors.TRANSFER_ID_CONFLICT or code == CODE_ALREADY_EXISTS:
        return Answer(
            Vote.CONFLICT, code or CODE_ALREADY_EXISTS, reason or errors.TRANSFER_ID_CONFLICT, message
        )
    if leg.role == types_pb2.LEG_ROLE_UNSPECIFIED and leg.state in (
        ledger_pb2.LEG_STATE_COMMITTED,
        ledger_pb2.LEG_STATE_ABORTED,
    ):
        if leg.state == ledger_pb2.LEG_STATE_COMMITTED:
            return Answer(Vote.COMMITTED, single_shard=True)
        abort_code, abort_reason = refusal_of(leg)
        return Answer(Vote.ABORTED, abort_code, abort_reason, leg.transfer.message, single_shard=True)
    if leg.state == ledger_pb2.LEG_STATE_PREPARED:
        return Answer(Vote.PREPARED)
    if leg.state == ledger_pb2.LEG_STATE_COMMITTED:
        return Answer(Vote.COMMITTED)
    if leg.state == ledger_pb2.LEG_STATE_ABORTED:
        abort_code, abort_reason = refusal_of(leg)
        return Answer(Vote.ABORTED, abort_code, abort_reason, leg.transfer.message)
    if code != OK:
        return Answer(Vote.NOT_RECORDED, code, reason or errors.INVALID_ARGUMENT, message)
    return Answer(Vote.UNKNOWN, CODE_UNAVAILABLE, errors.SHARD_UNAVAILABLE, "unreadable prepare answer")


def unreachable(error: errors.BankError) -> Answer:
    """A whole Prepare RPC failed: every leg in it is in an unknown state."""
    return Answer(Vote.UNKNOWN, CODE_UNAVAILABLE, errors.SHARD_UNAVAILABLE, error.message)


def refusal_of(leg: ledger_pb2.Leg) -> tuple[int, str]:
    """The code and reason an ABORTED leg carries, wherever the node put them."""
    code = int(leg.code) or int(leg.transfer.code)
    reason = leg.reason if leg.code else (leg.transfer.reason or leg.reason)
    if reason == errors.CONTRADICTORY_DECISION:
        code, reason = int(leg.transfer.code), leg.transfer.reason
    return (code or CODE_ABORTED), (reason or errors.PREPARE_TIMEOUT)


class Step(enum.Enum):
    RETRY = "retry"  # a leg said SLOT_MOVED
    DECIDE = "decide"  # ask the record holder for `decision`; its answer is the truth
    SETTLED = "settled"  # the record holder's answer is already final
    REJECT = "reject"  # nothing is recorded at the record holder


@dataclass(frozen=True)
class Plan:
    step: Step
    decision: ledger_pb2.Decision.ValueType = ledger_pb2.DECISION_UNSPECIFIED
    code: int = OK
    reason: str = ""
    message: str = ""


def plan(debit: Answer, credit: Answer) -> Plan:
    """What to do with one transfer once both Prepare answers are in."""
    if Vote.SLOT_MOVED in (debit.vote, credit.vote):
        return Plan(Step.RETRY, code=CODE_ABORTED, reason=errors.SLOT_MOVED, message="slot moved")
    if debit.vote in (Vote.CONFLICT, Vote.NOT_RECORDED):
        return Plan(Step.REJECT, code=debit.code, reason=debit.reason, message=debit.message)
    if debit.vote == Vote.COMMITTED:
        return Plan(Step.SETTLED, ledger_pb2.DECISION_COMMIT)
    if debit.vote == Vote.ABORTED:
        return Plan(Step.SETTLED, ledger_pb2.DECISION_ABORT, debit.code, debit.reason, debit.message)
    if debit.vote == Vote.UNKNOWN:
        return _abort(CODE_ABORTED, errors.SHARD_UNAVAILABLE, "debit shard did not answer prepare")
    # The record holder is PREPARED: the credit leg's vote decides.
    if credit.vote in (Vote.PREPARED, Vote.COMMITTED):
        return Plan(Step.DECIDE, ledger_pb2.DECISION_COMMIT)
    if credit.vote == Vote.UNKNOWN:
        return _abort(CODE_ABORTED, errors.SHARD_UNAVAILABLE, "credit shard did not answer prepare")
    return _abort(credit.code, credit.reason, credit.message)


# What a record holder that checks the debit itself counts as (direct decide).
_CHECKS_ITSELF = Answer(Vote.PREPARED)


def plan_direct(credit: Answer) -> Plan:
    """The plan of a transfer not prepared at its record holder: the direct
    Decide checks (and posts) the debit itself, so only the credit leg's vote
    decides what to ask for, exactly as `plan` with a PREPARED record."""
    return plan(_CHECKS_ITSELF, credit)


def _abort(code: int, reason: str, message: str) -> Plan:
    return Plan(Step.DECIDE, ledger_pb2.DECISION_ABORT, code or CODE_ABORTED, reason, message)


class Truth(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    """The record holder's final word on one transfer."""

    truth: Truth
    code: int = OK
    reason: str = ""
    message: str = ""


def verdict_of_decide(asked: Plan, leg: ledger_pb2.Leg) -> Verdict:
    """Read a Decide answer: done as asked, or CONTRADICTORY_DECISION with the
    actual state (follow it), or something that leaves the outcome unknown.

    A single-shard record (role 0; see Answer.single_shard) is not a 2PC
    decision: the credit leg asked about is no part of it and is aborted."""
    if (
        leg.role == types_pb2.LEG_ROLE_UNSPECIFIED
        and leg.code == OK
        and leg.state
        in (
            ledger_pb2.LEG_STATE_COMMITTED,
            ledger_pb2.LEG_STATE_ABORTED,
        )
    ):
        return Verdict(
            Truth.ABORTED, CODE_ABORTED, errors.SETTLED_SINGLE_SHARD, "settled on one shard before a move"
        )
    if leg.state == ledger_pb2.LEG_STATE_COMMITTED:
        return Verdict(Truth.COMMITTED)
    if leg.state == ledger_pb2.LEG_STATE_ABORTED:
        if leg.code == OK and asked.decision == ledger_pb2.DECISION_ABORT:
            # Done as we asked, or already aborted with the same ask: report
            # the record's own reason when it has one (it was there first).
            code = int(leg.transfer.code) or asked.code
            reason = leg.transfer.reason or asked.reason
            return Verdict(Truth.ABORTED, code or CODE_ABORTED, reason, leg.transfer.message or asked.message)
        code, reason = refusal_of(leg)
        return Verdict(Truth.ABORTED, code, reason, leg.transfer.message)
    return Verdict(Truth.UNKNOWN, CODE_UNAVAILABLE, errors.SHARD_UNAVAILABLE, leg.reason or "no decision")


def verdict_of_direct(asked: Plan, debit: Answer, leg: ledger_pb2.Leg) -> Verdict:
    """Read a direct Decide answer, already classified as the record holder's
    vote (`debit`; SLOT_MOVED, PREPARED and UNKNOWN are the caller's). A
    refusal of the id (another body, malformed) records nothing for us: the
    caller answers it REJECTED. Anything else reads as any Decide answer: a
    debit refused now (funds, frozen) is an ABORTED record with its reason."""
    if debit.vote in (Vote.CONFLICT, Vote.NOT_RECORDED):
        return Verdict(Truth.ABORTED, debit.code, debit.reason, debit.message)
    if debit.single_shard:
        # Settled on one shard before a move: its state is the outcome, as a
        # Prepare answer's would be (the caller aborts the credit leg).
        if debit.vote == Vote.COMMITTED:
            return Verdict(Truth.COMMITTED)
        return Verdict(Truth.ABORTED, debit.code or CODE_ABORTED, debit.reason, debit.message)
    return verdict_of_decide(asked, leg)


def verdict_of_vote(answer: Answer) -> Verdict:
    """An answer that says nothing about the outcome (UNKNOWN)."""
    return Verdict(Truth.UNKNOWN, CODE_UNAVAILABLE, answer.reason or errors.SHARD_UNAVAILABLE, answer.message)


def verdict_of_plan(asked: Plan) -> Verdict:
    """SETTLED plans need no Decide: the Prepare answer was already final."""
    if asked.decision == ledger_pb2.DECISION_COMMIT:
        return Verdict(Truth.COMMITTED)
    return Verdict(Truth.ABORTED, asked.code or CODE_ABORTED, asked.reason, asked.message)


def should_finish(credit: Answer, verdict: Verdict) -> bool:
    """Finish the credit leg with the verdict?

    Yes when the leg is ours and may still be open: PREPARED, or unknown
    (then a Finish(ABORT) also tombstones it against a late prepare). Never
    when the leg is someone else's (CONFLICT) or nothing was recorded.
    """
    if verdict.truth == Truth.UNKNOWN:
        return False
    return credit.vote in (Vote.PREPARED, Vote.UNKNOWN)


def finish_contradicts(credit: Answer, verdict: Verdict) -> bool:
    """A final credit leg that disagrees with the record holder breaks the
    protocol's invariant (money created or lost): the caller must shout."""
    return (credit.vote == Vote.COMMITTED and verdict.truth == Truth.ABORTED) or (
        credit.vote == Vote.ABORTED and verdict.truth == Truth.COMMITTED
    )


def outcome(transfer: types_pb2.Transfer, verdict: Verdict) -> types_pb2.Transfer:
    """The Transfer returned to the caller for a decided or unknown transfer."""
    result = types_pb2.Transfer()
    result.CopyFrom(transfer)
    result.cross_shard = True
    if verdict.truth == Truth.COMMITTED:
        result.status = types_pb2.TRANSFER_STATUS_COMMITTED
        result.code, result.reason, result.message = OK, "", ""
    elif verdict.truth == Truth.ABORTED:
        result.status = types_pb2.TRANSFER_STATUS_ABORTED
        result.code, result.reason, result.message = verdict.code, verdict.reason, verdict.message
    else:
        result.status = types_pb2.TRANSFER_STATUS_PENDING
        result.code, result.reason = CODE_UNAVAILABLE, verdict.reason or errors.SHARD_UNAVAILABLE
        result.message = verdict.message or "outcome not known yet; retry with the same id"
    return result


def rejected(transfer: types_pb2.Transfer, code: int, reason: str, message: str) -> types_pb2.Transfer:
    """An item refused with nothing recorded for this body: the id stays free
    (or, for TRANSFER_ID_CONFLICT, belongs to another body)."""
    result = types_pb2.Transfer()
    result.CopyFrom(transfer)
    result.status = types_pb2.TRANSFER_STATUS_REJECTED
    result.code, result.reason, result.message = code, reason, message or reason
    return result


def unavailable(transfer: types_pb2.Transfer, reason: str, message: str) -> types_pb2.Transfer:
    """Outcome not learned (shard down, deposed, slot map churn): retry the id."""
    return outcome(transfer, Verdict(Truth.UNKNOWN, CODE_UNAVAILABLE, reason, message))


def under_review(
    transfer: types_pb2.Transfer, record: types_pb2.Transfer | None = None
) -> types_pb2.Transfer:
    """A transfer held for a risk officer: PENDING, code 0, reason UNDER_REVIEW,
    with the deadline the record holder stored (a re-submission may carry none)."""
    result = types_pb2.Transfer()
    result.CopyFrom(transfer)
    result.status = types_pb2.TRANSFER_STATUS_PENDING
    result.code, result.reason, result.message = OK, errors.UNDER_REVIEW, "held for review"
    if record is not None and record.review_deadline_unix_ms:
        result.review_deadline_unix_ms = record.review_deadline_unix_ms
        result.risk.CopyFrom(record.risk)
        result.created_at_unix_ms = record.created_at_unix_ms
    return result


def holds_for_review(debit: Answer, credit: Answer, plan: Plan, review: bool) -> bool:
    """Leave a review hold PREPARED instead of deciding now? Yes when the
    record holder holds it and nothing but the officer (or the deadline) may
    end it: the plan would commit, or would abort only because the credit
    shard did not answer (approval prepares the credit leg again)."""
    if not review or debit.vote != Vote.PREPARED or plan.step != Step.DECIDE:
        return False
    return plan.decision == ledger_pb2.DECISION_COMMIT or credit.vote == Vote.UNKNOWN
