"""Account ids (16 digits, Luhn) and transfer ids (canonical UUIDs)."""

from __future__ import annotations

import random
import uuid

import pytest

from shardbank import errors, ids

# Known Luhn-valid numbers (public test card numbers have 16 digits too).
VALID = [4532015112830366, 4111111111111111, 6222020000000007, 1000000000000008]


@pytest.mark.parametrize("account_id", VALID)
def test_luhn_valid(account_id: int) -> None:
    assert ids.is_customer_account_id(account_id)
    ids.check_account_id(account_id)


@pytest.mark.parametrize("account_id", VALID)
def test_every_single_digit_typo_is_caught(account_id: int) -> None:
    text = str(account_id)
    for position in range(len(text)):
        for digit in "0123456789":
            if digit == text[position] or (position == 0 and digit == "0"):
                continue
            typo = int(text[:position] + digit + text[position + 1 :])
            assert not ids.is_customer_account_id(typo), typo


def test_adjacent_transposition_is_caught() -> None:
    text = "4532015112830366"
    swapped = text[:2] + text[3] + text[2] + text[4:]
    assert swapped != text
    assert not ids.is_customer_account_id(int(swapped))


def test_luhn_digit_known_values() -> None:
    assert ids.luhn_digit("7992739871") == 3  # the textbook example 79927398713
    assert ids.luhn_digit("453201511283036") == 6


def test_new_account_ids_are_valid_16_digit_numbers() -> None:
    for _ in range(1000):
        account_id = ids.new_account_id()
        assert len(str(account_id)) == 16
        assert ids.is_customer_account_id(account_id)


def test_keyed_account_ids_are_stable_valid_and_scoped() -> None:
    keyed = ids.account_id_for_key("key-a", "open-1")
    assert keyed == ids.account_id_for_key("key-a", "open-1"), "a retry must get the same id"
    assert len(str(keyed)) == 16 and ids.is_customer_account_id(keyed)
    assert keyed != ids.account_id_for_key("key-b", "open-1"), "another caller's key is another account"
    assert keyed != ids.account_id_for_key("key-a", "open-2")
    spread = {ids.account_id_for_key("key-a", f"k{i}") for i in range(2000)}
    assert len(spread) == 2000 and all(ids.is_customer_account_id(a) for a in spread)
    # The ids spread over the slots like random ones (placement is by hash of the id).
    assert len({str(a)[:2] for a in spread}) == 90


def test_out_of_range_is_not_a_customer_id() -> None:
    assert not ids.is_customer_account_id(ids.CUSTOMER_ID_MIN - 1)
    assert not ids.is_customer_account_id(10**16 + 6)


def test_system_account_ids() -> None:
    assert ids.system_account_id(2, "CNY") == 2156
    assert ids.system_account_id(1, "USD") == 1840
    assert ids.is_system_account_id(2156)
    assert not ids.is_customer_account_id(2156)
    assert ids.system_account_currency(2156) == "CNY"
    assert ids.system_account_currency(1999) is None
    ids.check_account_id(2156)


@pytest.mark.parametrize("text", ["4532015112830366", " 4532015112830366 ", "2156"])
def test_parse_account_id(text: str) -> None:
    assert ids.parse_account_id(text) == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "4532015112830367",  # wrong check digit
        "45320151128303660",  # 17 digits
        "",
        "abc",
        "-4532015112830366",
        "4532 0151 1283 0366",
        "12",  # below the system range
        "²",  # str.isdigit() is true for it; int() is not
        "４５３２０１５１１２８３０３６６",  # full-width digits
    ],
)
def test_parse_account_id_refuses(text: str) -> None:
    with pytest.raises(errors.BankError) as caught:
        ids.parse_account_id(text)
    assert caught.value.reason == errors.INVALID_ACCOUNT_ID


def test_transfer_ids() -> None:
    fresh = ids.new_transfer_id()
    assert str(uuid.UUID(fresh)) == fresh
    upper = "6F9619FF-8B86-4011-B42D-00C04FC964FF"
    assert ids.normalize_transfer_id(upper) == upper.lower()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        "6f9619ff8b864011b42d00c04fc964ff",  # no dashes
        "{6f9619ff-8b86-4011-b42d-00c04fc964ff}",
        "urn:uuid:6f9619ff-8b86-4011-b42d-00c04fc964ff",
        "6f9619ff-8b86-4011-b42d-00c04fc964ff0",
    ],
)
def test_transfer_id_refuses(text: str) -> None:
    with pytest.raises(errors.BankError) as caught:
        ids.normalize_transfer_id(text)
    assert caught.value.reason == errors.INVALID_TRANSFER_ID


def _luhn_digit_by_the_book(payload: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def test_luhn_digit_matches_the_textbook_loop() -> None:
    # The table-driven luhn_digit against the plain definition, on every
    # single digit, both parities of length, and random 15-digit payloads.
    payloads = [str(d) for d in range(10)] + [str(d) * n for d in range(10) for n in (2, 3, 14, 15)]
    rng = random.Random(5)
    payloads += [str(rng.randrange(10**14, 10**15)) for _ in range(2000)]
    for payload in payloads:
        assert ids.luhn_digit(payload) == _luhn_digit_by_the_book(payload), payload


def test_luhn_digit_refuses_what_is_not_ascii_digits() -> None:
    for payload in ("12a4", "١٢٣", "12 3", "-123"):
        with pytest.raises(ValueError):
            ids.luhn_digit(payload)
    assert ids.luhn_digit("") == 0
