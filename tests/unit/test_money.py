"""Exact decimal <-> minor-unit conversion: no floats, no rounding."""

from __future__ import annotations

import pytest

from shardbank import errors, money


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("100.50", "CNY", 10050),
        ("100.5", "CNY", 10050),
        ("100", "CNY", 10000),
        ("0.01", "CNY", 1),
        (" 7.00 ", "CNY", 700),
        ("0.1", "CNY", 10),  # 0.1 is not exact in binary floating point; here it is
        ("1.10", "USD", 110),
        ("500", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("10000000000000.00", "CNY", money.AMOUNT_MAX_MINOR),
    ],
)
def test_parse_amount_exact(text: str, currency: str, minor: int) -> None:
    assert money.parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    "text",
    [
        "1.001",  # a third decimal place for CNY
        "0.005",
        "0",
        "0.00",
        "-1",
        "-0.01",
        "+1",
        "1e3",
        "1,000.00",
        "１２",  # full-width digits
        "١٢٣",  # Arabic-Indic digits
        "1.",
        ".5",
        "01",
        "abc",
        "",
        "NaN",
        "inf",
        "1.0\n1",
        "10000000000000.01",  # one fen above the limit
        "9" * 18,
        "9" * 30,
    ],
)
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(errors.BankError) as caught:
        money.parse_amount(text, "CNY")
    assert caught.value.reason == errors.INVALID_AMOUNT


def test_too_many_decimals_message_is_clear() -> None:
    with pytest.raises(errors.BankError) as caught:
        money.parse_amount("1.001", "CNY")
    assert "2 decimal places" in caught.value.message


def test_zero_decimal_currency_refuses_any_fraction() -> None:
    with pytest.raises(errors.BankError):
        money.parse_amount("1.0", "JPY")


def test_unknown_currency() -> None:
    with pytest.raises(errors.BankError) as caught:
        money.parse_amount("1", "XXX")
    assert caught.value.reason == errors.INVALID_CURRENCY


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (10050, "CNY", "100.50"),
        (1, "CNY", "0.01"),
        (0, "CNY", "0.00"),
        (-10050, "CNY", "-100.50"),
        (-1, "CNY", "-0.01"),
        (500, "JPY", "500"),
        (1234, "KWD", "1.234"),
        (2**62, "CNY", "46116860184273879.04"),
    ],
)
def test_format_amount(minor: int, currency: str, text: str) -> None:
    assert money.format_amount(minor, currency) == text


@pytest.mark.parametrize("minor", [1, 9, 10, 99, 100, 10050, 123456789, money.AMOUNT_MAX_MINOR])
@pytest.mark.parametrize("currency", ["CNY", "JPY", "KWD"])
def test_round_trip(minor: int, currency: str) -> None:
    assert money.parse_amount(money.format_amount(minor, currency), currency) == minor


def test_currency_table() -> None:
    assert money.currency("CNY") == money.Currency("CNY", 156, 2)
    numerics = [c.numeric for c in money.CURRENCIES.values()]
    assert len(numerics) == len(set(numerics))
