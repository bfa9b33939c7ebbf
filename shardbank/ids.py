"""Account and transfer identifiers.

Customer account ids are 16 decimal digits (10^15 .. 10^16-1) whose last digit
is a Luhn check digit, so a mistyped id is refused at the edge instead of
reaching someone else's account. System (cash) accounts are below 10^15 and
encode the shard and the currency: shard_index * 1000 + ISO numeric code.
Transfer ids are client-chosen UUIDs, stored in canonical lowercase form.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import uuid

from shardbank import errors
from shardbank.money import CURRENCIES, currency

CUSTOMER_ID_MIN = 10**15
CUSTOMER_ID_MAX = 10**16 - 1
TRANSFER_ID_LENGTH_MAX = 36


# Luhn doubles every second digit from the right and adds the digits of the
# product (5 -> 10 -> 1), so each ASCII digit maps to one value: two tables.
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))
_LUHN_PLAIN = bytes.maketrans(b"0123456789", bytes(range(10)))
# Distinct account ids whose check is remembered. A workload touches the same
# accounts again and again; 65 536 ints and bools are a few MiB.
ACCOUNT_ID_CHECKS_CACHED_MAX = 65_536


def luhn_digit(payload: str) -> int:
    """The check digit for `payload` (ASCII digits, else ValueError). Every
    cross-shard leg checks an account id of another shard, so this is on the
    hot path: two byte translations and C-level sums, no loop per digit."""
    if payload.strip("0123456789"):
        raise ValueError(f"not a string of digits: {payload!r}")
    backwards = payload.encode()[::-1]
    total = sum(backwards[::2].translate(_LUHN_DOUBLED)) + sum(backwards[1::2].translate(_LUHN_PLAIN))
    return (10 - total % 10) % 10


def new_account_id() -> int:
    return _account_id(secrets.randbelow(_ACCOUNT_PAYLOADS))


def account_id_for_key(scope: str, idempotency_key: str) -> int:
    """The account id an opening with this idempotency key gets: the same for
    every retry, so the node's "same id, same body -> the first outcome"
    makes the opening idempotent. `scope` (the caller's API key id) keeps two
    callers' keys apart. A keyed hash, so ids stay spread over the slots."""
    digest = hashlib.blake2b(
        idempotency_key.encode(), key=scope.encode()[:64], person=b"sb-open-account", digest_size=16
    ).digest()
    return _account_id(int.from_bytes(digest, "big") % _ACCOUNT_PAYLOADS)


# 15-digit payloads not starting with 0, then the Luhn digit: 16 digits.
_ACCOUNT_PAYLOADS = 9 * CUSTOMER_ID_MIN // 10


def _account_id(offset: int) -> int:
    payload = str(CUSTOMER_ID_MIN // 10 + offset)
    return int(payload + str(luhn_digit(payload)))


@functools.lru_cache(maxsize=ACCOUNT_ID_CHECKS_CACHED_MAX)
def is_customer_account_id(account_id: int) -> bool:
    """16 digits with a valid Luhn check digit. Pure, so cached: the gateway,
    the coordinator and both 2PC legs check the same ids over and over."""
    if not CUSTOMER_ID_MIN <= account_id <= CUSTOMER_ID_MAX:
        return False
    text = str(account_id)
    return luhn_digit(text[:-1]) == int(text[-1])


def system_account_id(shard_index: int, currency_code: str) -> int:
    return shard_index * 1000 + currency(currency_code).numeric


def is_system_account_id(account_id: int) -> bool:
    return 1000 <= account_id < CUSTOMER_ID_MIN


def system_account_currency(account_id: int) -> str | None:
    numeric = account_id % 1000
    for cur in CURRENCIES.values():
        if cur.numeric == numeric:
            return cur.code
    return None


def check_account_id(account_id: int) -> None:
    if not (is_customer_account_id(account_id) or is_system_account_id(account_id)):
        raise errors.invalid(
            errors.INVALID_ACCOUNT_ID, "account id is not 16 digits with a valid check digit"
        )


def parse_account_id(text: str) -> int:
    text = text.strip()
    # isascii: str.isdigit() is also true for '²' and other non-ASCII digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 16:
        raise errors.invalid(errors.INVALID_ACCOUNT_ID, "account id must be up to 16 digits")
    value = int(text)
    check_account_id(value)
    return value


def new_transfer_id() -> str:
    return str(uuid.uuid4())


# Exactly the texts the checks below accept: 8-4-4-4-12 hex digits, any case.
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def normalize_transfer_id(text: str) -> str:
    """Canonical lowercase UUID text, or INVALID_TRANSFER_ID."""
    if _UUID_TEXT.fullmatch(text):  # the common case, without building a UUID
        return text.lower()
    if not text or len(text) > TRANSFER_ID_LENGTH_MAX:
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "transfer id must be a UUID")
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "transfer id must be a UUID") from None
    canonical = str(parsed)
    if canonical != text.lower():
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "transfer id must be a UUID in 8-4-4-4-12 form")
    return canonical
