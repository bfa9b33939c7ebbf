"""Shape checks of a cross-shard transfer, again, at the coordinator.

The gateway checks the same things at the edge; the coordinator checks them
again because it is an internal service that any caller could reach, and a
malformed item must be REJECTED before it leaves a trace on any shard (the id
stays free). Business checks (funds, status, currency of the accounts) are the
nodes' job at prepare.
"""

from __future__ import annotations

from shardbank import errors, ids, transfer_checks
from shardbank.v1 import types_pb2

CROSS_SHARD_KINDS = (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT)


def check_transfer(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """A clean copy of the item's input fields, or raises BankError (INVALID_ARGUMENT).

    Output fields (status, code, timestamps…) are dropped so that they can
    never leak into a node's body comparison.
    """
    ids.normalize_transfer_id(transfer.id)
    if transfer.kind not in CROSS_SHARD_KINDS:
        raise errors.invalid(errors.INVALID_TRANSFER_KIND, "the coordinator takes TRANSFER or PAYMENT only")
    clean = transfer_checks.check_transfer(transfer)
    clean.cross_shard = True
    # The gateway's risk decision travels with the transfer to the record
    # holder, which stores it (calls here carry a service token).
    if transfer.HasField("risk"):
        clean.risk.CopyFrom(transfer.risk)
    clean.review_deadline_unix_ms = transfer.review_deadline_unix_ms
    return clean
