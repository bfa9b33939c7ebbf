"""The fast transfer reader/writer against the generic proto3 JSON codec.

The reader may only take a subset of what `codec.parse_message` takes, and
must build the same message for it; everything else must come back None so
the generic parser (and its exact error) decides. The writer must give
exactly `codec.to_json`.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http import codec, limits
from gateway.http.handlers import BATCH_ITEM_INPUT_FIELDS, TRANSFER_INPUT_FIELDS
from gateway.http.transfer_json import TransferReader, transfer_json, transfers_json
from shardbank import errors
from shardbank.v1 import ledger_pb2, types_pb2

SINGLE = TransferReader(TRANSFER_INPUT_FIELDS)
BATCH_ITEM = TransferReader(BATCH_ITEM_INPUT_FIELDS)

PLAIN = {
    "id": "0b6f1c1e-6a57-4c8e-9d0a-3f6c2b1d9e42",
    "debit_account_id": "6222020000000015",
    "credit_account_id": 6222020000000023,
    "amount": "10050",
    "currency": "CNY",
    "memo": "rent",
    "reference": "",
}

# Values a client might send for any field: plain ones and the awkward ones
# (wrong types, bools, floats, null, out of range, odd digits, long text).
AWKWARD = [
    "",
    "x",
    "CNY",
    "10050",
    "-1",
    "007",
    "+5",
    "1e3",
    "1_000",
    "١٠٠",
    " 5",
    "5 ",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "0" * 25 + "1",
    "\ud800",
    "é" * 10,
    "x" * limits.STRING_LENGTH_MAX,
    "x" * (limits.STRING_LENGTH_MAX + 1),
    "TRANSFER_KIND_DEPOSIT",
    "TRANSFER_KIND_UNSPECIFIED",
    "TRANSFER_KIND_NOPE",
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    True,
    False,
    None,
    1.0,
    1.5,
    [],
    {},
    ["x"],
]
KEYS = [
    "id",
    "kind",
    "debit_account_id",
    "debitAccountId",
    "credit_account_id",
    "creditAccountId",
    "amount",
    "currency",
    "memo",
    "reference",
    "status",
    "code",
    "risk",
    "unknown",
]


def generic(body: Any, allowed: tuple[str, ...]) -> types_pb2.Transfer | errors.BankError:
    try:
        return codec.parse_message(body, types_pb2.Transfer(), allowed)
    except errors.BankError as error:
        return error


def check_agrees(body: Any, reader: TransferReader, allowed: tuple[str, ...]) -> types_pb2.Transfer | None:
    fast = reader.read(body)
    if fast is not None:
        slow = generic(body, allowed)
        assert isinstance(slow, types_pb2.Transfer), (body, slow)
        assert fast == slow, body
    return fast


def test_a_plain_body_takes_the_fast_path_and_equals_the_generic_parse() -> None:
    fast = check_agrees(PLAIN, SINGLE, TRANSFER_INPUT_FIELDS)
    assert fast is not None
    assert fast.amount == 10050
    assert fast.credit_account_id == 6222020000000023


@pytest.mark.parametrize(
    "body",
    [
        {**PLAIN, "kind": "TRANSFER_KIND_DEPOSIT"},  # kind is the route's on single routes
        {**PLAIN, "status": "TRANSFER_STATUS_COMMITTED"},
        {**PLAIN, "amount": True},
        {**PLAIN, "amount": 100.0},
        {**PLAIN, "amount": "1e3"},
        {**PLAIN, "amount": "9223372036854775808"},
        {**PLAIN, "debit_account_id": "-1"},
        {**PLAIN, "memo": None},
        {**PLAIN, "memo": "x" * (limits.STRING_LENGTH_MAX + 1)},
        {**PLAIN, "debitAccountId": "6222020000000015"},  # both spellings of one field
        {**PLAIN, "id": "\ud800"},
        ["not", "an", "object"],
    ],
)
def test_anything_unusual_is_left_to_the_generic_parser(body: Any) -> None:
    assert SINGLE.read(body) is None


def test_batch_items_may_name_their_kind() -> None:
    fast = check_agrees({**PLAIN, "kind": "TRANSFER_KIND_PAYMENT"}, BATCH_ITEM, BATCH_ITEM_INPUT_FIELDS)
    assert fast is not None and fast.kind == types_pb2.TRANSFER_KIND_PAYMENT
    assert BATCH_ITEM.read({**PLAIN, "kind": 4}) is None  # numbers are the generic parser's


@pytest.mark.parametrize("key", KEYS)
def test_every_awkward_value_in_every_field_agrees_with_the_generic_parser(key: str) -> None:
    for value in AWKWARD:
        check_agrees({**PLAIN, key: value}, SINGLE, TRANSFER_INPUT_FIELDS)
        check_agrees({**PLAIN, key: value}, BATCH_ITEM, BATCH_ITEM_INPUT_FIELDS)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(AWKWARD), max_size=6))
def test_fast_reader_never_takes_what_the_generic_parser_refuses_or_reads_differently(
    body: dict[str, Any],
) -> None:
    check_agrees(body, SINGLE, TRANSFER_INPUT_FIELDS)
    check_agrees(body, BATCH_ITEM, BATCH_ITEM_INPUT_FIELDS)


transfers = st.builds(
    types_pb2.Transfer,
    id=st.text(max_size=40),
    kind=st.integers(0, 6),
    debit_account_id=st.integers(0, 2**64 - 1),
    credit_account_id=st.integers(0, 2**64 - 1),
    amount=st.integers(-(2**63), 2**63 - 1),
    currency=st.text(max_size=3),
    memo=st.text(max_size=20),
    status=st.integers(0, 7),
    code=st.integers(0, 2**32 - 1),
    reason=st.text(max_size=20),
    created_at_unix_ms=st.integers(-(2**63), 2**63 - 1),
    cross_shard=st.booleans(),
    review_deadline_unix_ms=st.integers(0, 2**63 - 1),
)


@settings(max_examples=300, deadline=None)
@given(transfers)
def test_writer_equals_message_to_dict(transfer: types_pb2.Transfer) -> None:
    assert transfer_json(transfer) == codec.to_json(transfer)


def test_writer_with_a_risk_assessment_and_a_reply() -> None:
    held = types_pb2.Transfer(
        id="t", risk=types_pb2.RiskAssessment(decision=types_pb2.RISK_DECISION_REVIEW, rules=["big"])
    )
    assert transfer_json(held) == codec.to_json(held)
    reply = ledger_pb2.TransfersResponse(transfers=[held, types_pb2.Transfer(id="u")])
    assert transfers_json(reply) == codec.to_json(reply)
    assert transfers_json(ledger_pb2.TransfersResponse()) == codec.to_json(ledger_pb2.TransfersResponse())
