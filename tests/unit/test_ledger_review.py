"""Review holds in the ledger state machine: a transfer held for a risk
officer is a 2PC transfer whose legs wait on purpose until a deadline."""

from __future__ import annotations

import grpc

from ledger_node.testing import MemoryLedger, account, deposit, move
from shardbank import errors
from shardbank.v1 import ledger_pb2, types_pb2

DEBIT, CREDIT = types_pb2.LEG_ROLE_DEBIT, types_pb2.LEG_ROLE_CREDIT
PREPARED = ledger_pb2.LEG_STATE_PREPARED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
REVIEW_MS = 60_000


def _open_pair(node: MemoryLedger) -> tuple[int, int]:
    a, b = (r.account.id for r in node.open(account(), account()))
    node.transfers(deposit(a, 1_000))
    return a, b


def _held(node: MemoryLedger, a: int, b: int, deadline_ms: int) -> types_pb2.Transfer:
    item = move(a, b, 300)
    item.review_deadline_unix_ms = deadline_ms
    item.risk.decision = types_pb2.RISK_DECISION_REVIEW
    item.risk.rules.append("large_amount")
    item.risk.alert_id = "0000000000001-aaaaaaaaaaaa"
    (response,) = node.apply(
        ledger_pb2.PrepareRequest(
            epoch=1,
            items=[
                ledger_pb2.PrepareItem(transfer=item, role=DEBIT),
                ledger_pb2.PrepareItem(transfer=item, role=CREDIT),
            ],
        )
    )
    assert isinstance(response, ledger_pb2.LegsResponse)
    assert [leg.state for leg in response.legs] == [PREPARED, PREPARED], response
    return item


def _decide(node: MemoryLedger, item: types_pb2.Transfer, what: int, finish: bool = False) -> ledger_pb2.Leg:
    request_type = ledger_pb2.FinishRequest if finish else ledger_pb2.DecideRequest
    decide = ledger_pb2.DecideItem(transfer_id=item.id, decision=what, transfer=item)  # type: ignore[arg-type]
    (response,) = node.apply(request_type(epoch=1, items=[decide]))
    assert isinstance(response, ledger_pb2.LegsResponse)
    (leg,) = response.legs
    return leg


def test_same_shard_review_hold_keeps_both_legs_and_the_assessment() -> None:
    node = MemoryLedger()
    a, b = _open_pair(node)
    item = _held(node, a, b, node.now_ms + REVIEW_MS)
    held = node.ledger.accounts[a]
    assert (held.balance, held.held, held.available) == (1_000, 300, 700)
    assert node.ledger.accounts[b].pending_credit == 300
    record = node.ledger.get_transfer(item.id)
    assert record.status == types_pb2.TRANSFER_STATUS_PENDING
    assert record.reason == errors.UNDER_REVIEW
    assert list(record.risk.rules) == ["large_amount"]
    deadline_ms = item.review_deadline_unix_ms
    assert record.review_deadline_unix_ms == deadline_ms
    # Waiting on purpose: not in doubt before the deadline, counted apart.
    assert node.ledger.in_doubt_legs(node.now_ms + 5_000, 2_000, 0) == []
    assert node.ledger.review_holds(node.now_ms) == 2
    assert node.ledger.in_doubt_legs(deadline_ms + 1_999, 2_000, 0) == []
    due = node.ledger.in_doubt_legs(deadline_ms + 2_000, 2_000, 0)
    assert sorted(leg.role for leg in due) == [DEBIT, CREDIT]
    # Approve: commit the record, finish the credit leg; the books balance.
    assert _decide(node, item, ledger_pb2.DECISION_COMMIT).state == ledger_pb2.LEG_STATE_COMMITTED
    assert (
        _decide(node, item, ledger_pb2.DECISION_COMMIT, finish=True).state == ledger_pb2.LEG_STATE_COMMITTED
    )
    assert (node.balance(a), node.balance(b), held.held, node.ledger.accounts[b].pending_credit) == (
        700,
        300,
        0,
        0,
    )
    assert sum(x.balance for x in node.ledger.accounts.values()) == 0
    assert node.ledger.in_doubt == {}


def test_commit_past_the_review_deadline_is_refused_by_the_record_holder() -> None:
    node = MemoryLedger()
    a, b = _open_pair(node)
    item = _held(node, a, b, node.now_ms + 10)
    node.now_ms += 10
    late = _decide(node, item, ledger_pb2.DECISION_COMMIT)
    assert (late.state, late.code, late.reason) == (PREPARED, PRECONDITION, errors.REVIEW_EXPIRED)
    assert node.ledger.accounts[a].held == 300
    aborted = _decide(node, item, ledger_pb2.DECISION_ABORT)
    assert aborted.state == ledger_pb2.LEG_STATE_ABORTED
    assert node.ledger.accounts[a].held == 0 and node.balance(a) == 1_000


def test_review_deadline_out_of_range_is_refused_and_records_nothing() -> None:
    node = MemoryLedger()
    a, b = _open_pair(node)
    item = move(a, b, 300)
    item.review_deadline_unix_ms = -1
    (response,) = node.apply(
        ledger_pb2.PrepareRequest(epoch=1, items=[ledger_pb2.PrepareItem(transfer=item, role=DEBIT)])
    )
    assert isinstance(response, ledger_pb2.LegsResponse)
    assert (response.legs[0].code, response.legs[0].reason) == (INVALID, errors.INVALID_REVIEW_DEADLINE)
    assert node.ledger.accounts[a].held == 0
