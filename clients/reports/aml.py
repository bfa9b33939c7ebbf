"""Large-value transaction reports (PBoC Order [2016] No. 3, Article 5).

Each committed transfer of the day gives one *leg* per customer side: the
customer of a deposit (cash in) or withdrawal (cash out), and both the payer
and the payee of a transfer or payment. A leg falls in one category:

- CASH: deposits and withdrawals (cash is always domestic); Art. 5(1);
- BUSINESS_TRANSFER: a transfer/payment leg on a non-natural-person
  (BUSINESS) account; Art. 5(2);
- PERSONAL_DOMESTIC / PERSONAL_CROSS_BORDER: a leg on a natural-person
  (PERSONAL) account, cross-border when the two holders' countries differ
  (an empty country is CN); Art. 5(3) and 5(4).

Per customer, category, currency and direction, the day's legs are summed:
the Order accumulates one-sidedly (按资金收入或者支出单边累计), so money in
(IN) and money out (OUT) are separate totals — deposits apart from
withdrawals, receipts apart from payments. When a total reaches the
threshold (at or above: "含"), every leg of that group is reported, each
marked SINGLE (the leg alone reaches it) or CUMULATIVE. A transfer between
two accounts of one customer is an OUT leg and an IN leg of that customer.
Thresholds exist for CNY and USD (the Order's "外币等值 USD" amounts).
Other currencies are not converted — the bank keeps no FX rates — so their
legs are counted in `not_evaluated` instead of being silently dropped.

A customer is `holder.customer_id`, or, for accounts opened by staff without
one, the holder's ID document (shown as `doc:` + a hash, never the number).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clients.reports.day import DayWindow
from clients.reports.model import (
    ACCOUNT_TYPE_NAMES,
    BUSINESS,
    DEPOSIT,
    ID_TYPE_NAMES,
    PAYMENT,
    PERSONAL,
    TRANSFER,
    WITHDRAWAL,
    DayTransfer,
    Party,
)
from shardbank import identity, money

CASH = "CASH"
BUSINESS_TRANSFER = "BUSINESS_TRANSFER"
PERSONAL_DOMESTIC = "PERSONAL_DOMESTIC"
PERSONAL_CROSS_BORDER = "PERSONAL_CROSS_BORDER"
CATEGORIES = (CASH, BUSINESS_TRANSFER, PERSONAL_DOMESTIC, PERSONAL_CROSS_BORDER)

# Minor units (fen, cents), inclusive.
THRESHOLDS_MINOR: Mapping[str, Mapping[str, int]] = {
    "CNY": {
        CASH: 5_000_000,
        BUSINESS_TRANSFER: 200_000_000,
        PERSONAL_DOMESTIC: 50_000_000,
        PERSONAL_CROSS_BORDER: 20_000_000,
    },
    "USD": {
        CASH: 1_000_000,
        BUSINESS_TRANSFER: 20_000_000,
        PERSONAL_DOMESTIC: 10_000_000,
        PERSONAL_CROSS_BORDER: 1_000_000,
    },
}
RULES = {
    CASH: "PBoC [2016] No.3 Art.5(1) cash deposit/withdrawal",
    BUSINESS_TRANSFER: "PBoC [2016] No.3 Art.5(2) non-natural-person account transfer",
    PERSONAL_DOMESTIC: "PBoC [2016] No.3 Art.5(3) natural-person domestic transfer",
    PERSONAL_CROSS_BORDER: "PBoC [2016] No.3 Art.5(4) natural-person cross-border transfer",
}
SINGLE = "SINGLE"
CUMULATIVE = "CUMULATIVE"
IN = "IN"
OUT = "OUT"

LARGE_VALUE_FIELDS = (
    "report_type",
    "report_date",
    "customer_id",
    "customer_name",
    "id_type",
    "id_number",
    "country",
    "account_id",
    "account_type",
    "direction",
    "counterparty_account_id",
    "counterparty_customer_id",
    "counterparty_name",
    "counterparty_country",
    "transfer_id",
    "kind",
    "category",
    "amount_minor",
    "amount",
    "currency",
    "time",
    "unix_ms",
    "basis",
    "threshold_minor",
    "same_direction_day_total_minor",
    "rule",
)


@dataclass(frozen=True)
class Leg:
    """One customer side of one transfer."""

    transfer: DayTransfer
    party: Party
    counterparty: Party | None  # None: the cash side of a deposit/withdrawal
    direction: str
    category: str


def customer_key(party: Party) -> str:
    if party.customer_id:
        return party.customer_id
    document = f"{party.id_type}|{party.id_number}".encode()
    return "doc:" + hashlib.sha256(document).hexdigest()[:16]


def category_of(party: Party, counterparty: Party | None) -> str:
    if counterparty is None or counterparty.is_cash:
        return CASH
    if party.account_type == BUSINESS:
        return BUSINESS_TRANSFER
    if party.home_country != counterparty.home_country:
        return PERSONAL_CROSS_BORDER
    return PERSONAL_DOMESTIC


def legs_of(transfer: DayTransfer, directory: Mapping[int, Party]) -> list[Leg]:
    """The customer sides of a transfer (none for an unknown account: the
    caller's directory covers every shard, so that is a discrepancy upstream)."""
    debit = directory.get(transfer.debit_account_id)
    credit = directory.get(transfer.credit_account_id)
    if transfer.kind == DEPOSIT:
        return [] if credit is None else [Leg(transfer, credit, None, IN, CASH)]
    if transfer.kind == WITHDRAWAL:
        return [] if debit is None else [Leg(transfer, debit, None, OUT, CASH)]
    if transfer.kind not in (TRANSFER, PAYMENT) or debit is None or credit is None:
        return []
    legs = []
    for party, other, direction in ((debit, credit, OUT), (credit, debit, IN)):
        if party.account_type in (PERSONAL, BUSINESS):
            legs.append(Leg(transfer, party, other, direction, category_of(party, other)))
    return legs


@dataclass
class LargeValueResult:
    rows: list[dict[str, Any]]
    # currency -> legs with no threshold (not converted)
    not_evaluated: dict[str, int]
    legs_evaluated: int


def large_value(
    transfers: Iterable[DayTransfer],
    directory: Mapping[int, Party],
    window: DayWindow,
    reveal_ids: bool,
) -> LargeValueResult:
    groups: dict[tuple[str, str, str, str], list[Leg]] = defaultdict(list)
    not_evaluated: dict[str, int] = defaultdict(int)
    evaluated = 0
    for transfer in transfers:
        for leg in legs_of(transfer, directory):
            if leg.category not in THRESHOLDS_MINOR.get(transfer.currency, {}):
                not_evaluated[transfer.currency] += 1
                continue
            evaluated += 1
            groups[(customer_key(leg.party), leg.category, transfer.currency, leg.direction)].append(leg)
    rows: list[dict[str, Any]] = []
    for (customer, category, currency, _direction), legs in sorted(groups.items()):
        threshold = THRESHOLDS_MINOR[currency][category]
        total = sum(leg.transfer.amount for leg in legs)
        if total < threshold:
            continue
        for leg in sorted(legs, key=lambda leg: (leg.transfer.at_unix_ms, leg.transfer.transfer_id)):
            rows.append(_row(leg, customer, threshold, total, window, reveal_ids))
    return LargeValueResult(rows=rows, not_evaluated=dict(not_evaluated), legs_evaluated=evaluated)


def _row(
    leg: Leg, customer: str, threshold: int, total: int, window: DayWindow, reveal_ids: bool
) -> dict[str, Any]:
    transfer, party, other = leg.transfer, leg.party, leg.counterparty
    id_number = party.id_number if reveal_ids else identity.mask_id_number(party.id_number)
    counterparty_customer = "" if other is None or other.is_cash else customer_key(other)
    return {
        "report_type": "LARGE_VALUE",
        "report_date": window.date.isoformat(),
        "customer_id": customer,
        "customer_name": party.name,
        "id_type": ID_TYPE_NAMES.get(party.id_type, ""),
        "id_number": id_number,
        "country": party.home_country,
        "account_id": str(party.account_id),
        "account_type": ACCOUNT_TYPE_NAMES.get(party.account_type, ""),
        "direction": leg.direction,
        "counterparty_account_id": str(other.account_id) if other is not None else "CASH",
        "counterparty_customer_id": counterparty_customer,
        "counterparty_name": "" if other is None or other.is_cash else other.name,
        "counterparty_country": "" if other is None or other.is_cash else other.home_country,
        "transfer_id": transfer.transfer_id,
        "kind": transfer.kind_name,
        "category": leg.category,
        "amount_minor": transfer.amount,
        "amount": money.format_amount(transfer.amount, transfer.currency),
        "currency": transfer.currency,
        "time": window.local_time(transfer.at_unix_ms),
        "unix_ms": transfer.at_unix_ms,
        "basis": SINGLE if transfer.amount >= threshold else CUMULATIVE,
        "threshold_minor": threshold,
        "same_direction_day_total_minor": total,
        "rule": RULES[leg.category],
    }


SUSPICIOUS_FIELDS = (
    "report_type",
    "report_date",
    "alert_id",
    "time",
    "created_at_unix_ms",
    "transfer_id",
    "kind",
    "customer_id",
    "account_id",
    "debit_account_id",
    "credit_account_id",
    "amount_minor",
    "amount",
    "currency",
    "typologies",
    "rules",
    "decision",
    "score",
    "severity",
    "status",
)


def suspicious(alerts: Iterable[Mapping[str, Any]], window: DayWindow) -> list[dict[str, Any]]:
    """Alerts of AML typologies raised in the window (alert schema: see
    `clients.reports.alerts`), oldest first."""
    rows = []
    for alert in alerts:
        typologies = [str(t) for t in alert.get("aml_typologies") or []]
        created = int(alert.get("created_at_unix_ms", 0))
        if not typologies or not window.contains(created):
            continue
        currency = str(alert.get("currency", ""))
        amount = int(alert.get("amount", 0))
        rows.append(
            {
                "report_type": "SUSPICIOUS",
                "report_date": window.date.isoformat(),
                "alert_id": str(alert.get("alert_id", "")),
                "time": window.local_time(created),
                "created_at_unix_ms": created,
                "transfer_id": str(alert.get("transfer_id", "")),
                "kind": str(alert.get("transfer_kind", "")),
                "customer_id": str(alert.get("customer_id", "")),
                "account_id": str(alert.get("account_id", "")),
                "debit_account_id": str(alert.get("debit_account_id", "")),
                "credit_account_id": str(alert.get("credit_account_id", "")),
                "amount_minor": amount,
                "amount": money.format_amount(amount, currency),
                "currency": currency,
                "typologies": ";".join(typologies),
                "rules": ";".join(str(r) for r in alert.get("rules") or []),
                "decision": str(alert.get("decision", "")),
                "score": int(alert.get("score", 0)),
                "severity": str(alert.get("severity", "")),
                "status": str(alert.get("status", "")),
            }
        )
    return sorted(rows, key=lambda row: (row["created_at_unix_ms"], row["alert_id"]))
