"""Pure tests of the 2PC decision rules (coordinator/decisions.py): answers in,
plans and outcomes out, no sockets."""

from __future__ import annotations

import pytest

from coordinator import decisions, validate
from coordinator.decisions import Answer, Step, Truth, Verdict, Vote
from shardbank import errors
from shardbank.v1 import ledger_pb2, types_pb2

PRECONDITION = 9
PREPARED = Answer(Vote.PREPARED)
UNKNOWN = Answer(Vote.UNKNOWN, 14, errors.SHARD_UNAVAILABLE)


def leg(
    state: ledger_pb2.LegState.ValueType,
    code: int = 0,
    reason: str = "",
    transfer_reason: str = "",
    transfer_code: int = 0,
) -> ledger_pb2.Leg:
    transfer = types_pb2.Transfer(id="t", reason=transfer_reason, code=transfer_code)
    return ledger_pb2.Leg(
        transfer=transfer, role=types_pb2.LEG_ROLE_DEBIT, state=state, code=code, reason=reason
    )


# --- classify -----------------------------------------------------------------


def test_classify_prepared_committed_aborted() -> None:
    assert decisions.classify(leg(ledger_pb2.LEG_STATE_PREPARED)).vote == Vote.PREPARED
    assert decisions.classify(leg(ledger_pb2.LEG_STATE_COMMITTED)).vote == Vote.COMMITTED
    refused = decisions.classify(leg(ledger_pb2.LEG_STATE_ABORTED, PRECONDITION, errors.INSUFFICIENT_FUNDS))
    assert (refused.vote, refused.code, refused.reason) == (
        Vote.ABORTED,
        PRECONDITION,
        errors.INSUFFICIENT_FUNDS,
    )


def test_classify_existing_abort_reads_reason_from_the_record() -> None:
    """A re-submitted id: the node echoes the record with code 0 and the
    original refusal in the transfer."""
    answer = decisions.classify(
        leg(ledger_pb2.LEG_STATE_ABORTED, transfer_code=PRECONDITION, transfer_reason=errors.ACCOUNT_FROZEN)
    )
    assert (answer.vote, answer.code, answer.reason) == (Vote.ABORTED, PRECONDITION, errors.ACCOUNT_FROZEN)


def test_classify_conflict_wins_over_echoed_state() -> None:
    answer = decisions.classify(leg(ledger_pb2.LEG_STATE_COMMITTED, 6, errors.TRANSFER_ID_CONFLICT))
    assert answer.vote == Vote.CONFLICT


def test_classify_slot_moved_and_not_recorded() -> None:
    assert (
        decisions.classify(leg(ledger_pb2.LEG_STATE_UNKNOWN, 10, errors.SLOT_MOVED)).vote == Vote.SLOT_MOVED
    )
    invalid = decisions.classify(leg(ledger_pb2.LEG_STATE_UNKNOWN, 3, errors.INVALID_AMOUNT))
    assert invalid.vote == Vote.NOT_RECORDED


def test_classify_unreadable_answer_is_unknown() -> None:
    assert decisions.classify(leg(ledger_pb2.LEG_STATE_UNSPECIFIED)).vote == Vote.UNKNOWN


# --- plan -----------------------------------------------------------------------


def test_commit_iff_both_prepared() -> None:
    plan = decisions.plan(PREPARED, PREPARED)
    assert (plan.step, plan.decision) == (Step.DECIDE, ledger_pb2.DECISION_COMMIT)


@pytest.mark.parametrize(
    "credit",
    [
        Answer(Vote.ABORTED, PRECONDITION, errors.ACCOUNT_FROZEN),
        Answer(Vote.ABORTED, PRECONDITION, errors.CURRENCY_MISMATCH),
        Answer(Vote.CONFLICT, 6, errors.TRANSFER_ID_CONFLICT),
    ],
)
def test_abort_carries_the_refusing_credit_legs_reason(credit: Answer) -> None:
    plan = decisions.plan(PREPARED, credit)
    assert (plan.step, plan.decision) == (Step.DECIDE, ledger_pb2.DECISION_ABORT)
    assert (plan.code, plan.reason) == (credit.code, credit.reason)


def test_refused_debit_is_already_final() -> None:
    debit = Answer(Vote.ABORTED, PRECONDITION, errors.INSUFFICIENT_FUNDS)
    plan = decisions.plan(debit, PREPARED)
    assert (plan.step, plan.decision, plan.reason) == (
        Step.SETTLED,
        ledger_pb2.DECISION_ABORT,
        errors.INSUFFICIENT_FUNDS,
    )
    verdict = decisions.verdict_of_plan(plan)
    assert verdict == Verdict(Truth.ABORTED, PRECONDITION, errors.INSUFFICIENT_FUNDS, "")
    assert decisions.should_finish(PREPARED, verdict)  # release the pending credit


