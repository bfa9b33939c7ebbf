"""A small seeded synthetic day pushed through a real cluster's gateway:
every planted pattern is caught by what the cluster decided (alerts in
etcd, decisions on the stored transfer records), with few false positives.

The day is compressed: its transfers are sent in time order, in batches,
within seconds, so every sliding window (1 min, 1 h, 24 h) covers the whole
push. Dormancy is made short (DORMANCY_MS) and the dormant accounts are
funded that long before everyone else; the unusual-hours rule is off (the
cluster uses the real clock, which the test does not control).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.client import BankClient
from clients.local_cluster import LocalCluster
from gateway.risk import config
from gateway.risk.alerts import read_alerts
from loadtest import synthetic_day
from loadtest.risk_eval import score
from shardbank.v1 import types_pb2
from tests.factories import mobile, resident_id
from tests.integration.helpers import cluster_with_rules

pytestmark = pytest.mark.integration

SEED = 11
CUSTOMERS = 60
DORMANCY_MS = 8_000
MARGIN_MINOR = 10_000
BATCH = 50
# The compressed day puts everything in one window: a little more noise
# than the real day (see tests/unit/test_risk_synthetic_day.py).
FALSE_POSITIVE_RATE_MAX = 0.03
KINDS = tuple(k for k in synthetic_day.PATTERN_KINDS if k != synthetic_day.ODD_HOURS_LARGE)


def compressed_rules() -> str:
    text = Path(config.DEFAULT_PATH).read_text()
    text = text.replace("dormancy_ms = 15_552_000_000", f"dormancy_ms = {DORMANCY_MS}")
    return text.replace("[rules.unusual_hours]\n", "[rules.unusual_hours]\nenabled = false\n")


@pytest.fixture(scope="module")
def day_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from cluster_with_rules(tmp_path_factory.mktemp("risk-day"), compressed_rules())


def test_a_seeded_day_through_the_gateway(day_cluster: LocalCluster) -> None:
    day = synthetic_day.generate(SEED, CUSTOMERS, patterns_per_kind=2, kinds=KINDS)
    bank = BankClient(day_cluster.gateway_address, token=day_cluster.admin_token)
    try:
        real = {a.account_id: open_real(bank, a.account_type) for a in day.accounts}
        needs = spending(day)
        sleepers = {p.account_id for p in day.patterns if p.kind == synthetic_day.DORMANT_REACTIVATION}
        fund(bank, {real[a]: needs[a] for a in sleepers})
        time.sleep(DORMANCY_MS / 1000 + 0.5)  # the sleepers' last activity is now that long ago
        fund(bank, {real[a]: need for a, need in needs.items() if a not in sleepers})
        outcomes = push(bank, day, real)
    finally:
        bank.close_channel()
    alerts = {a["transfer_id"]: a for a in read_alerts(day_cluster.etcd_endpoint)}
    flagged = set(alerts) & {t.transfer_id for t in day.transfers}
    result = score(day, flagged)
    print(result.summary())
    labels = day.labels()
    print(
        "flagged normal:",
        sorted((alerts[t]["decision"], *alerts[t]["rules"]) for t in flagged if t not in labels),
    )
    assert result.missed == []
    assert result.false_positive_rate <= FALSE_POSITIVE_RATE_MAX
    for outcome in outcomes:  # the decision is on the stored record, with its alert
        if outcome.status == types_pb2.TRANSFER_STATUS_COMMITTED and outcome.risk.alert_id:
            assert alerts[outcome.id]["alert_id"] == outcome.risk.alert_id
        if outcome.reason == "RISK_BLOCKED":
            assert alerts[outcome.id]["decision"] == "BLOCK"
    stored = {o.id: o for o in outcomes}
    velocity = [p for p in day.patterns if p.kind == synthetic_day.VELOCITY_BURST]
    for pattern in velocity:  # bursts are stopped, not just reported
        assert any(stored[t].reason in ("RISK_BLOCKED", "UNDER_REVIEW") for t in pattern.transfer_ids)


def open_real(bank: BankClient, account_type: int) -> int:
    kind = "business" if account_type == types_pb2.ACCOUNT_TYPE_BUSINESS else "personal"
    return bank.open_account(name="Li Lei", id_number=resident_id(), phone=mobile(), account_type=kind).id


def spending(day: synthetic_day.SyntheticDay) -> dict[int, int]:
    """What each account pays out during the day, plus a margin: funding
    every account with a large sum would itself look like a large sum in."""
    needs: dict[int, int] = {}
    for transfer in day.transfers:
        needs[transfer.debit_account_id] = (
            needs.get(transfer.debit_account_id, MARGIN_MINOR) + transfer.amount
        )
    return needs


def fund(bank: BankClient, amounts: dict[int, int]) -> None:
    deposits = [
        types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_DEPOSIT, credit_account_id=a, amount=amount,
                           currency="CNY")
        for a, amount in amounts.items()
    ]  # fmt: skip
    for start in range(0, len(deposits), BATCH):
        outcomes = bank.submit_transfers(deposits[start : start + BATCH])
        assert all(o.status == types_pb2.TRANSFER_STATUS_COMMITTED for o in outcomes), [
            (o.reason, o.message) for o in outcomes if o.status != types_pb2.TRANSFER_STATUS_COMMITTED
        ]


def push(bank: BankClient, day: synthetic_day.SyntheticDay, real: dict[int, int]) -> list[types_pb2.Transfer]:
    """The day's transfers in time order, in batches, on the real accounts."""
    items = []
    for planned in day.transfers:
        item = planned.to_proto()
        item.debit_account_id, item.credit_account_id = (
            real[planned.debit_account_id],
            real[planned.credit_account_id],
        )
        items.append(item)
    outcomes: list[types_pb2.Transfer] = []
    for start in range(0, len(items), BATCH):
        outcomes.extend(bank.submit_transfers(items[start : start + BATCH]))
    assert all(o.code != 14 for o in outcomes), "a transfer was left unsettled"  # UNAVAILABLE
    return outcomes
