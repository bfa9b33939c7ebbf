"""Risk config validation (precise errors), the default file, reload that
keeps the old rules on a bad file, and the shards' activity windows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.risk import config
from gateway.risk.config import ConfigError
from gateway.risk.reload import ConfigHolder
from shardbank import activity

GOOD = """
[bands]
review_score = 50
block_score = 100
[rules.large_amount]
weight = 100
threshold_minor = { personal = 1_000, business = 5_000 }
"""


def test_default_file_is_valid_and_production_sized() -> None:
    loaded = config.load(config.DEFAULT_PATH)
    assert loaded.currency == "CNY" and loaded.timezone == "Asia/Shanghai"
    names = {r.kind for r in loaded.rules}
    assert names >= {"large_amount", "velocity_count", "velocity_amount", "customer_daily_limit",
                     "new_counterparty", "structuring", "pass_through", "fan_out", "funnel_in",
                     "dormant_reactivated", "unusual_hours"}  # fmt: skip
    assert all(r.alert_only for r in loaded.rules if r.aml_typology)
    assert loaded.near_band() == (4_500_000, 5_000_000)  # the 10 % below RMB 50,000, in fen


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not TOML"),
        (GOOD.replace("block_score = 100", "block_score = 40"), "bands: block_score (40) must be above"),
        (GOOD.replace("weight = 100", 'weight = "high"'), "rules.large_amount.weight: must be an integer"),
        (GOOD.replace("weight = 100", "weight = 100\nkind = 'nope'"), "large_amount.kind: unknown rule kind"),
        (GOOD.replace("business = 5_000", "corporate = 5_000"), "large_amount.threshold_minor: per account"),
        (GOOD.replace("threshold_minor", "threshold"), "rules.large_amount.threshold: unknown key"),
        (GOOD + "[rules.v]\nkind = 'velocity_count'\nweight = 1\nwindow_s = 120\nmax_count = 3\n",
         "rules.v.window_s: 120 is not one of 60, 3600, 86400"),
        (GOOD + "[rules.h]\nkind = 'unusual_hours'\nweight = 1\nstart_hour = 24\nend_hour = 5\n"
         "min_amount_minor = 1\n", "rules.h.start_hour: 24 is not one of 0..23"),
        ('timezone = "Mars/Olympus"\n' + GOOD, "timezone: unknown zone"),
        ('currency = "XXX"\n' + GOOD, "currency: 'XXX' is not a supported"),
        (GOOD.replace("weight = 100", "weight = 100\nseverity = 'URGENT'"), "severity: one of LOW, MEDIUM"),
        (GOOD.replace("threshold_minor = { personal = 1_000, business = 5_000 }", "threshold_minor = -1"),
         "threshold_minor: must be 0.."),
    ],
)  # fmt: skip
def test_invalid_configs_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config.parse(text)
    assert message in str(refused.value)


def test_disabled_rules_are_left_out() -> None:
    parsed = config.parse(GOOD.replace("weight = 100", "weight = 100\nenabled = false"))
    assert parsed.rules == ()


def test_reload_takes_a_good_file_and_keeps_the_old_rules_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "risk.toml"
    path.write_text(GOOD)
    holder = ConfigHolder(str(path))
    assert holder.current.rules[0].param("threshold_minor", 1) == 1_000
    assert not holder.poll()  # unchanged
    path.write_text(GOOD.replace("personal = 1_000", "personal = 2_000"))
    os.utime(path, ns=(1, 1))  # a new identity even within the same mtime tick
    assert holder.poll()
    assert holder.current.rules[0].param("threshold_minor", 1) == 2_000
    path.write_text("[bands]\nreview_score = 'x'\n")
    os.utime(path, ns=(2, 2))
    assert not holder.poll()
    assert holder.current.rules[0].param("threshold_minor", 1) == 2_000
    assert not holder.reload()  # SIGHUP path: same answer
    path.unlink()
    assert not holder.reload()
    assert holder.current.rules[0].param("threshold_minor", 1) == 2_000


def test_first_load_must_succeed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigHolder(str(tmp_path / "missing.toml"))


# The shards' sliding windows (shardbank.activity).

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def test_windows_slide_and_count_distinct_counterparties() -> None:
    events: list[activity.Event] = []
    index = activity.ActivityIndex(lambda _: reversed(events), lambda _: 0)
    start = 10 * DAY
    account = index.get(1, start)
    for i, at in enumerate((start, start + 30 * MINUTE, start + 59 * MINUTE, start + 59 * MINUTE + 30_000)):
        account.add((at, -100, 10 + i % 2))
    account.add((start + 59 * MINUTE + 40_000, 500, 99))
    now = start + 59 * MINUTE + 50_000
    found = activity.summarize(account, now, counterparty=10)
    assert (found.out[0].count, found.out[0].amount) == (2, 200)
    assert (found.out[1].count, found.out[2].count) == (4, 4)
    assert (found.into[0].amount, found.distinct_in_1h, found.distinct_out_1h) == (500, 1, 2)
    assert found.counterparty_known
    later = activity.summarize(account, start + 2 * DAY, counterparty=77)
    assert later.out[2].count == 0 and later.into[2].count == 0 and not later.counterparty_known


def test_loading_from_history_matches_live_observation() -> None:
    now = 100 * DAY
    history: list[activity.Event] = [
        (now - 40 * DAY, -5, 7),
        (now - 2 * HOUR, -3_000, 8),
        (now - 1_000, 3_000, 9),
    ]
    index = activity.ActivityIndex(lambda _: reversed(history), lambda _: 1)
    found = activity.summarize(index.get(4, now), now, counterparty=7, dormancy_ms=30 * DAY)
    assert found.out[2].amount == 3_000 and found.into[0].amount == 3_000
    assert found.counterparty_known  # paid 40 days ago: within the lookback
    assert found.idle_before_ms == 40 * DAY - 2 * HOUR and found.run_started_ms == now - 2 * HOUR
    index.observe(4, now + 10, -50, 8)
    assert activity.summarize(index.get(4, now + 20), now + 20).out[0].amount == 50


def test_near_threshold_and_dormancy_gap() -> None:
    index = activity.ActivityIndex(lambda _: iter(()), lambda _: 1)  # created at 1 ms
    account = index.get(1, DAY)
    for at in (DAY, DAY + 1, DAY + 2):
        account.add((at, -4_800, 2))
    account.add((DAY + 3, -4_000, 2))
    found = activity.summarize(account, DAY + 10, near_low=4_500, near_high=5_000, dormancy_ms=HOUR)
    assert found.near_threshold_out_24h == 3
    assert found.idle_before_ms == DAY - 1  # idle since it was opened
    busy = activity.summarize(account, DAY + 10 + HOUR - 20, dormancy_ms=HOUR)
    assert busy.idle_before_ms == DAY - 1 and busy.run_started_ms == DAY


def test_lru_keeps_at_most_accounts_max() -> None:
    loads: list[int] = []

    def load(account_id: int) -> list[activity.Event]:
        loads.append(account_id)
        return []

    index = activity.ActivityIndex(load, lambda _: 0, accounts_max=2)
    for account_id in (1, 2, 1, 3, 1, 2):
        index.get(account_id, 0)
    assert len(index) == 2
    assert loads == [1, 2, 3, 2]
