"""The ledger's side of slot moves, pure: fenced slots refuse writes with a
retryable reason, imports land only in staged slots and are journaled,
releases drop exactly what was planned."""

from __future__ import annotations

import grpc

from ledger_node import keys
from ledger_node.slot_data import ReleasePlan, decode_slots, encode_slots, record_account
from ledger_node.testing import MemoryLedger, account, deposit, move
from shardbank import errors
from shardbank.slots import slot_of
from shardbank.v1 import ledger_pb2, types_pb2

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED


def opened(node: MemoryLedger, amount: int) -> int:
    (result,) = node.open(account())
    if amount:
        (posted,) = node.transfers(deposit(result.account.id, amount))
        assert posted.status == COMMITTED
    return result.account.id


def mark(node: MemoryLedger, slots: list[int], what: int, move_id: str = "mv-000000000001") -> object:
    (response,) = node.apply(ledger_pb2.MarkSlotsRequest(epoch=1, move_id=move_id, slots=slots, mark=what))  # type: ignore[arg-type]
    return response


def test_fenced_slots_refuse_writes_with_slot_moving_and_change_nothing() -> None:
    node = MemoryLedger()
    a, b = opened(node, 1_000), opened(node, 0)
    mark(node, [slot_of(a)], ledger_pb2.SLOT_MARK_FENCED)
    seq = node.ledger.journal_seq
    (refused,) = node.transfers(deposit(a, 5))
    assert (refused.code, refused.reason) == (UNAVAILABLE, errors.SLOT_MOVING)
    assert refused.status == types_pb2.TRANSFER_STATUS_REJECTED
    (also,) = node.transfers(move(b, a, 1)) if slot_of(b) != slot_of(a) else (refused,)
    assert also.reason in (errors.SLOT_MOVING, errors.INSUFFICIENT_FUNDS)
    prepared = node.legs(
        ledger_pb2.PrepareRequest(
            epoch=1, items=[ledger_pb2.PrepareItem(transfer=move(a, 123, 1), role=types_pb2.LEG_ROLE_DEBIT)]
        )
    )
    assert isinstance(prepared, ledger_pb2.LegsResponse)
    assert prepared.legs[0].reason in (errors.SLOT_MOVING, errors.INVALID_ACCOUNT_ID)
    assert node.balance(a) == 1_000
    assert node.ledger.journal_seq == seq
    # Reads still work while fenced; NONE lifts the fence (durably written).
    assert node.ledger.get_account(a).code == 0
    mark(node, [slot_of(a)], ledger_pb2.SLOT_MARK_NONE)
    assert decode_slots(node.kv[keys.META_FENCED]) == set()
    (posted,) = node.transfers(deposit(a, 5))
    assert posted.status == COMMITTED


def _exported(source: MemoryLedger, account_id: int) -> ledger_pb2.ImportSlotsRequest:
    records = [
        ledger_pb2.Leg.FromString(value)
        for key, value in source.kv.items()
        if key.startswith(keys.TRANSFER) and record_account(ledger_pb2.Leg.FromString(value)) == account_id
    ]
    history = [
        ledger_pb2.MovedHistory(account_id=account_id, entry=types_pb2.HistoryEntry.FromString(value))
        for key, value in sorted(source.kv.items())
        if key.startswith(keys.HISTORY + keys.u64(account_id))
    ]
    move_id = "mv-000000000001"
    return ledger_pb2.ImportSlotsRequest(
        epoch=1,
        move_id=move_id,
        slots=[slot_of(account_id)],
        accounts=[source.ledger.accounts[account_id].to_proto(with_available=False)],
        records=records,
        history=history,
        checkpoint=ledger_pb2.ImportCheckpoint(move_id=move_id, watermark_seq=source.ledger.journal_seq),
    )


