"""Each risk rule fires on a crafted case and not on the benign one next to
it (pure engine: crafted features, `now` given), and the score bands."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from gateway.risk import config, engine
from gateway.risk.features import AccountActivity, Features, Window
from shardbank.v1 import types_pb2

PERSONAL = types_pb2.ACCOUNT_TYPE_PERSONAL
BUSINESS = types_pb2.ACCOUNT_TYPE_BUSINESS
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
# 2026-11-24 14:00 Beijing time: an ordinary afternoon.
AFTERNOON_MS = int(dt.datetime(2026, 11, 24, 14, 0, tzinfo=SHANGHAI).timestamp() * 1000)
DAY_MS = 86_400_000
ALICE, BOB, SHOP = 6222020000000001, 6222020000000002, 6222020000000003

RULES = """
currency = "CNY"
timezone = "Asia/Shanghai"
dormancy_ms = 15_552_000_000
[bands]
review_score = 50
block_score = 100
[rules.large_amount]
weight = 100
threshold_minor = { personal = 20_000_000, business = 500_000_000 }
[rules.velocity_count_1m]
kind = "velocity_count"
weight = 50
window_s = 60
max_count = { personal = 10, business = 600 }
[rules.velocity_amount_24h]
kind = "velocity_amount"
weight = 50
window_s = 86400
max_amount_minor = 50_000_000
[rules.customer_daily_limit]
weight = 100
limit_minor = 100_000_000
[rules.new_counterparty]
weight = 30
min_amount_minor = 5_000_000
[rules.structuring]
alert_only = true
aml_typology = "STRUCTURING"
severity = "HIGH"
threshold_minor = 5_000_000
band_pct = 10
min_count = 3
[rules.pass_through]
alert_only = true
aml_typology = "RAPID_PASS_THROUGH"
min_sources = 5
min_in_minor = 10_000_000
out_pct = 80
[rules.fan_out]
alert_only = true
aml_typology = "FAN_OUT"
min_targets = 5
min_in_minor = 10_000_000
[rules.funnel_in]
alert_only = true
aml_typology = "FUNNEL_ACCOUNT"
min_sources = 10
min_in_minor = 10_000_000
[rules.dormant_reactivated]
alert_only = true
aml_typology = "DORMANT_REACTIVATION"
min_amount_minor = 5_000_000
active_within_s = 604_800
[rules.unusual_hours]
weight = 30
severity = "LOW"
start_hour = 1
end_hour = 5
min_amount_minor = 5_000_000
"""
CONFIG = config.parse(RULES)


def transfer(
    amount: int, kind: int = types_pb2.TRANSFER_KIND_TRANSFER, credit: int = BOB
) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id="6f1c1b7e-0000-4000-8000-000000000001", kind=kind, debit_account_id=ALICE,
        credit_account_id=credit, amount=amount, currency="CNY",
    )  # fmt: skip


def fired(
    amount: int,
    debit: AccountActivity | None = None,
    credit: AccountActivity | None = None,
    *,
    known: bool = True,
    now_ms: int = AFTERNOON_MS,
    kind: int = types_pb2.TRANSFER_KIND_TRANSFER,
) -> tuple[str, ...]:
    debit = debit or AccountActivity(ALICE)
    credit = credit or AccountActivity(BOB)
    features = Features(transfer(amount, kind), now_ms, debit, credit, counterparty_known=known)
    return engine.assess(features, CONFIG).rules


def test_large_amount_per_account_type() -> None:
    assert fired(20_000_000) == ("large_amount",)
    assert fired(19_999_999) == ()
    business = AccountActivity(ALICE, account_type=BUSINESS)
    assert fired(20_000_000, business) == ()
    assert "large_amount" in fired(500_000_000, business)


def test_velocity_count_in_a_minute() -> None:
    busy = AccountActivity(ALICE, out_1m=Window(10, 10_000))
    assert fired(1_000, busy) == ("velocity_count_1m",)
    assert fired(1_000, replace(busy, out_1m=Window(9, 9_000))) == ()
    assert fired(1_000, replace(busy, account_type=BUSINESS)) == ()


def test_velocity_amount_in_a_day() -> None:
    spent = AccountActivity(ALICE, out_24h=Window(3, 45_000_000))
    assert "velocity_amount_24h" in fired(5_000_001, spent)
    assert "velocity_amount_24h" not in fired(5_000_000, spent)


def test_customer_daily_limit_counts_the_customers_other_accounts() -> None:
    other_accounts = AccountActivity(ALICE, customer_out_24h=Window(4, 95_000_000))
    assert "customer_daily_limit" in fired(5_000_001, other_accounts)
    assert "customer_daily_limit" not in fired(5_000_000, other_accounts)


def test_new_counterparty_receiving_a_large_amount() -> None:
    assert fired(5_000_000, known=False) == ("new_counterparty",)
    assert fired(5_000_000, known=True) == ()
    assert fired(4_999_999, known=False) == ()


def test_structuring_just_below_the_threshold() -> None:
    two_before = AccountActivity(ALICE, near_threshold_out_24h=2)
    assert fired(4_900_000, two_before) == ("structuring",)
    assert fired(4_400_000, two_before) == ()  # below the band
    assert fired(5_000_000, two_before) == ()  # at the threshold: reported anyway, not structuring
    assert fired(4_900_000, replace(two_before, near_threshold_out_24h=1)) == ()


def test_pass_through_in_from_many_and_out_again() -> None:
    mule = AccountActivity(ALICE, in_1h=Window(6, 12_000_000), distinct_in_1h=6)
    assert fired(10_000_000, mule) == ("pass_through",)
    assert fired(9_000_000, mule) == ()  # less than 80 % of what came in
    assert fired(10_000_000, replace(mule, distinct_in_1h=4)) == ()


def test_fan_out_a_sum_paid_out_to_many() -> None:
    spreader = AccountActivity(ALICE, in_1h=Window(1, 20_000_000), distinct_out_1h=4)
    assert fired(100_000, spreader) == ("fan_out",)
    assert fired(100_000, replace(spreader, distinct_out_1h=3)) == ()
    assert fired(100_000, replace(spreader, in_1h=Window(1, 1_000_000))) == ()


def test_funnel_in_looks_at_the_receiving_account() -> None:
    collector = AccountActivity(SHOP, customer_id="c-9", in_1h=Window(9, 9_500_000), distinct_in_1h=9)
    features = Features(transfer(600_000, credit=SHOP), AFTERNOON_MS, AccountActivity(ALICE), collector, True)
    found = engine.assess(features, CONFIG)
    assert found.rules == ("funnel_in",)
    assert found.subject_account_id == SHOP and found.subject_customer_id == "c-9"
    assert fired(600_000, credit=replace(collector, distinct_in_1h=8)) == ()


def test_dormant_account_waking_up_with_a_large_amount() -> None:
    woke = AccountActivity(ALICE, idle_before_ms=200 * DAY_MS, run_started_ms=AFTERNOON_MS - 3_600_000)
    assert fired(5_000_000, woke) == ("dormant_reactivated",)
    assert fired(4_999_999, woke) == ()
    assert fired(5_000_000, replace(woke, idle_before_ms=100 * DAY_MS)) == ()
    assert fired(5_000_000, replace(woke, run_started_ms=AFTERNOON_MS - 8 * DAY_MS)) == ()


def test_large_amount_at_unusual_hours_in_beijing_time() -> None:
    three_am = int(dt.datetime(2026, 11, 24, 3, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    five_am = int(dt.datetime(2026, 11, 24, 5, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    assert fired(5_000_000, now_ms=three_am) == ("unusual_hours",)
    assert fired(5_000_000, now_ms=five_am) == ()
    assert fired(4_999_999, now_ms=three_am) == ()


def test_score_bands_and_alert_only() -> None:
    features = Features(
        transfer(20_000_000), AFTERNOON_MS, AccountActivity(ALICE), AccountActivity(BOB), False
    )
    blocked = engine.assess(features, CONFIG)
    assert blocked.decision == engine.BLOCK and blocked.score == 130 and blocked.severity == "HIGH"
    reviewed = engine.assess(
        Features(transfer(1_000), AFTERNOON_MS, AccountActivity(ALICE, out_1m=Window(10, 1)), None, True),
        CONFIG,
    )
    assert reviewed.decision == engine.REVIEW and reviewed.severity == "MEDIUM"
    structured = engine.assess(
        Features(
            transfer(4_900_000), AFTERNOON_MS, AccountActivity(ALICE, near_threshold_out_24h=2), None, True
        ),
        CONFIG,
    )
    assert structured.decision == engine.ALLOW and structured.score == 0
    assert structured.alert_only and structured.needs_alert
    assert structured.aml_typologies == ("STRUCTURING",) and structured.severity == "HIGH"
    quiet = engine.assess(Features(transfer(100), AFTERNOON_MS, AccountActivity(ALICE), None, True), CONFIG)
    assert not quiet.needs_alert and quiet.rules == ()


def test_amount_rules_skip_other_currencies() -> None:
    usd = transfer(20_000_000)
    usd.currency = "USD"
    busy = AccountActivity(ALICE, out_1m=Window(10, 1))
    assert engine.assess(Features(usd, AFTERNOON_MS, busy, None, True), CONFIG).rules == (
        "velocity_count_1m",
    )


def test_deposits_are_not_scored_on_the_cash_side() -> None:
    assert fired(20_000_000, kind=types_pb2.TRANSFER_KIND_DEPOSIT) == ()


@pytest.mark.parametrize("bad", [20_000_000, 1])
def test_withdrawals_are_scored_like_transfers(bad: int) -> None:
    rules = fired(bad, kind=types_pb2.TRANSFER_KIND_WITHDRAWAL)
    assert rules == (("large_amount",) if bad == 20_000_000 else ())
