"""Which stored data belongs to which slot, for slot moves (docs/moves.md).

A transfer record moves with the slot of the account that routes it: the
customer side of a deposit, else the debit account (the record holder); a
credit leg with its credit account. Cash (system) accounts never move.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shardbank import ids
from shardbank.slots import SLOT_COUNT, slot_of
from shardbank.v1 import ledger_pb2, types_pb2

_SLOT_BYTES = 2


def record_account(record: ledger_pb2.Leg) -> int:
    """The account whose slot a stored record or leg lives in."""
    transfer = record.transfer
    if record.role == types_pb2.LEG_ROLE_CREDIT or transfer.kind == types_pb2.TRANSFER_KIND_DEPOSIT:
        return transfer.credit_account_id
    return transfer.debit_account_id


def in_slots(account_id: int, slots: set[int] | frozenset[int]) -> bool:
    """A customer account in one of `slots` (cash accounts are in none)."""
    return bool(slots) and ids.is_customer_account_id(account_id) and slot_of(account_id) in slots


def encode_slots(slots: Iterable[int]) -> bytes:
    return b"".join(slot.to_bytes(_SLOT_BYTES, "big") for slot in sorted(set(slots)))


def decode_slots(data: bytes | None) -> set[int]:
    if not data:
        return set()
    if len(data) % _SLOT_BYTES:
        raise ValueError("slot set bytes are not whole slots")
    found = {int.from_bytes(data[i : i + _SLOT_BYTES], "big") for i in range(0, len(data), _SLOT_BYTES)}
    if any(slot >= SLOT_COUNT for slot in found):
        raise ValueError("slot set names a slot out of range")
    return found


@dataclass
class ReleasePlan:
    """What one ReleaseSlots call drops, chosen by the server from a scan
    (the slots are fenced or not owned, so nothing adds to them meanwhile)."""

    move_id: str
    slots: set[int]
    accounts: list[int] = field(default_factory=list)
    record_keys: list[bytes] = field(default_factory=list)
    history_keys: list[bytes] = field(default_factory=list)
    # Nothing of the slots is left after this: clear their marks too.
    done: bool = False
    # The mover's epoch (see ImportSlotsRequest.epoch).
    epoch: int = 0

    @property
    def items(self) -> list[object]:
        """What the writer counts toward a drain."""
        return [*self.accounts, *self.record_keys, *self.history_keys]
