"""The node's side of risk control: a BLOCK decision recorded as a refusal
(single- and cross-shard), `risk` stored but not part of the idempotency
body, GetActivity answers from the history index, and prefix_end at 0xff."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from ledger_node import keys
from ledger_node.risk_activity import RiskActivity, check_request
from ledger_node.testing import MemoryLedger, account, deposit, move
from shardbank import activity, limits
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2, types_pb2

BLOCK = types_pb2.RISK_DECISION_BLOCK
ALLOW = types_pb2.RISK_DECISION_ALLOW
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


def blocked(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    transfer.risk.CopyFrom(types_pb2.RiskAssessment(decision=BLOCK, score=100, rules=["large_amount"]))
    return transfer


def test_a_blocked_transfer_is_recorded_refused_and_replayed() -> None:
    node = MemoryLedger()
    a, b = account(), account()
    node.open(a, b)
    node.transfers(deposit(a.id, 1_000))
    item = blocked(move(a.id, b.id, 500))
    (first,) = node.transfers(item)
    assert first.status == types_pb2.TRANSFER_STATUS_ABORTED
    assert (first.code, first.reason) == (FAILED_PRECONDITION, "RISK_BLOCKED")
    assert "large_amount" not in first.message
    assert (node.balance(a.id), node.balance(b.id)) == (1_000, 0)
    again = move(a.id, b.id, 500, item.id)
    again.risk.decision = ALLOW  # the gateway decides differently now: the first outcome stands
    (replay,) = node.transfers(again)
    assert replay.reason == "RISK_BLOCKED" and replay.risk.decision == BLOCK
    assert list(replay.risk.rules) == ["large_amount"]
    assert node.balance(a.id) == 1_000
    stored = node.ledger.get_transfer(item.id)
    assert stored.risk.decision == BLOCK


def test_risk_is_stored_but_not_part_of_the_body() -> None:
    node = MemoryLedger()
    a, b = account(), account()
    node.open(a, b)
    node.transfers(deposit(a.id, 1_000))
    item = move(a.id, b.id, 300)
    item.risk.CopyFrom(types_pb2.RiskAssessment(decision=ALLOW, rules=["structuring"], alert_id="a-1"))
    (first,) = node.transfers(item)
    assert first.status == types_pb2.TRANSFER_STATUS_COMMITTED and first.risk.alert_id == "a-1"
    resend = move(a.id, b.id, 300, item.id)
    resend.risk.alert_id = "a-2"
    (replay,) = node.transfers(resend)
    assert replay.status == types_pb2.TRANSFER_STATUS_COMMITTED and replay.risk.alert_id == "a-1"
    assert node.balance(b.id) == 300


def test_a_cross_shard_block_is_recorded_at_the_debit_shard_and_fences_a_later_prepare() -> None:
    a, b = account(), account()
    node = MemoryLedger(owned=lambda account_id: account_id == a.id)
    node.open(a)
    node.transfers(deposit(a.id, 1_000))
    item = blocked(move(a.id, b.id, 500))
    (refused,) = node.transfers(item)
    assert refused.reason == "RISK_BLOCKED"
    later = move(a.id, b.id, 500, item.id)
    prepare = ledger_pb2.PrepareRequest(
        epoch=1, items=[ledger_pb2.PrepareItem(transfer=later, role=types_pb2.LEG_ROLE_DEBIT)]
    )
    response = node.legs(prepare)
    assert isinstance(response, ledger_pb2.LegsResponse)
    (leg,) = response.legs
    assert leg.state == ledger_pb2.LEG_STATE_ABORTED and leg.reason == "RISK_BLOCKED"
    assert node.ledger.accounts[a.id].held == 0
    decide = ledger_pb2.DecideRequest(
        epoch=1,
        items=[
            ledger_pb2.DecideItem(transfer_id=item.id, decision=ledger_pb2.DECISION_ABORT, transfer=later)
        ],
    )
    decided = node.legs(decide)
    assert isinstance(decided, ledger_pb2.LegsResponse) and decided.legs[0].code == 0


def memory_history(node: MemoryLedger, account_id: int) -> Iterator[activity.Event]:
    prefix = keys.HISTORY + keys.u64(account_id)
    for key in sorted((k for k in node.kv if k.startswith(prefix)), reverse=True):
        entry = types_pb2.HistoryEntry.FromString(node.kv[key])
        delta = entry.balance_delta
        other = entry.transfer.credit_account_id if delta < 0 else entry.transfer.debit_account_id
        yield entry.transfer.updated_at_unix_ms, delta, other


def test_get_activity_answers_from_the_history_index() -> None:
    node = MemoryLedger()
    a, b = account(), account()
    node.open(a, b)
    node.transfers(
        deposit(a.id, 10_000), move(a.id, b.id, 4_800), move(a.id, b.id, 4_700), move(a.id, b.id, 100)
    )
    risk = RiskActivity(node.ledger.accounts, lambda i: memory_history(node, i), accounts_max=0)
    request = ledger_pb2.GetActivityRequest(
        queries=[ledger_pb2.ActivityQuery(account_id=a.id, counterparty_id=b.id),
                 ledger_pb2.ActivityQuery(account_id=b.id), ledger_pb2.ActivityQuery(account_id=12345)],
        near_amount_low=4_500, near_amount_high=5_000,
    )  # fmt: skip
    answer = risk.answer(request, lambda _: True, node.now_ms + 1)
    mine, theirs, unknown = answer.summaries
    assert (mine.out_1m.count, mine.out_1m.amount) == (3, 9_600)
    assert (mine.in_24h.count, mine.near_threshold_out_24h) == (1, 2)
    assert mine.counterparty_known and mine.distinct_out_1h == 1
    assert mine.account_type == types_pb2.ACCOUNT_TYPE_PERSONAL
    assert (theirs.in_1h.count, theirs.distinct_in_1h) == (3, 1)
    assert unknown.reason == "ACCOUNT_NOT_FOUND"
    moved = risk.answer(request, lambda account_id: account_id != b.id, node.now_ms + 1)
    assert moved.summaries[1].reason == "SLOT_MOVED"


def test_customer_totals_count_the_accounts_this_shard_owns() -> None:
    """`customer_ids`: the money out in 24 h of a customer's accounts here,
    owned ones only (a staged copy is the other shard's to count), zero for a
    customer with no account here; the summary's customer part agrees."""
    node = MemoryLedger()
    first, second, payee = account(), account(), account()
    for opened in (first, second):
        opened.holder.customer_id = "cust-alice"
    node.open(first, second, payee)
    node.transfers(
        deposit(first.id, 10_000),
        deposit(second.id, 10_000),
        move(first.id, payee.id, 700),
        move(second.id, payee.id, 500),
    )
    risk = RiskActivity(node.ledger.accounts, lambda i: memory_history(node, i), accounts_max=0)
    request = ledger_pb2.GetActivityRequest(
        queries=[ledger_pb2.ActivityQuery(account_id=first.id)], customer_ids=["cust-alice", "cust-nobody"]
    )
    answer = risk.answer(request, lambda _: True, node.now_ms + 1)
    alice, nobody = answer.customers
    assert (alice.customer_id, alice.out_24h.count, alice.out_24h.amount) == ("cust-alice", 2, 1_200)
    assert (nobody.customer_id, nobody.out_24h.amount) == ("cust-nobody", 0)
    assert answer.summaries[0].customer_out_24h.amount == 1_200
    staged = risk.answer(request, lambda account_id: account_id != second.id, node.now_ms + 1)
    assert staged.customers[0].out_24h.amount == 700
    assert staged.summaries[0].customer_out_24h.amount == 700


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (ledger_pb2.GetActivityRequest(), grpc.StatusCode.INVALID_ARGUMENT, "BATCH_EMPTY"),
        (
            ledger_pb2.GetActivityRequest(customer_ids=[""]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        (
            ledger_pb2.GetActivityRequest(customer_ids=["c" * 65]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        (
            ledger_pb2.GetActivityRequest(customer_ids=["c"] * (limits.BATCH_ITEMS_MAX + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BATCH_TOO_LARGE",
        ),
    ],
)
def test_get_activity_refuses_bad_customer_ids(
    request_: ledger_pb2.GetActivityRequest, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(BankError) as refused:
        check_request(request_)
    assert (refused.value.code, refused.value.reason) == (code, reason)


def test_prefix_end_carries_over_0xff() -> None:
    assert keys.prefix_end(b"h/\x01") == b"h/\x02"
    assert keys.prefix_end(b"h/\x01\xff\xff") == b"h/\x02"
    account_id = 0x0022_3344_5566_77FF
    prefix = keys.HISTORY + keys.u64(account_id)
    end = keys.prefix_end(prefix)
    assert keys.history_key(account_id, 2**64 - 1) < end < keys.history_key(account_id + 1, 0)
