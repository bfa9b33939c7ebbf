"""Where an item goes, and what a node's answer means for routing: pure.

`owner` is the slot map's lookup (account id -> shard id), passed in so these
decisions are testable without etcd.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc

from shardbank import errors, ids
from shardbank.v1 import ledger_pb2, types_pb2

Owner = Callable[[int], str]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_ABORTED = grpc.StatusCode.ABORTED.value[0]
_FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


@dataclass(frozen=True, order=True)
class Target:
    """A destination: one shard's LedgerNode, or the coordinator leader."""

    shard_id: str = ""

    @property
    def is_coordinator(self) -> bool:
        return self.shard_id == ""

    def __str__(self) -> str:
        return self.shard_id or "coordinator"


COORDINATOR = Target("")


def shard(shard_id: str) -> Target:
    if not shard_id:
        raise ValueError("a shard target needs a shard id")
    return Target(shard_id)


def system_account_shard(account_id: int) -> str:
    """The shard that owns a cash account: `shard_index * 1000 + ISO numeric`."""
    return f"shard-{account_id // 1000}"


def account_shard(account_id: int, owner: Owner) -> str:
    if ids.is_system_account_id(account_id):
        return system_account_shard(account_id)
    return owner(account_id)


def transfer_target(transfer: types_pb2.Transfer, owner: Owner) -> Target:
    """DEPOSIT -> owner of credit; WITHDRAWAL -> owner of debit; TRANSFER/PAYMENT ->
    the one shard that owns both accounts, else the coordinator (two-phase commit)."""
    if transfer.kind == types_pb2.TRANSFER_KIND_DEPOSIT:
        return shard(owner(transfer.credit_account_id))
    if transfer.kind == types_pb2.TRANSFER_KIND_WITHDRAWAL:
        return shard(owner(transfer.debit_account_id))
    debit_shard = owner(transfer.debit_account_id)
    credit_shard = owner(transfer.credit_account_id)
    return shard(debit_shard) if debit_shard == credit_shard else COORDINATOR


def record_holder(transfer: types_pb2.Transfer, owner: Owner) -> str:
    """The shard holding a transfer's record: the customer side of a deposit,
    else the debit account's shard (for two-phase commit, the debit leg)."""
    if transfer.kind == types_pb2.TRANSFER_KIND_DEPOSIT:
        return account_shard(transfer.credit_account_id, owner)
    return account_shard(transfer.debit_account_id, owner)


def pick_transfer(answers: Mapping[str, types_pb2.Transfer], owner: Owner) -> types_pb2.Transfer | None:
    """From each shard's answer to GetTransfers (found ones only), the one to believe:
    the record holder's, else a credit leg's (sorted by shard id for determinism)."""
    if not answers:
        return None
    for shard_id in sorted(answers):
        holder = record_holder(answers[shard_id], owner)
        if holder in answers:
            return answers[holder]
    # No record holder answered: prefer a final state over a PENDING leg.
    final = [answers[s] for s in sorted(answers) if answers[s].status != types_pb2.TRANSFER_STATUS_PENDING]
    return final[0] if final else answers[sorted(answers)[0]]


class Disposition(enum.Enum):
    """What the router does with one item's answer."""

    DONE = "done"
    # The slot map moved under us: refresh it and route the item again.
    MOVED = "moved"
    # The account id is taken: choose another and route again.
    RENEW = "renew"
    # The destination could not act now: back off and resend (same id).
    UNAVAILABLE = "unavailable"


def classify_outcome(code: int, reason: str) -> Disposition:
    if code == _ABORTED and reason == errors.SLOT_MOVED:
        return Disposition.MOVED
    if code == _FAILED_PRECONDITION and reason == errors.CROSS_SHARD:
        # Both accounts were on one shard by our map, not by the node's.
        return Disposition.MOVED
    if code == _UNAVAILABLE:
        return Disposition.UNAVAILABLE
    return Disposition.DONE


def classify_transfer(outcome: types_pb2.Transfer) -> Disposition:
    return classify_outcome(outcome.code, outcome.reason)


def classify_account(result: ledger_pb2.AccountResult) -> Disposition:
    if result.reason == errors.ACCOUNT_EXISTS:
        return Disposition.RENEW
    return classify_outcome(result.code, result.reason)


_FOUND_STATES = frozenset(
    {
        types_pb2.TRANSFER_STATUS_PENDING,
        types_pb2.TRANSFER_STATUS_COMMITTED,
        types_pb2.TRANSFER_STATUS_ABORTED,
    }
)


def is_found(answer: types_pb2.Transfer) -> bool:
    """Is a GetTransfers item a record or leg? A found one carries a state; its
    `code` is the transfer's own outcome (an ABORTED one may say NOT_FOUND about
    an account), so the code alone cannot tell."""
    return answer.status in _FOUND_STATES


def group(targets: list[Target | None]) -> dict[Target, list[int]]:
    """Indices per destination, in request order; None (unroutable now) left out."""
    groups: dict[Target, list[int]] = {}
    for index, target in enumerate(targets):
        if target is not None:
            groups.setdefault(target, []).append(index)
    return groups
