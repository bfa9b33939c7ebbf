"""The pure rules of review holds: when a round holds instead of deciding,
how a final review answers a repeat, why recovery aborts, and the edge
checks of the alert store and the test hook."""

from __future__ import annotations

import grpc
import pytest

from coordinator import decisions, recovery, review
from coordinator.decisions import Answer, Vote
from gateway.review.desk import ReviewConfig
from gateway.review.testhook import ReviewTestRule, parse_rule
from shardbank import alerts, errors
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2, types_pb2

PREPARED, ABORTED_VOTE, UNKNOWN = (
    Answer(Vote.PREPARED),
    Answer(Vote.ABORTED, 9, errors.ACCOUNT_FROZEN),
    Answer(Vote.UNKNOWN),
)


@pytest.mark.parametrize(
    ("debit", "credit", "review_hold", "holds"),
    [
        (PREPARED, PREPARED, True, True),  # would commit: wait for the officer
        (PREPARED, UNKNOWN, True, True),  # credit shard silent: approval prepares it again
        (PREPARED, ABORTED_VOTE, True, False),  # credit refused (frozen): abort as usual
        (UNKNOWN, PREPARED, True, False),  # record holder silent: the normal rule
        (Answer(Vote.COMMITTED), PREPARED, True, False),  # approved before: finish it
        (PREPARED, PREPARED, False, False),  # not a review: commit now
    ],
)
def test_a_round_holds_only_what_an_officer_must_decide(
    debit: Answer, credit: Answer, review_hold: bool, holds: bool
) -> None:
    plan = decisions.plan(debit, credit)
    assert decisions.holds_for_review(debit, credit, plan, review_hold) is holds


def test_under_review_outcome_is_pending_with_the_stored_deadline() -> None:
    record = types_pb2.Transfer(id="t", review_deadline_unix_ms=99, created_at_unix_ms=5)
    record.risk.rules.append("large_amount")
    shown = decisions.under_review(types_pb2.Transfer(id="t", code=14, reason="X"), record)
    assert (shown.status, shown.code, shown.reason) == (
        types_pb2.TRANSFER_STATUS_PENDING,
        0,
        errors.UNDER_REVIEW,
    )
    assert (shown.review_deadline_unix_ms, list(shown.risk.rules)) == (99, ["large_amount"])


def _final(status: types_pb2.TransferStatus.ValueType, reason: str = "") -> types_pb2.Transfer:
    record = types_pb2.Transfer(id="t", status=status, reason=reason, review_deadline_unix_ms=1)
    record.risk.alert_id = "0000000000001-aaaaaaaaaaaa"
    return record


def test_a_decided_review_answers_the_same_decision_and_refuses_the_other() -> None:
    committed = _final(types_pb2.TRANSFER_STATUS_COMMITTED)
    rejected = _final(types_pb2.TRANSFER_STATUS_ABORTED, errors.RISK_REJECTED)
    expired = _final(types_pb2.TRANSFER_STATUS_ABORTED, errors.REVIEW_EXPIRED)
    assert review.final_answer(committed, approve=True) is committed
    assert review.final_answer(rejected, approve=False) is rejected
    for record, approve, reason in (
        (committed, False, errors.REVIEW_APPROVED),
        (rejected, True, errors.RISK_REJECTED),
        (expired, True, errors.REVIEW_EXPIRED),
        (expired, False, errors.REVIEW_EXPIRED),
    ):
        with pytest.raises(BankError) as caught:
            review.final_answer(record, approve)
        assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
        assert caught.value.metadata["alert_id"] == record.risk.alert_id


def test_recovery_names_an_expired_review_apart_from_a_timeout() -> None:
    assert (
        recovery.presumed_abort(types_pb2.Transfer(review_deadline_unix_ms=1)).reason == errors.REVIEW_EXPIRED
    )
    assert recovery.presumed_abort(types_pb2.Transfer()).reason == errors.PREPARE_TIMEOUT
    assert recovery.presumed_abort(types_pb2.Transfer()).decision == ledger_pb2.DECISION_ABORT


def test_test_hook_rule_and_review_config_bounds() -> None:
    assert parse_rule("") is None
    assert parse_rule(" amount >= 100000 ") == ReviewTestRule(100_000)
    for bad in ("amount>0", "amount>=-1", "amount>=0", "amount>=1.5", "score>=3"):
        with pytest.raises(ValueError):
            parse_rule(bad)
    rule = ReviewTestRule(100)
    assert rule.fires(types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_PAYMENT, amount=100))
    assert not rule.fires(types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_TRANSFER, amount=99))
    assert not rule.fires(types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_WITHDRAWAL, amount=10**6))
    with pytest.raises(ValueError):
        ReviewConfig(review_deadline_ms=10)


def test_alert_filter_page_token_and_note_checks() -> None:
    token = alerts.encode_page_token("1760000000000-0123456789ab")
    assert alerts.decode_page_token(token) == "1760000000000-0123456789ab"
    with pytest.raises(BankError):
        alerts.decode_page_token(alerts.encode_page_token("../../slotmap"))
    where = alerts.Filter(rule="velocity_1h", account_id=7)
    assert where.matches({"rules": ["velocity_1h"], "credit_account_id": 7, "account_id": 1})
    assert not where.matches({"rules": ["large_amount"], "account_id": 7})
    for bad in ("x" * 501, "tab\tinside"):
        with pytest.raises(BankError) as caught:
            alerts.check_note(bad)
        assert caught.value.reason == alerts.INVALID_NOTE
    assert alerts.check_page_size(0) == alerts.PAGE_SIZE_DEFAULT