def test_credit_shard_down_aborts_with_shard_unavailable() -> None:
    plan = decisions.plan(PREPARED, UNKNOWN)
    assert (plan.decision, plan.reason) == (ledger_pb2.DECISION_ABORT, errors.SHARD_UNAVAILABLE)


def test_debit_shard_down_still_asks_the_record_holder_to_abort() -> None:
    plan = decisions.plan(UNKNOWN, PREPARED)
    assert (plan.step, plan.decision, plan.reason) == (
        Step.DECIDE,
        ledger_pb2.DECISION_ABORT,
        errors.SHARD_UNAVAILABLE,
    )


def test_resubmitted_committed_transfer_stays_committed() -> None:
    plan = decisions.plan(Answer(Vote.COMMITTED), Answer(Vote.COMMITTED))
    assert plan.step == Step.SETTLED
    verdict = decisions.verdict_of_plan(plan)
    assert verdict.truth == Truth.COMMITTED
    assert not decisions.should_finish(Answer(Vote.COMMITTED), verdict)


def test_resubmitted_committed_with_unfinished_credit_finishes_it() -> None:
    verdict = decisions.verdict_of_plan(decisions.plan(Answer(Vote.COMMITTED), PREPARED))
    assert verdict.truth == Truth.COMMITTED
    assert decisions.should_finish(PREPARED, verdict)


def test_slot_moved_on_either_leg_retries() -> None:
    moved = Answer(Vote.SLOT_MOVED, 10, errors.SLOT_MOVED)
    assert decisions.plan(moved, PREPARED).step == Step.RETRY
    assert decisions.plan(PREPARED, moved).step == Step.RETRY


def test_conflict_at_record_holder_is_rejected_and_touches_nothing() -> None:
    conflict = Answer(Vote.CONFLICT, 6, errors.TRANSFER_ID_CONFLICT)
    plan = decisions.plan(conflict, PREPARED)
    assert (plan.step, plan.reason) == (Step.REJECT, errors.TRANSFER_ID_CONFLICT)
    verdict = Verdict(Truth.ABORTED, plan.code, plan.reason)
    # The credit leg someone else owns is never finished.
    assert not decisions.should_finish(conflict, verdict)


# --- reading Decide answers -------------------------------------------------------


def test_decide_done_as_asked() -> None:
    commit = decisions.plan(PREPARED, PREPARED)
    assert decisions.verdict_of_decide(commit, leg(ledger_pb2.LEG_STATE_COMMITTED)).truth == Truth.COMMITTED
    abort = decisions.plan(PREPARED, Answer(Vote.ABORTED, PRECONDITION, errors.ACCOUNT_FROZEN))
    verdict = decisions.verdict_of_decide(abort, leg(ledger_pb2.LEG_STATE_ABORTED))
    assert (verdict.truth, verdict.code, verdict.reason) == (
        Truth.ABORTED,
        PRECONDITION,
        errors.ACCOUNT_FROZEN,
    )


def test_contradictory_decision_is_obeyed() -> None:
    """Recovery aborted the record first: our COMMIT is refused; we report ABORTED."""
    commit = decisions.plan(PREPARED, PREPARED)
    answer = leg(
        ledger_pb2.LEG_STATE_ABORTED,
        PRECONDITION,
        errors.CONTRADICTORY_DECISION,
        transfer_code=10,
        transfer_reason=errors.PREPARE_TIMEOUT,
    )
    verdict = decisions.verdict_of_decide(commit, answer)
    assert (verdict.truth, verdict.code, verdict.reason) == (Truth.ABORTED, 10, errors.PREPARE_TIMEOUT)
    # And the other way: an abort refused because the record is COMMITTED.
    abort = decisions.plan(PREPARED, UNKNOWN)
    committed = leg(ledger_pb2.LEG_STATE_COMMITTED, PRECONDITION, errors.CONTRADICTORY_DECISION)
    assert decisions.verdict_of_decide(abort, committed).truth == Truth.COMMITTED


def test_decide_without_state_is_unknown() -> None:
    commit = decisions.plan(PREPARED, PREPARED)
    answer = leg(ledger_pb2.LEG_STATE_UNKNOWN, 5, errors.TRANSFER_NOT_FOUND)
    assert decisions.verdict_of_decide(commit, answer).truth == Truth.UNKNOWN


# --- outcomes -------------------------------------------------------------------


