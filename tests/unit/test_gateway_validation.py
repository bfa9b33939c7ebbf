"""Edge checks of the gateway: pure, one reason per refusal."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Callable

import grpc
import pytest

from gateway import validation
from shardbank import errors, ids, limits
from shardbank.identity import cn_check_digit
from shardbank.v1 import bank_pb2, ledger_pb2, types_pb2

_serials = itertools.count(1)


def resident_id(n: int | None = None) -> str:
    """A valid resident ID (Beijing, born 1990-01-..); same recipe as tests/factories.py."""
    serial = next(_serials) if n is None else n
    first17 = f"110105199001{(serial % 28) + 1:02d}{serial % 1000:03d}"
    return first17 + cn_check_digit(first17)


def mobile() -> str:
    return f"+86138{next(_serials) % 10**8:08d}"


ALICE = ids.new_account_id()
BOB = ids.new_account_id()
CASH = ids.system_account_id(1, "CNY")


def refused(call: Callable[[], object]) -> errors.BankError:
    with pytest.raises(errors.BankError) as caught:
        call()
    return caught.value


def transfer(**fields: object) -> types_pb2.Transfer:
    base: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "kind": types_pb2.TRANSFER_KIND_TRANSFER,
        "debit_account_id": ALICE,
        "credit_account_id": BOB,
        "amount": 100,
        "currency": "CNY",
    }
    base.update(fields)
    return types_pb2.Transfer(**base)  # type: ignore[arg-type]


def bad_luhn(account_id: int) -> int:
    last = account_id % 10
    return account_id - last + (last + 1) % 10


# Batches.


def test_batch_bounds() -> None:
    empty = refused(lambda: validation.check_batch([]))
    assert (empty.code, empty.reason) == (grpc.StatusCode.INVALID_ARGUMENT, errors.BATCH_EMPTY)
    big = refused(lambda: validation.check_batch([0] * (limits.BATCH_ITEMS_MAX + 1)))
    assert (big.code, big.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.BATCH_TOO_LARGE)
    validation.check_batch([0])
    validation.check_batch([0] * limits.BATCH_ITEMS_MAX)


# Transfers.


def test_valid_transfer_is_copied_clean_with_canonical_id() -> None:
    given = transfer(
        id=str(uuid.uuid4()).upper(), memo="rent", status=types_pb2.TRANSFER_STATUS_COMMITTED, code=9
    )
    clean = validation.check_transfer(given)
    assert clean.id == given.id.lower()
    assert clean.memo == "rent"
    assert clean.status == types_pb2.TRANSFER_STATUS_UNSPECIFIED
    assert clean.code == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": "not-a-uuid"}, errors.INVALID_TRANSFER_ID),
        ({"id": ""}, errors.INVALID_TRANSFER_ID),
        ({"id": uuid.uuid4().hex}, errors.INVALID_TRANSFER_ID),
        ({"kind": types_pb2.TRANSFER_KIND_UNSPECIFIED}, errors.INVALID_TRANSFER_KIND),
        ({"amount": 0}, errors.INVALID_AMOUNT),
        ({"amount": -5}, errors.INVALID_AMOUNT),
        ({"amount": 10**15 + 1}, errors.INVALID_AMOUNT),
        ({"currency": "XXX"}, errors.INVALID_CURRENCY),
        ({"currency": ""}, errors.INVALID_CURRENCY),
        ({"credit_account_id": ALICE}, errors.SAME_ACCOUNT),
        ({"credit_account_id": 1234567890123456}, errors.INVALID_ACCOUNT_ID),
        ({"debit_account_id": bad_luhn(ALICE)}, errors.INVALID_ACCOUNT_ID),
        ({"debit_account_id": 0}, errors.INVALID_ACCOUNT_ID),
        ({"debit_account_id": CASH}, errors.SYSTEM_ACCOUNT),
        ({"memo": "x" * (limits.MEMO_LENGTH_MAX + 1)}, errors.INVALID_ARGUMENT),
        ({"memo": "bell\x07"}, errors.INVALID_ARGUMENT),
        ({"memo": "bidi\u202eoverride"}, errors.INVALID_ARGUMENT),
        ({"reference": "r" * (limits.REFERENCE_LENGTH_MAX + 1)}, errors.INVALID_ARGUMENT),
    ],
)
def test_bad_transfer_items(fields: dict[str, object], reason: str) -> None:
    error = refused(lambda: validation.check_transfer(transfer(**fields)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reason


def test_limits_are_inclusive() -> None:
    validation.check_transfer(transfer(amount=10**15, memo="m" * limits.MEMO_LENGTH_MAX))
    validation.check_transfer(transfer(amount=1, reference="r" * limits.REFERENCE_LENGTH_MAX, memo="付款 ok"))


def test_deposit_and_withdrawal_leave_the_cash_side_to_the_node() -> None:
    deposit = transfer(kind=types_pb2.TRANSFER_KIND_DEPOSIT, debit_account_id=0, credit_account_id=ALICE)
    withdrawal = transfer(
        kind=types_pb2.TRANSFER_KIND_WITHDRAWAL, debit_account_id=ALICE, credit_account_id=0
    )
    validation.check_transfer(deposit)
    validation.check_transfer(withdrawal)
    named_cash = transfer(
        kind=types_pb2.TRANSFER_KIND_DEPOSIT, debit_account_id=CASH, credit_account_id=ALICE
    )
    assert refused(lambda: validation.check_transfer(named_cash)).reason == errors.INVALID_ACCOUNT_ID
    to_cash = transfer(kind=types_pb2.TRANSFER_KIND_DEPOSIT, debit_account_id=0, credit_account_id=CASH)
    assert refused(lambda: validation.check_transfer(to_cash)).reason == errors.SYSTEM_ACCOUNT
    no_customer = transfer(kind=types_pb2.TRANSFER_KIND_WITHDRAWAL, debit_account_id=0, credit_account_id=0)
    assert refused(lambda: validation.check_transfer(no_customer)).reason == errors.INVALID_ACCOUNT_ID


# Opening.


def opening(**holder_fields: object) -> bank_pb2.OpenAccountRequest:
    holder: dict[str, object] = {
        "name": "Li Lei",
        "id_type": types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID,
        "id_number": resident_id(),
        "phone": mobile(),
    }
    holder.update(holder_fields)
    return bank_pb2.OpenAccountRequest(
        currency="CNY",
        type=types_pb2.ACCOUNT_TYPE_PERSONAL,
        holder=types_pb2.Holder(**holder),  # type: ignore[arg-type]
    )


def test_opening_normalizes_phone_and_id_number() -> None:
    number = resident_id(9)
    item = opening(phone="+86 138-1234-5678", id_number=number.lower())
    account = validation.check_open(item)
    assert account.holder.phone == "+8613812345678"
    assert account.holder.id_number == number.upper()
    assert account.id == 0
    assert account.currency == "CNY"


def test_passport_holder() -> None:
    validation.check_open(opening(id_type=types_pb2.ID_DOCUMENT_TYPE_PASSPORT, id_number="E12345678"))


@pytest.mark.parametrize(
    ("holder", "reason"),
    [
        ({"name": ""}, errors.INVALID_NAME),
        ({"name": " Li"}, errors.INVALID_NAME),
        ({"name": "bad\x07name"}, errors.INVALID_NAME),
        ({"id_number": "110105199001010010"}, errors.INVALID_ID_NUMBER),
        ({"id_type": types_pb2.ID_DOCUMENT_TYPE_UNSPECIFIED}, errors.INVALID_ID_NUMBER),
        ({"id_type": types_pb2.ID_DOCUMENT_TYPE_PASSPORT, "id_number": "E1"}, errors.INVALID_ID_NUMBER),
        ({"phone": "13812345678"}, errors.INVALID_PHONE),
        ({"phone": "+8612812345678"}, errors.INVALID_PHONE),
        ({"customer_id": "c" * (limits.ACTOR_LENGTH_MAX + 1)}, errors.INVALID_ARGUMENT),
    ],
)
def test_bad_holder(holder: dict[str, object], reason: str) -> None:
    item = opening(**holder)
    if holder.get("id_number") == "110105199001010010":
        valid = resident_id(1)
        item.holder.id_number = valid[:17] + ("0" if valid[17] != "0" else "1")
    assert refused(lambda: validation.check_open(item)).reason == reason


def test_bad_opening_fields() -> None:
    item = opening()
    item.currency = "ABC"
    assert refused(lambda: validation.check_open(item)).reason == errors.INVALID_CURRENCY
    item = opening()
    item.type = types_pb2.ACCOUNT_TYPE_SYSTEM
    assert refused(lambda: validation.check_open(item)).reason == errors.INVALID_ACCOUNT_TYPE
    item.type = types_pb2.ACCOUNT_TYPE_UNSPECIFIED
    assert refused(lambda: validation.check_open(item)).reason == errors.INVALID_ACCOUNT_TYPE
    for overdraft in (-1, limits.OVERDRAFT_LIMIT_MAX_MINOR + 1):
        item = opening()
        item.overdraft_limit = overdraft
        assert (
            refused(functools.partial(validation.check_open, item)).reason == errors.INVALID_OVERDRAFT_LIMIT
        )
    item = opening()
    item.overdraft_limit = limits.OVERDRAFT_LIMIT_MAX_MINOR
    validation.check_open(item)


# Contacts, status, history.


def test_contact_updates() -> None:
    clean = validation.check_contact_update(
        ledger_pb2.ContactUpdate(account_id=ALICE, phone="+86 138 0000 0000")
    )
    assert clean.phone == "+8613800000000"
    validation.check_contact_update(ledger_pb2.ContactUpdate(account_id=ALICE, name="Han Meimei"))
    nothing = ledger_pb2.ContactUpdate(account_id=ALICE)
    assert refused(lambda: validation.check_contact_update(nothing)).reason == errors.INVALID_ARGUMENT
    bad_phone = ledger_pb2.ContactUpdate(account_id=ALICE, phone="12345")
    assert refused(lambda: validation.check_contact_update(bad_phone)).reason == errors.INVALID_PHONE
    bad_id = ledger_pb2.ContactUpdate(account_id=bad_luhn(ALICE), name="X")
    assert refused(lambda: validation.check_contact_update(bad_id)).reason == errors.INVALID_ACCOUNT_ID


def test_status_items() -> None:
    ok = ledger_pb2.StatusRequestItem(
        account_id=ALICE, action=ledger_pb2.STATUS_ACTION_FREEZE, reason="fraud"
    )
    assert validation.check_status_item(ok) == ok
    no_action = ledger_pb2.StatusRequestItem(account_id=ALICE, reason="x")
    assert refused(lambda: validation.check_status_item(no_action)).reason == errors.INVALID_ACTION
    for reason in ("", "r" * (limits.STATUS_REASON_LENGTH_MAX + 1), "line\nbreak"):
        item = ledger_pb2.StatusRequestItem(
            account_id=ALICE, action=ledger_pb2.STATUS_ACTION_CLOSE, reason=reason
        )
        assert refused(functools.partial(validation.check_status_item, item)).reason == errors.INVALID_REASON


def test_actor() -> None:
    validation.check_actor("")
    validation.check_actor("teller-7")
    assert (
        refused(lambda: validation.check_actor("a" * (limits.ACTOR_LENGTH_MAX + 1))).reason
        == "INVALID_ARGUMENT"
    )


def test_history_request() -> None:
    request = ledger_pb2.ListHistoryRequest(account_id=ALICE, page_size=limits.HISTORY_PAGE_SIZE_MAX)
    assert validation.check_history_request(request).page_size == limits.HISTORY_PAGE_SIZE_MAX
    validation.check_history_request(ledger_pb2.ListHistoryRequest(account_id=ALICE))
    too_big = ledger_pb2.ListHistoryRequest(account_id=ALICE, page_size=limits.HISTORY_PAGE_SIZE_MAX + 1)
    assert refused(lambda: validation.check_history_request(too_big)).reason == errors.INVALID_PAGE_SIZE
    bad_id = ledger_pb2.ListHistoryRequest(account_id=42)
    assert refused(lambda: validation.check_history_request(bad_id)).reason == errors.INVALID_ACCOUNT_ID
    long_token = ledger_pb2.ListHistoryRequest(account_id=ALICE, page_token="t" * 10_000)
    assert refused(lambda: validation.check_history_request(long_token)).reason == errors.INVALID_PAGE_TOKEN


def test_lookup_takes_system_accounts() -> None:
    validation.check_lookup_account_id(CASH)
    validation.check_lookup_account_id(ALICE)
    assert refused(lambda: validation.check_lookup_account_id(7)).reason == errors.INVALID_ACCOUNT_ID


@pytest.mark.parametrize("key", ["a", "order-42:retry.1_x", "k" * limits.IDEMPOTENCY_KEY_LENGTH_MAX])
def test_idempotency_key_accepted(key: str) -> None:
    item = opening()
    item.idempotency_key = key
    validation.check_open(item)


@pytest.mark.parametrize("key", ["has space", "é", "k" * (limits.IDEMPOTENCY_KEY_LENGTH_MAX + 1), "a\n", "/"])
def test_idempotency_key_refused(key: str) -> None:
    item = opening()
    item.idempotency_key = key
    error = refused(lambda: validation.check_open(item))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_IDEMPOTENCY_KEY)
