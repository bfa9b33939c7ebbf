"""Transfers to and from JSON without `json_format` for the common case.

`json_format.ParseDict` / `MessageToDict` walk descriptors in Python for
every field of every item: on the transfer routes they were most of the
edge's per-item cost (S5, a batch of 100 over HTTP, spent ~100 µs of gateway
CPU per transfer on JSON, against ~21 µs for a gRPC batch). A transfer has a
fixed, flat shape, so this module reads and writes it directly.

The fast reader is a *subset* of the generic one (`codec.parse_message`): it
takes only bodies whose every key is a known input field and every value is
of the plain type a client sends (strings, integers or decimal-digit strings
in range, an enum name), and answers None for anything else, so the caller
falls back to the generic parser. A refused body therefore always gets the
generic parser's exact error; an accepted one gives the same message the
generic parser would (`tests/unit/test_transfer_json.py` checks both).
The writer gives exactly `codec.to_json`'s dict for a transfer without a risk
assessment and defers to it otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor

from gateway.http import codec, limits
from shardbank.v1 import ledger_pb2, types_pb2

_TRANSFER = types_pb2.Transfer.DESCRIPTOR
_FIELD = descriptor.FieldDescriptor
_STRING_FIELDS = frozenset({"id", "currency", "memo", "reference"})
_ENUM_FIELDS = frozenset({"kind"})
# Field name -> (least, greatest) value of the integer input fields.
_INTEGER_RANGES: Mapping[str, tuple[int, int]] = {
    "debit_account_id": (0, 2**64 - 1),
    "credit_account_id": (0, 2**64 - 1),
    "amount": (-(2**63), 2**63 - 1),
}
# Longest decimal text taken on the fast path: a uint64 has 20 digits, an
# int64 19 and a sign; anything longer is out of range or the generic
# parser's to refuse.
_INTEGER_TEXT_LENGTH_MAX = 21
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_KIND_NUMBERS: Mapping[str, int] = {v.name: v.number for v in types_pb2.TransferKind.DESCRIPTOR.values}
_KIND_NAMES: Mapping[int, str] = {v.number: v.name for v in types_pb2.TransferKind.DESCRIPTOR.values}
_STATUS_NAMES: Mapping[int, str] = {v.number: v.name for v in types_pb2.TransferStatus.DESCRIPTOR.values}


def _json_keys(field_names: Iterable[str]) -> dict[str, str]:
    """JSON key (proto name and lowerCamel name) -> proto field name."""
    keys: dict[str, str] = {}
    for name in field_names:
        field = _TRANSFER.fields_by_name[name]
        keys[field.name] = field.name
        keys[field.json_name] = field.name
    return keys


def _integer(text_or_int: Any, name: str) -> int | None:
    least, greatest = _INTEGER_RANGES[name]
    if type(text_or_int) is int:  # not bool: the generic parser refuses true/false here
        value = text_or_int
    elif (
        type(text_or_int) is str
        and len(text_or_int) <= _INTEGER_TEXT_LENGTH_MAX
        and _INTEGER_TEXT.fullmatch(text_or_int)
    ):
        value = int(text_or_int)
    else:
        return None
    return value if least <= value <= greatest else None


class TransferReader:
    """The fast reader for one route's allowed fields (built once per route)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self._keys = _json_keys(allowed)

    def read(self, value: Any) -> types_pb2.Transfer | None:
        """The transfer, or None: not plain enough, use the generic parser."""
        if type(value) is not dict:
            return None
        fields: dict[str, Any] = {}
        for key, item in value.items():
            name = self._keys.get(key)
            if name is None or name in fields:  # unknown/not allowed, or given twice (id + camel)
                return None
            if name in _STRING_FIELDS:
                if type(item) is not str or len(item) > limits.STRING_LENGTH_MAX:
                    return None
                fields[name] = item
            elif name in _ENUM_FIELDS:
                number = _KIND_NUMBERS.get(item) if type(item) is str else None
                if number is None:
                    return None
                fields[name] = number
            else:
                number = _integer(item, name)
                if number is None:
                    return None
                fields[name] = number
        try:
            return types_pb2.Transfer(**fields)
        except (TypeError, ValueError):  # e.g. a lone surrogate: the generic parser words it
            return None


def transfer_json(transfer: types_pb2.Transfer) -> dict[str, Any]:
    """Exactly `codec.to_json(transfer)` (proto names, every field printed)."""
    if transfer.HasField("risk"):
        return codec.to_json(transfer)
    return {
        "id": transfer.id,
        "kind": _KIND_NAMES.get(transfer.kind, transfer.kind),
        "debit_account_id": str(transfer.debit_account_id),
        "credit_account_id": str(transfer.credit_account_id),
        "amount": str(transfer.amount),
        "currency": transfer.currency,
        "memo": transfer.memo,
        "reference": transfer.reference,
        "status": _STATUS_NAMES.get(transfer.status, transfer.status),
        "code": transfer.code,
        "reason": transfer.reason,
        "message": transfer.message,
        "created_at_unix_ms": str(transfer.created_at_unix_ms),
        "updated_at_unix_ms": str(transfer.updated_at_unix_ms),
        "cross_shard": transfer.cross_shard,
        "review_deadline_unix_ms": str(transfer.review_deadline_unix_ms),
    }


def transfers_json(reply: ledger_pb2.TransfersResponse) -> dict[str, Any]:
    """Exactly `codec.to_json(reply)` for a TransfersResponse."""
    return {"transfers": [transfer_json(t) for t in reply.transfers]}


def _check_shape() -> None:
    """The writer lists every Transfer field; a new one must be added here."""
    written = {f.name for f in _TRANSFER.fields} - {"risk"}
    listed = set(transfer_json(types_pb2.Transfer()))
    if written != listed:
        raise RuntimeError(f"transfer_json is out of date with Transfer: {sorted(written ^ listed)}")
    if _TRANSFER.fields_by_name["risk"].type != _FIELD.TYPE_MESSAGE:
        raise RuntimeError("Transfer.risk is expected to be a message")


_check_shape()