def test_outcomes() -> None:
    body = types_pb2.Transfer(id="t", amount=5, currency="CNY")
    committed = decisions.outcome(body, Verdict(Truth.COMMITTED))
    assert (committed.status, committed.code, committed.cross_shard) == (
        types_pb2.TRANSFER_STATUS_COMMITTED,
        0,
        True,
    )
    aborted = decisions.outcome(body, Verdict(Truth.ABORTED, PRECONDITION, errors.INSUFFICIENT_FUNDS))
    assert (aborted.status, aborted.reason) == (types_pb2.TRANSFER_STATUS_ABORTED, errors.INSUFFICIENT_FUNDS)
    pending = decisions.unavailable(body, errors.SHARD_UNAVAILABLE, "down")
    assert (pending.status, pending.code) == (types_pb2.TRANSFER_STATUS_PENDING, 14)


def test_contradiction_detector() -> None:
    assert decisions.finish_contradicts(Answer(Vote.COMMITTED), Verdict(Truth.ABORTED))
    assert decisions.finish_contradicts(Answer(Vote.ABORTED), Verdict(Truth.COMMITTED))
    assert not decisions.finish_contradicts(PREPARED, Verdict(Truth.COMMITTED))


# --- validation -----------------------------------------------------------------

GOOD = types_pb2.Transfer(
    id="6f1c2a6e-8a43-4c6b-9a55-0c8d3f3e2b11",
    kind=types_pb2.TRANSFER_KIND_TRANSFER,
    debit_account_id=4000000000000002,
    credit_account_id=4000000000000010,
    amount=100,
    currency="CNY",
    status=types_pb2.TRANSFER_STATUS_COMMITTED,
)


def test_validate_keeps_body_and_drops_outputs() -> None:
    clean = validate.check_transfer(GOOD)
    assert clean.id == GOOD.id and clean.amount == 100
    assert clean.status == types_pb2.TRANSFER_STATUS_UNSPECIFIED
    upper = types_pb2.Transfer()
    upper.CopyFrom(GOOD)
    upper.id = GOOD.id.upper()
    assert validate.check_transfer(upper).id == GOOD.id  # canonical lowercase


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "not-a-uuid"}, errors.INVALID_TRANSFER_ID),
        ({"id": "6f1c2a6e8a434c6b9a550c8d3f3e2b11"}, errors.INVALID_TRANSFER_ID),
        ({"amount": 0}, errors.INVALID_AMOUNT),
        ({"amount": 10**15 + 1}, errors.INVALID_AMOUNT),
        ({"currency": "XXX"}, errors.INVALID_CURRENCY),
        ({"credit_account_id": 4000000000000002}, errors.SAME_ACCOUNT),
        ({"credit_account_id": 4000000000000011}, errors.INVALID_ACCOUNT_ID),
        ({"credit_account_id": 2156}, errors.SYSTEM_ACCOUNT),
        ({"kind": types_pb2.TRANSFER_KIND_DEPOSIT}, errors.INVALID_TRANSFER_KIND),
        ({"memo": "x" * 141}, errors.INVALID_ARGUMENT),
    ],
)
def test_validate_refuses(change: dict[str, object], reason: str) -> None:
    bad = types_pb2.Transfer()
    bad.CopyFrom(GOOD)
    for name, value in change.items():
        setattr(bad, name, value)
    with pytest.raises(errors.BankError) as caught:
        validate.check_transfer(bad)
    assert caught.value.reason == reason
    assert caught.value.code_value == 3


def test_a_single_shard_record_is_followed_and_its_credit_leg_aborted() -> None:
    """The id was settled on one shard before a slot move made it cross-shard."""
    single = ledger_pb2.Leg(transfer=types_pb2.Transfer(id="t"), state=ledger_pb2.LEG_STATE_COMMITTED)
    answer = decisions.classify(single)
    assert (answer.vote, answer.single_shard) == (decisions.Vote.COMMITTED, True)
    assert decisions.plan(answer, decisions.Answer(decisions.Vote.PREPARED)).step == decisions.Step.SETTLED
    abort = decisions.Plan(decisions.Step.DECIDE, ledger_pb2.DECISION_ABORT)
    assert decisions.verdict_of_decide(abort, single).truth == Truth.ABORTED
    moving = ledger_pb2.Leg(transfer=types_pb2.Transfer(id="t"), code=14, reason=errors.SLOT_MOVING)
    assert decisions.classify(moving).vote == decisions.Vote.SLOT_MOVED


# --- direct decide ------------------------------------------------------------


