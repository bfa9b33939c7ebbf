"""Money: ISO-4217 currencies and exact decimal <-> minor-unit conversion.

Amounts are int64 minor units everywhere; the decimal text form (`100.50`)
exists only at the human edge (CLI, reports) and is converted with integer
arithmetic, never floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardbank import errors

# Largest amount one transfer may move, in minor units (10^15 fen = 10 trillion
# CNY). Keeps every sum of a batch far from int64 overflow.
AMOUNT_MAX_MINOR = 10**15
# Largest balance an account may reach; beyond it a credit is refused.
BALANCE_MAX_MINOR = 2**62


@dataclass(frozen=True)
class Currency:
    code: str
    numeric: int
    exponent: int


_TABLE = """
AED 784 2; AUD 036 2; BDT 050 2; BHD 048 3; BRL 986 2; CAD 124 2; CHF 756 2;
CLP 152 0; CNY 156 2; CZK 203 2; DKK 208 2; EGP 818 2; EUR 978 2; GBP 826 2;
HKD 344 2; HUF 348 2; IDR 360 2; ILS 376 2; INR 356 2; IQD 368 3; ISK 352 0;
JOD 400 3; JPY 392 0; KRW 410 0; KWD 414 3; KZT 398 2; LKR 144 2; LYD 434 3;
MNT 496 2; MOP 446 2; MXN 484 2; MYR 458 2; NGN 566 2; NOK 578 2; NZD 554 2;
OMR 512 3; PHP 608 2; PKR 586 2; PLN 985 2; RUB 643 2; SAR 682 2; SEK 752 2;
SGD 702 2; THB 764 2; TND 788 3; TRY 949 2; TWD 901 2; UGX 800 0; USD 840 2;
VND 704 0; ZAR 710 2
"""

CURRENCIES: dict[str, Currency] = {}
for _item in _TABLE.replace("\n", " ").split(";"):
    _code, _numeric, _exponent = _item.split()
    CURRENCIES[_code] = Currency(_code, int(_numeric), int(_exponent))

_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,17})(?:\.([0-9]{1,18}))?$")


def currency(code: str) -> Currency:
    """The currency for an ISO-4217 alphabetic code, or INVALID_CURRENCY."""
    found = CURRENCIES.get(code)
    if found is None:
        raise errors.invalid(errors.INVALID_CURRENCY, f"unknown currency code {code[:8]!r}")
    return found


def parse_amount(text: str, currency_code: str) -> int:
    """Exact minor units from a decimal in major units ('100.50' CNY -> 10050).

    More decimal places than the currency has is an error, not a rounding.
    """
    cur = currency(currency_code)
    match = _DECIMAL.match(text.strip())
    if match is None:
        raise errors.invalid(errors.INVALID_AMOUNT, f"not a plain positive decimal: {text[:40]!r}")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > cur.exponent:
        raise errors.invalid(
            errors.INVALID_AMOUNT, f"{cur.code} has {cur.exponent} decimal places, got {len(fraction)}"
        )
    minor: int = int(whole) * 10**cur.exponent + int(fraction.ljust(cur.exponent, "0") or "0")
    check_amount(minor)
    return minor


def check_amount(minor: int) -> None:
    if minor < 1 or minor > AMOUNT_MAX_MINOR:
        raise errors.invalid(errors.INVALID_AMOUNT, f"amount must be 1..{AMOUNT_MAX_MINOR} minor units")


def format_amount(minor: int, currency_code: str) -> str:
    """'100.50' from 10050 CNY; exact, sign kept."""
    cur = CURRENCIES.get(currency_code)
    exponent = cur.exponent if cur else 2
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}" if exponent else f"{sign}{whole}"
