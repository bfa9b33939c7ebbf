"""Routing decisions of the gateway: pure, with a fake slot map."""

from __future__ import annotations

import uuid

from gateway import routing
from gateway.routing import COORDINATOR, Disposition
from shardbank import errors, ids
from shardbank.v1 import ledger_pb2, types_pb2

A1, A2, B1 = 1000000000000008, 2000000000000006, 3000000000000004
OWNERS = {A1: "shard-1", A2: "shard-1", B1: "shard-2"}


def owner(account_id: int) -> str:
    return OWNERS[account_id]


def transfer(kind: int, debit: int, credit: int, **fields: object) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=str(uuid.uuid4()),
        kind=kind,  # type: ignore[arg-type]
        debit_account_id=debit,
        credit_account_id=credit,
        amount=1,
        currency="CNY",
        **fields,  # type: ignore[arg-type]
    )


def test_fixture_ids_are_valid() -> None:
    assert all(ids.is_customer_account_id(a) for a in OWNERS)


def test_deposit_goes_to_credit_owner_and_withdrawal_to_debit_owner() -> None:
    assert routing.transfer_target(transfer(types_pb2.TRANSFER_KIND_DEPOSIT, 0, B1), owner) == routing.shard(
        "shard-2"
    )
    assert routing.transfer_target(
        transfer(types_pb2.TRANSFER_KIND_WITHDRAWAL, A1, 0), owner
    ) == routing.shard("shard-1")


def test_transfers_same_shard_to_node_else_coordinator() -> None:
    for kind in (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT):
        assert routing.transfer_target(transfer(kind, A1, A2), owner) == routing.shard("shard-1")
        assert routing.transfer_target(transfer(kind, A1, B1), owner) is not None
        assert routing.transfer_target(transfer(kind, A1, B1), owner).is_coordinator
        assert routing.transfer_target(transfer(kind, B1, A2), owner) == COORDINATOR


def test_system_accounts_belong_to_their_shard_index() -> None:
    cash = ids.system_account_id(2, "CNY")
    assert cash == 2156
    assert routing.account_shard(cash, owner) == "shard-2"
    assert routing.account_shard(A1, owner) == "shard-1"


def test_group_keeps_request_order_and_skips_unroutable() -> None:
    one, two = routing.shard("shard-1"), routing.shard("shard-2")
    groups = routing.group([one, two, None, one, COORDINATOR, two])
    assert groups == {one: [0, 3], two: [1, 5], COORDINATOR: [4]}
    assert str(COORDINATOR) == "coordinator"
    assert str(one) == "shard-1"


def test_classification() -> None:
    assert routing.classify_outcome(0, "") is Disposition.DONE
    assert routing.classify_outcome(10, errors.SLOT_MOVED) is Disposition.MOVED
    assert routing.classify_outcome(10, "TWO_PHASE_ABORTED") is Disposition.DONE
    assert routing.classify_outcome(9, errors.CROSS_SHARD) is Disposition.MOVED
    assert routing.classify_outcome(9, errors.INSUFFICIENT_FUNDS) is Disposition.DONE
    assert routing.classify_outcome(14, errors.SHARD_UNAVAILABLE) is Disposition.UNAVAILABLE
    assert routing.classify_outcome(3, errors.INVALID_AMOUNT) is Disposition.DONE
    exists = ledger_pb2.AccountResult(code=6, reason=errors.ACCOUNT_EXISTS)
    assert routing.classify_account(exists) is Disposition.RENEW
    assert (
        routing.classify_transfer(types_pb2.Transfer(code=10, reason=errors.SLOT_MOVED)) is Disposition.MOVED
    )


def test_found_means_a_state_not_a_code() -> None:
    aborted_for_missing_account = types_pb2.Transfer(
        status=types_pb2.TRANSFER_STATUS_ABORTED, code=5, reason=errors.ACCOUNT_NOT_FOUND
    )
    assert routing.is_found(aborted_for_missing_account)
    assert not routing.is_found(types_pb2.Transfer(code=5, reason=errors.TRANSFER_NOT_FOUND))
    assert not routing.is_found(types_pb2.Transfer(status=types_pb2.TRANSFER_STATUS_REJECTED, code=3))


def test_pick_prefers_the_record_holder() -> None:
    body = transfer(types_pb2.TRANSFER_KIND_TRANSFER, B1, A1)  # record at shard-2 (debit), leg at shard-1
    record = types_pb2.Transfer()
    record.CopyFrom(body)
    record.status = types_pb2.TRANSFER_STATUS_ABORTED
    leg = types_pb2.Transfer()
    leg.CopyFrom(body)
    leg.status = types_pb2.TRANSFER_STATUS_PENDING
    assert routing.pick_transfer({"shard-1": leg, "shard-2": record}, owner) == record
    assert routing.pick_transfer({"shard-2": record, "shard-1": leg}, owner) == record
    assert routing.pick_transfer({"shard-1": leg}, owner) == leg
    assert routing.pick_transfer({}, owner) is None


def test_record_holder_of_a_deposit_is_the_customer_shard() -> None:
    deposit = transfer(types_pb2.TRANSFER_KIND_DEPOSIT, ids.system_account_id(2, "CNY"), B1)
    assert routing.record_holder(deposit, owner) == "shard-2"
    withdrawal = transfer(types_pb2.TRANSFER_KIND_WITHDRAWAL, A1, ids.system_account_id(1, "CNY"))
    assert routing.record_holder(withdrawal, owner) == "shard-1"
