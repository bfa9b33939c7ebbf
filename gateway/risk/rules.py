"""The rules: each a small pure function of (features, its parameters) ->
fired or not. `KINDS` names each kind's parameters (config validation reads
it) and its function. Thresholds are minor units of `RiskConfig.currency`;
for a transfer in another currency only the count rules run.

A rule looks at the account paying (the debit side), except `funnel_in`,
which looks at the account receiving.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from gateway.risk.config import RiskConfig, Rule, band_low
from gateway.risk.features import AccountActivity, Features
from shardbank.v1 import types_pb2

Check = Callable[[Features, Rule, RiskConfig], bool]
OUTGOING = (
    types_pb2.TRANSFER_KIND_TRANSFER,
    types_pb2.TRANSFER_KIND_PAYMENT,
    types_pb2.TRANSFER_KIND_WITHDRAWAL,
)
BETWEEN_ACCOUNTS = (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT)


@dataclass(frozen=True)
class Kind:
    params: tuple[str, ...]
    check: Check
    # Compares amounts (skipped for transfers in another currency).
    amounts: bool = True
    # Looks at the receiving account (the alert names it).
    on_credit: bool = False


def _payer(f: Features) -> AccountActivity | None:
    return f.debit if f.transfer.kind in OUTGOING else None


def large_amount(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """One transfer at or above the account type's threshold."""
    payer = _payer(f)
    return payer is not None and f.transfer.amount >= rule.param("threshold_minor", payer.account_type)


def velocity_count(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """More than max_count transfers out in the window, this one included."""
    payer = _payer(f)
    if payer is None:
        return False
    window = payer.window_out(_window_name(rule))
    return window.count + 1 > rule.param("max_count", payer.account_type)


def velocity_amount(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """More than max_amount_minor out in the window, this one included."""
    payer = _payer(f)
    if payer is None:
        return False
    window = payer.window_out(_window_name(rule))
    return window.amount + f.transfer.amount > rule.param("max_amount_minor", payer.account_type)


def _window_name(rule: Rule) -> str:
    return {60: "1m", 3600: "1h", 86400: "24h"}[rule.param("window_s", 0)]


def customer_daily_limit(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """The customer's money out over 24 h (its accounts on every shard,
    summed by `gateway.risk.state`) would pass limit_minor."""
    payer = _payer(f)
    if payer is None:
        return False
    return payer.customer_out_24h.amount + f.transfer.amount > rule.param("limit_minor", payer.account_type)


def new_counterparty(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """A large amount to an account this one never paid before."""
    payer = f.debit
    if payer is None or f.transfer.kind not in BETWEEN_ACCOUNTS or f.counterparty_known:
        return False
    return f.transfer.amount >= rule.param("min_amount_minor", payer.account_type)


def structuring(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """Several transfers out just below a reporting threshold within 24 h:
    this one in the band [threshold * (100 - band_pct) %, threshold) and at
    least min_count in the band, this one included."""
    payer = _payer(f)
    if payer is None:
        return False
    threshold = rule.param("threshold_minor", payer.account_type)
    low = band_low(threshold, rule.param("band_pct", payer.account_type))
    if not low <= f.transfer.amount < threshold:
        return False
    return payer.near_threshold_out_24h + 1 >= rule.param("min_count", payer.account_type)


def pass_through(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """Money in from many accounts within the hour, and out again: at least
    min_sources payers, at least min_in_minor received, and this transfer
    moves at least out_pct % of it."""
    payer = _payer(f)
    if payer is None:
        return False
    kind = payer.account_type
    received = payer.in_1h.amount
    return (
        payer.distinct_in_1h >= rule.param("min_sources", kind)
        and received >= rule.param("min_in_minor", kind)
        and f.transfer.amount * 100 >= received * rule.param("out_pct", kind)
    )


def fan_out(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """The reverse: a large sum came in within the hour and goes out to many
    accounts (at least min_targets payees in the hour, this one included)."""
    payer = f.debit
    if payer is None or f.transfer.kind not in BETWEEN_ACCOUNTS:
        return False
    kind = payer.account_type
    payees = payer.distinct_out_1h + (0 if f.transfer.credit_account_id in payer.payees_1h else 1)
    return payees >= rule.param("min_targets", kind) and payer.in_1h.amount >= rule.param(
        "min_in_minor", kind
    )


def funnel_in(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """The receiving account collects from many payers within the hour (this
    one included) and at least min_in_minor in total."""
    payee = f.credit
    if payee is None or f.transfer.kind not in BETWEEN_ACCOUNTS:
        return False
    kind = payee.account_type
    payer_id = f.transfer.debit_account_id
    payers = payee.distinct_in_1h + (0 if payer_id in payee.payers_1h else 1)
    return payers >= rule.param("min_sources", kind) and payee.in_1h.amount + f.transfer.amount >= (
        rule.param("min_in_minor", kind)
    )


def dormant_reactivated(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """A large amount out of an account that was idle for config.dormancy_ms
    and became active again within active_within_s."""
    payer = _payer(f)
    if payer is None or payer.idle_before_ms < config.dormancy_ms:
        return False
    kind = payer.account_type
    recent = f.now_ms - payer.run_started_ms <= rule.param("active_within_s", kind) * 1000
    return recent and f.transfer.amount >= rule.param("min_amount_minor", kind)


def unusual_hours(f: Features, rule: Rule, config: RiskConfig) -> bool:
    """A large amount out between start_hour and end_hour, local time of
    config.timezone (the window may wrap midnight: 23 -> 5)."""
    payer = _payer(f)
    if payer is None:
        return False
    kind = payer.account_type
    hour = dt.datetime.fromtimestamp(f.now_ms / 1000, tz=config.zone).hour
    start, end = rule.param("start_hour", kind), rule.param("end_hour", kind)
    inside = start <= hour < end if start <= end else hour >= start or hour < end
    return inside and f.transfer.amount >= rule.param("min_amount_minor", kind)


KINDS: dict[str, Kind] = {
    "large_amount": Kind(("threshold_minor",), large_amount),
    "velocity_count": Kind(("window_s", "max_count"), velocity_count, amounts=False),
    "velocity_amount": Kind(("window_s", "max_amount_minor"), velocity_amount),
    "customer_daily_limit": Kind(("limit_minor",), customer_daily_limit),
    "new_counterparty": Kind(("min_amount_minor",), new_counterparty),
    "structuring": Kind(("threshold_minor", "band_pct", "min_count"), structuring),
    "pass_through": Kind(("min_sources", "min_in_minor", "out_pct"), pass_through),
    "fan_out": Kind(("min_targets", "min_in_minor"), fan_out),
    "funnel_in": Kind(("min_sources", "min_in_minor"), funnel_in, on_credit=True),
    "dormant_reactivated": Kind(("min_amount_minor", "active_within_s"), dormant_reactivated),
    "unusual_hours": Kind(("start_hour", "end_hour", "min_amount_minor"), unusual_hours),
}
# Windows the shards keep (shardbank.activity.WINDOWS_MS), in seconds.
WINDOW_SECONDS = (60, 3600, 86400)