def test_import_lands_only_in_staged_slots_and_release_drops_it() -> None:
    source = MemoryLedger()
    a = opened(source, 700)
    target = MemoryLedger("shard-2", owned=lambda _account_id: False)
    request = _exported(source, a)
    (refused,) = target.apply(request)
    assert isinstance(refused, errors.BankError) and refused.reason == errors.SLOT_NOT_STAGED
    mark(target, [slot_of(a)], ledger_pb2.SLOT_MARK_STAGED)
    (answer,) = target.apply(request)
    assert isinstance(answer, ledger_pb2.ImportSlotsResponse), answer
    assert answer.checkpoint.watermark_seq == source.ledger.journal_seq
    assert target.balance(a) == 700
    # The copy is journaled: one entry per account, record and history entry.
    assert target.ledger.journal_seq == 1 + len(request.records) + len(request.history)
    # Copies are not served: not ours by the map.
    assert target.ledger.get_account(a).reason == errors.SLOT_MOVED
    (dedup,) = target.apply(request)  # accounts and records overwrite (history: the checkpoint sends it once)
    assert isinstance(dedup, ledger_pb2.ImportSlotsResponse)
    record_keys = [k for k in target.kv if k.startswith(keys.TRANSFER)]
    history_keys = [k for k in target.kv if k.startswith(keys.HISTORY)]
    (released,) = target.apply(
        ReleasePlan("mv-000000000001", {slot_of(a)}, [a], record_keys, history_keys, done=True, epoch=1)
    )
    assert isinstance(released, ledger_pb2.ReleaseSlotsResponse)
    assert (released.accounts, released.records, released.done) == (1, len(record_keys), True)
    assert a not in target.ledger.accounts
    assert not [k for k in target.kv if k.startswith((keys.ACCOUNT, keys.TRANSFER, keys.HISTORY))]
    assert target.ledger.staged == set()


def test_an_import_never_overwrites_a_record_of_its_own() -> None:
    source = MemoryLedger()
    a = opened(source, 700)
    target = MemoryLedger("shard-2")
    request = _exported(source, a)
    theirs = request.records[0]
    other = target.ledger  # the target holds the same id for an account of its own
    b = opened(target, 1)
    target.transfers(deposit(b, 1, transfer_id=theirs.transfer.id))
    mark(target, [slot_of(a)], ledger_pb2.SLOT_MARK_STAGED)
    (refused,) = target.apply(request)
    assert isinstance(refused, errors.BankError)
    assert refused.reason == errors.TRANSFER_ID_CONFLICT
    assert a not in other.accounts


def test_slot_sets_round_trip() -> None:
    assert decode_slots(encode_slots({4095, 0, 7})) == {0, 7, 4095}
    assert decode_slots(None) == set()


def test_a_malformed_import_is_refused_whole_and_changes_nothing() -> None:
    source = MemoryLedger()
    a = opened(source, 700)
    target = MemoryLedger("shard-2", owned=lambda _account_id: False)
    mark(target, [slot_of(a)], ledger_pb2.SLOT_MARK_STAGED)
    seq = target.ledger.journal_seq
    broken = _exported(source, a)
    broken.accounts[0].held = broken.accounts[0].balance + 1  # more held than there is
    (refused,) = target.apply(broken)
    assert isinstance(refused, errors.BankError) and refused.code == grpc.StatusCode.INVALID_ARGUMENT
    bad_id = _exported(source, a)
    bad_id.records[0].transfer.id = "not-a-uuid"
    (refused,) = target.apply(bad_id)
    assert isinstance(refused, errors.BankError) and refused.reason == errors.INVALID_TRANSFER_ID
    assert a not in target.ledger.accounts
    assert target.ledger.journal_seq == seq


def test_a_deposed_mover_is_refused_stale_epoch() -> None:
    node = MemoryLedger()
    a = opened(node, 10)
    (newer,) = node.apply(
        ledger_pb2.MarkSlotsRequest(epoch=7, slots=[slot_of(a)], mark=ledger_pb2.SLOT_MARK_FENCED)
    )
    assert isinstance(newer, ledger_pb2.MarkSlotsResponse)
    for stale in (
        ledger_pb2.MarkSlotsRequest(epoch=6, slots=[slot_of(a)], mark=ledger_pb2.SLOT_MARK_NONE),
        ReleasePlan("mv-000000000001", {slot_of(a)}, [a], done=True, epoch=6),
    ):
        (refused,) = node.apply(stale)
        assert isinstance(refused, errors.BankError) and refused.reason == errors.STALE_EPOCH
    assert node.ledger.fenced == {slot_of(a)}
    assert a in node.ledger.accounts
