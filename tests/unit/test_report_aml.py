"""Large-value thresholds (single vs cumulative, per category and currency,
at the threshold and one minor unit below), the suspicious list, the report
day in its time zone, and the CSV fields."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools

import pytest

from clients.reports import aml, day, output
from clients.reports.model import (
    BUSINESS,
    DEPOSIT,
    PAYMENT,
    PERSONAL,
    SYSTEM,
    TRANSFER,
    WITHDRAWAL,
    DayTransfer,
    Party,
)

WINDOW = day.day_window(dt.date(2026, 11, 24), "Asia/Shanghai")
NOON_MS = WINDOW.start_ms + 12 * 3_600_000
_ids = itertools.count(1)

CASH = Party(9_156, SYSTEM, "CNY")


def person(name: str, country: str = "", currency: str = "CNY", customer: str = "") -> Party:
    return Party(
        6_000_000_000_000_000 + next(_ids),
        PERSONAL,
        currency,
        customer or name,
        name,
        1,
        f"11010519900101{next(_ids):04d}",
        country,
    )


def business(name: str, currency: str = "CNY") -> Party:
    return Party(
        7_000_000_000_000_000 + next(_ids), BUSINESS, currency, name, name, 2, f"B{next(_ids):08d}", "CN"
    )


def sent(
    kind: int, debit: Party, credit: Party, amount: int, currency: str = "CNY", minute: int = 0
) -> DayTransfer:
    return DayTransfer(
        f"t-{next(_ids):06d}",
        kind,
        debit.account_id,
        credit.account_id,
        amount,
        currency,
        NOON_MS + minute * 60_000,
        "shard-1",
    )


def report(parties: list[Party], transfers: list[DayTransfer]) -> aml.LargeValueResult:
    directory = {p.account_id: p for p in [CASH, *parties]}
    return aml.large_value(transfers, directory, WINDOW, reveal_ids=True)


def listed(result: aml.LargeValueResult) -> set[tuple[str, str, str]]:
    return {(r["transfer_id"], r["customer_id"], r["basis"]) for r in result.rows}


@pytest.mark.parametrize(("currency", "threshold"), [("CNY", 5_000_000), ("USD", 1_000_000)])
def test_cash_at_the_threshold_is_reported_one_fen_below_is_not(currency: str, threshold: int) -> None:
    alice, bob = person("alice", currency=currency), person("bob", currency=currency)
    at = sent(DEPOSIT, CASH, alice, threshold, currency)
    below = sent(WITHDRAWAL, bob, CASH, threshold - 1, currency)

    result = report([alice, bob], [at, below])

    assert listed(result) == {(at.transfer_id, "alice", "SINGLE")}
    row = result.rows[0]
    assert (row["category"], row["direction"], row["counterparty_account_id"]) == ("CASH", "IN", "CASH")
    assert row["threshold_minor"] == threshold


def test_cumulative_cash_adds_up_each_direction_on_its_own() -> None:
    alice = person("alice")
    cash_in = [sent(DEPOSIT, CASH, alice, 2_000_000), sent(DEPOSIT, CASH, alice, 3_000_000)]
    cash_out = [sent(WITHDRAWAL, alice, CASH, 4_999_999)]  # with the deposits it would be far over
    short = person("carol")
    short_parts = [sent(DEPOSIT, CASH, short, 2_500_000), sent(DEPOSIT, CASH, short, 2_499_999)]

    result = report([alice, short], cash_in + cash_out + short_parts)

    assert listed(result) == {(t.transfer_id, "alice", "CUMULATIVE") for t in cash_in}
    assert {(r["direction"], r["same_direction_day_total_minor"]) for r in result.rows} == {("IN", 5_000_000)}


def test_cumulative_is_per_customer_across_their_accounts() -> None:
    first = person("dave", customer="cust-dave")
    second = Party(first.account_id + 1, PERSONAL, "CNY", "cust-dave", "dave", 1, first.id_number)
    a, b = sent(DEPOSIT, CASH, first, 2_500_000), sent(DEPOSIT, CASH, second, 2_500_000)

    result = report([first, second], [a, b])

    assert {r["account_id"] for r in result.rows} == {str(first.account_id), str(second.account_id)}


@pytest.mark.parametrize(
    ("payer_country", "payee_country", "currency", "threshold", "category"),
    [
        ("", "CN", "CNY", 50_000_000, "PERSONAL_DOMESTIC"),  # empty country is CN
        ("CN", "US", "CNY", 20_000_000, "PERSONAL_CROSS_BORDER"),
        ("", "", "USD", 10_000_000, "PERSONAL_DOMESTIC"),
        ("HK", "CN", "USD", 1_000_000, "PERSONAL_CROSS_BORDER"),
    ],
)
def test_natural_person_transfers_domestic_and_cross_border(
    payer_country: str, payee_country: str, currency: str, threshold: int, category: str
) -> None:
    payer = person("erin", payer_country, currency)
    payee = person("frank", payee_country, currency)
    at = sent(TRANSFER, payer, payee, threshold, currency)
    below_payer, below_payee = (
        person("gina", payer_country, currency),
        person("hank", payee_country, currency),
    )
    below = sent(TRANSFER, below_payer, below_payee, threshold - 1, currency)

    result = report([payer, payee, below_payer, below_payee], [at, below])

    assert listed(result) == {(at.transfer_id, "erin", "SINGLE"), (at.transfer_id, "frank", "SINGLE")}
    assert {r["category"] for r in result.rows} == {category}
    assert {(r["customer_id"], r["direction"], r["counterparty_customer_id"]) for r in result.rows} == {
        ("erin", "OUT", "frank"),
        ("frank", "IN", "erin"),
    }


def test_business_legs_use_the_business_threshold_and_the_person_side_its_own() -> None:
    shop, buyer = business("shop"), person("ivy")
    pay = sent(PAYMENT, buyer, shop, 50_000_000)  # person side reaches 500k, business side not 2M
    big = sent(PAYMENT, buyer, shop, 150_000_000)  # business side now at 2M cumulative

    only_first = report([shop, buyer], [pay])
    both = report([shop, buyer], [pay, big])

    assert listed(only_first) == {(pay.transfer_id, "ivy", "SINGLE")}
    assert {
        (r["customer_id"], r["category"], r["basis"]) for r in both.rows if r["customer_id"] == "shop"
    } == {
        ("shop", "BUSINESS_TRANSFER", "CUMULATIVE"),
    }
    assert len([r for r in both.rows if r["customer_id"] == "shop"]) == 2


def test_a_transfer_between_one_customers_accounts_is_an_out_and_an_in_leg() -> None:
    mine = person("jack", customer="cust-jack")
    other = Party(mine.account_id + 1, PERSONAL, "CNY", "cust-jack", "jack", 1, mine.id_number)
    below = sent(TRANSFER, mine, other, 49_999_999)  # one-sided totals: not 2 x 49,999,999
    at = sent(TRANSFER, other, mine, 50_000_000)

    assert report([mine, other], [below]).rows == []
    rows = report([mine, other], [at]).rows
    assert {(r["direction"], r["account_id"], r["counterparty_account_id"]) for r in rows} == {
        ("OUT", str(other.account_id), str(mine.account_id)),
        ("IN", str(mine.account_id), str(other.account_id)),
    }


def test_other_currencies_are_counted_not_evaluated() -> None:
    alice = person("kate", currency="EUR")
    result = report([alice], [sent(DEPOSIT, CASH, alice, 10**9, "EUR")])

    assert result.rows == []
    assert result.not_evaluated == {"EUR": 1}


def test_staff_opened_accounts_are_one_customer_by_id_document_which_is_masked_on_request() -> None:
    first = Party(6_100_000_000_000_001, PERSONAL, "CNY", "", "lee", 1, "11010519491231002X")
    second = Party(6_100_000_000_000_002, PERSONAL, "CNY", "", "lee", 1, "11010519491231002X")
    transfers = [sent(DEPOSIT, CASH, first, 2_500_000), sent(DEPOSIT, CASH, second, 2_500_000)]
    directory = {p.account_id: p for p in (CASH, first, second)}

    masked = aml.large_value(transfers, directory, WINDOW, reveal_ids=False)

    assert len({r["customer_id"] for r in masked.rows}) == 1
    assert masked.rows[0]["customer_id"].startswith("doc:")
    assert "19491231" not in masked.rows[0]["customer_id"]
    assert {r["id_number"] for r in masked.rows} == {"110***********002X"}


def test_suspicious_lists_aml_typology_alerts_of_the_day_only() -> None:
    def alert(created: int, typologies: list[str]) -> dict[str, object]:
        return {
            "alert_id": f"{created:013d}-x",
            "created_at_unix_ms": created,
            "aml_typologies": typologies,
            "rules": ["velocity", *typologies],
            "amount": 4_999_999,
            "currency": "CNY",
            "transfer_kind": "TRANSFER",
        }

    alerts = [
        alert(WINDOW.start_ms, ["structuring"]),
        alert(WINDOW.start_ms + 1, []),
        alert(WINDOW.end_ms, ["funnel"]),
        alert(WINDOW.end_ms - 1, ["funnel", "dormant"]),
    ]

    rows = aml.suspicious(alerts, WINDOW)

    assert [(r["created_at_unix_ms"], r["typologies"]) for r in rows] == [
        (WINDOW.start_ms, "structuring"),
        (WINDOW.end_ms - 1, "funnel;dormant"),
    ]
    assert rows[0]["amount"] == "49999.99" and rows[0]["rules"] == "velocity;structuring"


def test_the_day_is_midnight_to_midnight_in_its_time_zone() -> None:
    shanghai = day.day_window(dt.date(2026, 11, 24), "Asia/Shanghai")
    utc = day.day_window(dt.date(2026, 11, 24), "UTC")

    assert utc.start_ms - shanghai.start_ms == 8 * 3_600_000
    assert shanghai.end_ms - shanghai.start_ms == 86_400_000
    assert shanghai.contains(shanghai.start_ms) and shanghai.contains(shanghai.end_ms - 1)
    assert not shanghai.contains(shanghai.end_ms) and not shanghai.contains(shanghai.start_ms - 1)
    assert shanghai.hour_of(shanghai.start_ms) == 0 and shanghai.hour_of(shanghai.end_ms - 1) == 23
    assert shanghai.local_time(shanghai.start_ms) == "2026-11-24T00:00:00.000+08:00"
    with pytest.raises(ValueError, match="unknown time zone"):
        day.day_window(dt.date(2026, 11, 24), "Mars/Olympus")
    with pytest.raises(ValueError, match="not a date"):
        day.parse_date("24/11/2026")


def test_large_value_csv_has_the_filing_fields_in_order() -> None:
    alice = person("lily")
    result = report([alice], [sent(DEPOSIT, CASH, alice, 5_000_000)])

    text = output.csv_text(aml.LARGE_VALUE_FIELDS, result.rows)

    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(aml.LARGE_VALUE_FIELDS)
    for name in (
        "customer_id",
        "id_number",
        "account_id",
        "counterparty_account_id",
        "transfer_id",
        "rule",
        "time",
    ):
        assert rows[0][name]
    assert rows[0]["amount"] == "50000.00" and rows[0]["amount_minor"] == "5000000"
    assert rows[0]["time"] == "2026-11-24T12:00:00.000+08:00"


def test_a_daylight_saving_day_is_23_hours_long_and_still_midnight_to_midnight() -> None:
    spring = day.day_window(dt.date(2026, 3, 8), "America/New_York")

    assert spring.end_ms - spring.start_ms == 23 * 3_600_000
    assert spring.local_time(spring.start_ms) == "2026-03-08T00:00:00.000-05:00"
    assert spring.local_time(spring.end_ms) == "2026-03-09T00:00:00.000-04:00"
