"""Holder details: CN resident ID (check digit, birth date), passports,
E.164 phones, names, masking."""

from __future__ import annotations

import datetime as dt

import pytest

from shardbank import errors, identity

TODAY = dt.date(2026, 1, 1)


@pytest.mark.parametrize(
    "number",
    [
        "11010519491231002X",  # the standard's example: check character X
        "110105199001010010",
        "44030820000229001X",  # born on a leap day
    ],
)
def test_cn_resident_id_valid(number: str) -> None:
    assert identity.cn_check_digit(number[:17]) == number[17]
    identity.check_cn_resident_id(number, today=TODAY)


def test_check_digit_known_value() -> None:
    assert identity.cn_check_digit("11010519491231002") == "X"
    assert identity.cn_check_digit("11010519900101001") == "0"  # 122 % 11 = 1 -> "0"


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("110105194912310021", "check digit"),
        ("11010519491231002x", "lowercase x is not the check character"),
        ("11010519491231002", "17 characters"),
        ("011010519491231002X", "19 characters"),
        ("010105194912310029", "leading zero"),
        ("110105190002290019", "1900 was not a leap year"),
        ("110105199013010010", "month 13"),
        ("110105189912310011", "born before 1900"),
        ("110105203001010010", "born in the future"),
        ("11010519491231002X\n", "trailing newline"),
        ("1101051949123100２X", "full-width digit"),
    ],
)
def test_cn_resident_id_refused(number: str, why: str) -> None:
    with pytest.raises(errors.BankError) as caught:
        identity.check_cn_resident_id(number, today=TODAY)
    assert caught.value.reason == errors.INVALID_ID_NUMBER, why


def test_every_wrong_check_character_is_refused() -> None:
    first17 = "11010519900101001"
    for wrong in "0123456789X":
        if wrong != identity.cn_check_digit(first17):
            with pytest.raises(errors.BankError):
                identity.check_cn_resident_id(first17 + wrong, today=TODAY)


VALID_PHONES = ["+8613812345678", "+8619912345678", "+12025550123", "+447911123456", "+1234567"]


@pytest.mark.parametrize("phone", VALID_PHONES)
def test_phone_valid(phone: str) -> None:
    identity.check_phone(phone)


@pytest.mark.parametrize(
    "phone",
    [
        "13812345678",  # no country code
        "+86 13812345678",  # spaces (normalize first)
        "+8612812345678",  # mainland mobile must start 13-19
        "+861381234567",  # one digit short
        "+0123456789",
        "+123456",  # too short
        "+1234567890123456",  # 16 digits: beyond E.164
        "+8613812345678\n",
        "",
    ],
)
def test_phone_refused(phone: str) -> None:
    with pytest.raises(errors.BankError) as caught:
        identity.check_phone(phone)
    assert caught.value.reason == errors.INVALID_PHONE


def test_normalize_phone() -> None:
    assert identity.normalize_phone("+86 138-1234-5678") == "+8613812345678"


def test_passport() -> None:
    identity.check_passport("E12345678")
    for bad in ["e12345678", "E123", "E12345678\n", "E-12345", "A" * 21]:
        with pytest.raises(errors.BankError):
            identity.check_passport(bad)


def test_names() -> None:
    identity.check_name("张三")
    identity.check_name("Li Lei")
    for bad in ["", " Li", "Li ", "Li\nLei", "Li\u200bLei", "x" * 101]:
        with pytest.raises(errors.BankError):
            identity.check_name(bad)


def test_masking() -> None:
    assert identity.mask_id_number("11010519491231002X") == "110***********002X"
    assert identity.mask_phone("+8613812345678") == "+86 138****5678"
    assert identity.mask_phone("+12025550123").endswith("0123")
    assert "2025550" not in identity.mask_phone("+12025550123")