@pytest.mark.parametrize(
    ("credit", "step", "decision", "reason"),
    [
        (PREPARED, Step.DECIDE, ledger_pb2.DECISION_COMMIT, ""),
        (Answer(Vote.COMMITTED), Step.DECIDE, ledger_pb2.DECISION_COMMIT, ""),
        (UNKNOWN, Step.DECIDE, ledger_pb2.DECISION_ABORT, errors.SHARD_UNAVAILABLE),
        (
            Answer(Vote.ABORTED, PRECONDITION, errors.ACCOUNT_FROZEN),
            Step.DECIDE,
            ledger_pb2.DECISION_ABORT,
            errors.ACCOUNT_FROZEN,
        ),
        (
            Answer(Vote.CONFLICT, 6, errors.TRANSFER_ID_CONFLICT),
            Step.DECIDE,
            ledger_pb2.DECISION_ABORT,
            errors.TRANSFER_ID_CONFLICT,
        ),
        (Answer(Vote.SLOT_MOVED, 10, errors.SLOT_MOVED), Step.RETRY, ledger_pb2.DECISION_UNSPECIFIED, ""),
    ],
)
def test_plan_direct_asks_what_a_prepared_record_holder_would_be_asked(
    credit: Answer, step: Step, decision: int, reason: str
) -> None:
    plan = decisions.plan_direct(credit)
    assert (plan.step, plan.decision) == (step, decision)
    if step == Step.DECIDE:
        assert plan.reason == reason
        assert plan == decisions.plan(PREPARED, credit)


def test_verdict_of_direct() -> None:
    commit = decisions.plan_direct(PREPARED)
    done = leg(ledger_pb2.LEG_STATE_COMMITTED)
    assert decisions.verdict_of_direct(commit, decisions.classify(done), done) == Verdict(Truth.COMMITTED)
    # The debit refused now: an ABORTED record carrying its reason.
    refused = leg(
        ledger_pb2.LEG_STATE_ABORTED,
        PRECONDITION,
        errors.INSUFFICIENT_FUNDS,
        errors.INSUFFICIENT_FUNDS,
        PRECONDITION,
    )
    verdict = decisions.verdict_of_direct(commit, decisions.classify(refused), refused)
    assert (verdict.truth, verdict.code, verdict.reason) == (
        Truth.ABORTED,
        PRECONDITION,
        errors.INSUFFICIENT_FUNDS,
    )
    # Recovery was first: contradicted with the truth.
    tomb = leg(
        ledger_pb2.LEG_STATE_ABORTED, PRECONDITION, errors.CONTRADICTORY_DECISION, errors.PREPARE_TIMEOUT, 10
    )
    verdict = decisions.verdict_of_direct(commit, decisions.classify(tomb), tomb)
    assert (verdict.truth, verdict.reason) == (Truth.ABORTED, errors.PREPARE_TIMEOUT)
    # The id belongs to another body at the record holder: ABORTED for the
    # caller (answered REJECTED), nothing recorded for us.
    taken = ledger_pb2.Leg(state=ledger_pb2.LEG_STATE_UNKNOWN, code=6, reason=errors.TRANSFER_ID_CONFLICT)
    verdict = decisions.verdict_of_direct(commit, decisions.classify(taken), taken)
    assert (verdict.truth, verdict.reason) == (Truth.ABORTED, errors.TRANSFER_ID_CONFLICT)
    assert decisions.verdict_of_vote(UNKNOWN).truth == Truth.UNKNOWN


def test_verdict_of_direct_follows_a_single_shard_record() -> None:
    """The id was settled on one shard before a slot move made it cross-shard:
    the record holder answers the single-shard record (role 0); its state is
    the outcome (the credit leg is then aborted, never committed)."""
    commit = decisions.plan_direct(PREPARED)
    posted = ledger_pb2.Leg(transfer=types_pb2.Transfer(id="t"), state=ledger_pb2.LEG_STATE_COMMITTED)
    debit = decisions.classify(posted)
    assert debit.single_shard
    assert decisions.verdict_of_direct(commit, debit, posted) == Verdict(Truth.COMMITTED)
    refused = ledger_pb2.Leg(
        transfer=types_pb2.Transfer(id="t", code=PRECONDITION, reason=errors.INSUFFICIENT_FUNDS),
        state=ledger_pb2.LEG_STATE_ABORTED,
    )
    verdict = decisions.verdict_of_direct(commit, decisions.classify(refused), refused)
    assert (verdict.truth, verdict.reason) == (Truth.ABORTED, errors.INSUFFICIENT_FUNDS)
    assert decisions.should_finish(PREPARED, verdict)
