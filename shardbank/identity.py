"""Checks and masking of holder details (names, ID documents, phones).

These run at the node (the last line of defence) and at the edge; they are
pure so both can share them. Masking keeps full ID numbers out of logs.
Patterns are applied with `fullmatch`: `re.match` with `$` would accept a
value with a trailing newline ("+8613812345678\n").
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

import pycountry

from shardbank import errors

NAME_LENGTH_MAX = 100
PASSPORT_LENGTH_MIN = 5
PASSPORT_LENGTH_MAX = 20

_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"
_CN_ID = re.compile(r"^[1-9][0-9]{16}[0-9X]$")
_PASSPORT = re.compile(r"^[A-Z0-9]{5,20}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_CN_MOBILE = re.compile(r"^\+861[3-9][0-9]{9}$")
_ALPHA_2 = re.compile(r"[A-Z]{2}")
# A holder without a country is a mainland holder (the bank's home country).
HOME_COUNTRY = "CN"
# Assigned ISO 3166-1 alpha-2 codes, from pycountry (Debian's iso-codes): a
# list kept up to date by others beats one typed here.
COUNTRY_CODES = frozenset(country.alpha_2 for country in pycountry.countries)


def cn_check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _CN_WEIGHTS, strict=True))
    return _CN_CHECK[total % 11]


def check_cn_resident_id(number: str, today: dt.date | None = None) -> None:
    if not _CN_ID.fullmatch(number):
        raise errors.invalid(errors.INVALID_ID_NUMBER, "resident ID must be 17 digits and a digit or X")
    try:
        born = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise errors.invalid(errors.INVALID_ID_NUMBER, "resident ID has no real birth date") from None
    today = today or dt.date.today()
    if born > today or born.year < 1900:
        raise errors.invalid(errors.INVALID_ID_NUMBER, "resident ID birth date out of range")
    if cn_check_digit(number[:17]) != number[17]:
        raise errors.invalid(errors.INVALID_ID_NUMBER, "resident ID check digit is wrong")


def check_passport(number: str) -> None:
    if not _PASSPORT.fullmatch(number):
        raise errors.invalid(errors.INVALID_ID_NUMBER, "passport number must be 5-20 of A-Z and 0-9")


def check_name(name: str) -> None:
    if not 1 <= len(name) <= NAME_LENGTH_MAX or name.strip() != name or not name:
        raise errors.invalid(
            errors.INVALID_NAME, f"name must be 1-{NAME_LENGTH_MAX} characters, no edge spaces"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in name):
        raise errors.invalid(errors.INVALID_NAME, "name contains control characters")


def check_phone(phone: str) -> None:
    if not _E164.fullmatch(phone):
        raise errors.invalid(errors.INVALID_PHONE, "phone must be E.164, e.g. +8613812345678")
    if phone.startswith("+86") and not _CN_MOBILE.fullmatch(phone):
        raise errors.invalid(errors.INVALID_PHONE, "mainland mobile must be +86 1[3-9] and 9 digits")


def check_country(country: str) -> None:
    """Empty (means HOME_COUNTRY) or an assigned ISO 3166-1 alpha-2 code, uppercase."""
    if country and not (_ALPHA_2.fullmatch(country) and country in COUNTRY_CODES):
        raise errors.invalid(
            errors.INVALID_COUNTRY, "country must be an ISO 3166-1 alpha-2 code, e.g. CN, US, HK"
        )


def country_of(country: str) -> str:
    """The holder's country with the default applied."""
    return country or HOME_COUNTRY


def normalize_phone(phone: str) -> str:
    """Drop the spaces and dashes people type ('+86 138-1234-5678')."""
    return re.sub(r"[\s-]", "", phone)


def mask_id_number(number: str) -> str:
    """'110***********1234': keep 3 leading and 4 trailing characters."""
    if len(number) <= 7:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


def mask_phone(phone: str) -> str:
    """'+86 138****5678' for mainland mobiles; otherwise keep the last 4."""
    if _CN_MOBILE.fullmatch(phone):
        return f"+86 {phone[3:6]}****{phone[-4:]}"
    if len(phone) <= 4:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:] if len(phone) > 7 else "****" + phone[-4:]
