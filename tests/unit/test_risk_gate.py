"""The risk gate around the engine: a batch sees its own earlier items,
BLOCK/REVIEW/ALLOW are routed apart, alerts only for decisions that became
the transfer's, and a shard that does not answer leaves its items unsettled."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc

from gateway.dispatch import Budget
from gateway.risk import config, engine
from gateway.risk.gate import RiskGate, assess_batch
from gateway.risk.review import RefuseReview
from gateway.risk.state import Fetched, MemoryActivity
from shardbank.v1 import types_pb2

RULES = """
[bands]
review_score = 50
block_score = 100
[rules.velocity_count_1m]
kind = "velocity_count"
weight = 100
window_s = 60
max_count = 3
[rules.review_amount]
kind = "large_amount"
weight = 50
threshold_minor = 10_000
[rules.structuring]
alert_only = true
aml_typology = "STRUCTURING"
threshold_minor = 5_000
band_pct = 10
min_count = 2
"""
NOW_MS = 1_800_000_000_000
ALICE, BOB = 6222020000000001, 6222020000000002


class Holder:
    current = config.parse(RULES)


class Alerts:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def write(self, records: Any) -> None:
        self.records.extend(records)


def move(amount: int) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=str(uuid.uuid4()), kind=types_pb2.TRANSFER_KIND_TRANSFER, debit_account_id=ALICE,
        credit_account_id=BOB, amount=amount, currency="CNY",
    )  # fmt: skip


def activity() -> MemoryActivity:
    memory = MemoryActivity()
    memory.open(ALICE, types_pb2.ACCOUNT_TYPE_PERSONAL, "c-1", 1)
    memory.open(BOB, types_pb2.ACCOUNT_TYPE_PERSONAL, "c-2", 1)
    memory.now_ms = NOW_MS
    return memory


def test_a_batch_counts_its_own_earlier_items() -> None:
    batch = [move(100) for _ in range(5)]
    found = activity().fetch_now([(ALICE, BOB), (BOB, 0)], Holder.current)
    decisions = [a.decision for a in assess_batch(batch, found, Holder.current, NOW_MS)]
    assert decisions == [engine.ALLOW] * 3 + [engine.BLOCK] * 2


async def node(items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
    """A stand-in node: BLOCK recorded ABORTED, the rest committed, risk stored."""
    outcomes = []
    for item in items:
        outcome = types_pb2.Transfer()
        outcome.CopyFrom(item)
        if item.risk.decision == engine.BLOCK:
            outcome.status, outcome.code, outcome.reason = (
                types_pb2.TRANSFER_STATUS_ABORTED,
                9,
                "RISK_BLOCKED",
            )
        else:
            outcome.status = types_pb2.TRANSFER_STATUS_COMMITTED
        outcomes.append(outcome)
    return outcomes


def test_the_gate_routes_holds_and_alerts() -> None:
    alerts = Alerts()
    gate = RiskGate(Holder(), activity(), alerts, RefuseReview(), clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    batch = [move(4_600), move(4_700), move(20_000), move(10), move(10)]
    outcomes = asyncio.run(gate.run(batch, Budget(5.0), node))
    assert [o.reason for o in outcomes] == ["", "", "RISK_REVIEW_UNAVAILABLE", "", "RISK_BLOCKED"]
    assert outcomes[2].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert outcomes[2].status == types_pb2.TRANSFER_STATUS_REJECTED
    by_transfer = {r["transfer_id"]: r for r in alerts.records}
    assert set(by_transfer) == {batch[1].id, batch[2].id, batch[4].id}
    assert by_transfer[batch[1].id]["aml_typologies"] == ["STRUCTURING"]
    assert by_transfer[batch[1].id]["decision"] == "ALLOW"
    assert by_transfer[batch[2].id]["decision"] == "REVIEW"
    assert by_transfer[batch[4].id]["decision"] == "BLOCK"
    assert by_transfer[batch[4].id]["customer_id"] == "c-1"
    assert all(
        r["alert_id"] == o.risk.alert_id for o in outcomes for r in alerts.records if r["transfer_id"] == o.id
    )


def test_a_resend_of_a_recorded_id_raises_no_second_alert() -> None:
    alerts = Alerts()
    gate = RiskGate(Holder(), activity(), alerts, RefuseReview(), clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    first_alert = "1800000000000-aaaaaaaaaaaa"

    async def recorded(items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        outcomes = await node(items)
        for outcome in outcomes:
            outcome.risk.alert_id = first_alert  # the stored record's, from the first try
        return outcomes

    batch = [move(100) for _ in range(4)]
    outcomes = asyncio.run(gate.run(batch, Budget(5.0), recorded))
    assert outcomes[3].reason == "RISK_BLOCKED"
    assert alerts.records == []


def test_an_unanswered_shard_leaves_its_items_unsettled() -> None:
    class Down(MemoryActivity):
        async def fetch(self, queries: Any, config: Any, budget: Any) -> Fetched:
            return Fetched({}, {ALICE})

    sent: list[types_pb2.Transfer] = []

    async def record(items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        sent.extend(items)
        return await node(items)

    gate = RiskGate(Holder(), Down(), Alerts(), RefuseReview(), clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    (outcome,) = asyncio.run(gate.run([move(100)], Budget(5.0), record))
    assert outcome.code == grpc.StatusCode.UNAVAILABLE.value[0] and outcome.reason == "SHARD_UNAVAILABLE"
    assert sent == []
