"""The risk gate around the engine: a batch sees its own earlier items,
BLOCK/REVIEW/ALLOW are routed apart, alerts only for decisions that became
the transfer's, and a shard that does not answer leaves its items unsettled."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from gateway.dispatch import Budget
from gateway.risk import config, engine
from gateway.risk.features import AccountActivity
from gateway.risk.gate import BatchView, RiskGate, assess_batch, queries_of
from gateway.risk.review import RefuseReview
from gateway.risk.state import Fetched, Found, MemoryActivity, ShardActivity
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2, types_pb2

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
    """The etcd sink's contract in memory: write puts, settle compares first."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.writes = 0

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self.stored.values())

    async def write(self, records: Any) -> None:
        self.writes += bool(records)
        self.stored.update({r["alert_id"]: dict(r) for r in records})

    async def settle(self, settlements: Any) -> None:
        for intent, final in settlements:
            if self.stored.get(intent["alert_id"]) != intent:
                continue
            if final is None:
                del self.stored[intent["alert_id"]]
            else:
                self.stored[intent["alert_id"]] = dict(final)


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


def test_a_severe_block_freezes_the_account_once() -> None:
    frozen: list[tuple[int, str]] = []

    async def freeze(account_id: int, rule: str) -> None:
        frozen.append((account_id, rule))

    gate = RiskGate(
        Holder(),
        activity(),
        Alerts(),
        RefuseReview(),
        clock_ms=lambda: NOW_MS,
        freeze=freeze,  # type: ignore[arg-type]
    )
    # The fourth payment in a minute breaks velocity_count_1m: BLOCK (HIGH).
    batch = [move(4_600), move(10), move(10), move(10), move(10)]
    outcomes = asyncio.run(gate.run(batch, Budget(5.0), node))
    assert [o.reason for o in outcomes] == ["", "", "", "RISK_BLOCKED", "RISK_BLOCKED"]
    assert frozen == [(ALICE, "velocity_count_1m")]


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


class FakeNode:
    def __init__(self, shard_id: str, cluster: FakeCluster) -> None:
        self._shard_id = shard_id
        self._cluster = cluster

    async def GetActivity(self, request: Any, timeout: float) -> Any:
        cluster = self._cluster
        if request.queries:
            cluster.calls.append((self._shard_id, [q.account_id for q in request.queries]))
        if request.customer_ids:
            cluster.customer_calls.append((self._shard_id, list(request.customer_ids)))
        if self._shard_id in cluster.down:
            raise BankError(grpc.StatusCode.UNAVAILABLE, "SHARD_UNAVAILABLE", "down")
        if self._shard_id in cluster.old and not request.queries:  # no customer_ids: an empty batch
            raise BankError(grpc.StatusCode.INVALID_ARGUMENT, "BATCH_EMPTY", "no queries")
        summaries = []
        for query in request.queries:
            moved = cluster.moved_once.pop(query.account_id, False)
            customer = cluster.customer_of.get(query.account_id, self._shard_id)
            own_part = ledger_pb2.WindowTotals(count=1, amount=cluster.out.get((self._shard_id, customer), 0))
            summaries.append(
                ledger_pb2.ActivitySummary(account_id=query.account_id, code=10, reason="SLOT_MOVED")
                if moved
                else ledger_pb2.ActivitySummary(
                    account_id=query.account_id, customer_id=customer, customer_out_24h=own_part
                )
            )
        if self._shard_id in cluster.short:
            summaries = summaries[:-1]
        totals = [
            ledger_pb2.CustomerTotal(
                customer_id=c,
                out_24h=ledger_pb2.WindowTotals(count=1, amount=cluster.out.get((self._shard_id, c), 0)),
            )
            for c in request.customer_ids
            if self._shard_id not in cluster.old
        ]
        return ledger_pb2.GetActivityResponse(summaries=summaries, customers=totals)


class FakeSlotMap:
    def shard_ids(self) -> list[str]:
        return ["shard-1", "shard-2"]


class FakeCluster:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.customer_calls: list[tuple[str, list[str]]] = []
        self.down: set[str] = set()
        self.short: set[str] = set()
        # Nodes older than GetActivityRequest.customer_ids (a rolling upgrade).
        self.old: set[str] = set()
        self.moved_once: dict[int, bool] = {}
        self.refreshed = 0
        # account -> customer (default: the shard id); (shard, customer) -> money out in 24 h
        self.customer_of: dict[int, str] = {}
        self.out: dict[tuple[str, str], int] = {}
        self.slot_map = FakeSlotMap()

    def has_slot_map(self) -> bool:
        return True

    def owner(self, account_id: int) -> str:
        return f"shard-{account_id % 2 + 1}"

    def node(self, shard_id: str) -> FakeNode:
        return FakeNode(shard_id, self)

    async def refresh_map(self) -> None:
        self.refreshed += 1


def test_shard_activity_asks_each_shard_once_and_reports_what_it_could_not_learn() -> None:
    cluster = FakeCluster()
    source = ShardActivity(cluster)  # type: ignore[arg-type]
    queries = [(10, 11), (11, 0), (12, 0), (13, 0)]
    cluster.moved_once[12] = True
    fetched = asyncio.run(source.fetch(queries, Holder.current, Budget(5.0)))
    assert sorted(s for s, _ in cluster.calls) == [
        "shard-1",
        "shard-1",
        "shard-2",
    ]  # shard-1 again after SLOT_MOVED
    assert cluster.refreshed == 1
    assert set(fetched.found) == set(queries) and fetched.unavailable == set()
    assert fetched.found[(11, 0)].account.customer_id == "shard-2"
    cluster.down, cluster.short = {"shard-2"}, {"shard-1"}
    fetched = asyncio.run(source.fetch(queries, Holder.current, Budget(5.0)))
    assert fetched.found == {} and fetched.unavailable == {10, 11, 12, 13}


def test_concurrent_requests_share_one_call_per_shard() -> None:
    cluster = FakeCluster()
    source = ShardActivity(cluster)  # type: ignore[arg-type]

    async def both() -> list[Fetched]:
        return await asyncio.gather(
            source.fetch([(10, 11), (11, 0)], Holder.current, Budget(5.0)),
            source.fetch([(12, 0), (11, 0)], Holder.current, Budget(5.0)),
        )

    first, second = asyncio.run(both())
    assert sorted(cluster.calls) == [("shard-1", [10, 12]), ("shard-2", [11])]
    assert set(first.found) == {(10, 11), (11, 0)} and set(second.found) == {(12, 0), (11, 0)}


def test_a_customers_daily_total_is_summed_over_every_shard() -> None:
    """Alice has account 10 on shard-1 and account 11 on shard-2: paying out
    of 10 counts what 11 paid today too. The first fetch learns 10's customer
    and asks both shards in a second round; later ones ask in the same calls."""
    cluster = FakeCluster()
    cluster.customer_of = {10: "alice", 11: "alice"}
    cluster.out = {("shard-1", "alice"): 700, ("shard-2", "alice"): 500}
    source = ShardActivity(cluster)  # type: ignore[arg-type]

    fetched = asyncio.run(source.fetch([(10, 99)], Holder.current, Budget(5.0)))
    assert fetched.found[(10, 99)].account.customer_out_24h.amount == 1200
    assert cluster.calls == [("shard-1", [10])]
    assert sorted(cluster.customer_calls) == [("shard-1", ["alice"]), ("shard-2", ["alice"])]

    cluster.calls.clear()
    cluster.customer_calls.clear()
    fetched = asyncio.run(source.fetch([(10, 99)], Holder.current, Budget(5.0)))
    assert fetched.found[(10, 99)].account.customer_out_24h.amount == 1200
    assert cluster.calls == [("shard-1", [10])]  # one round: the customer rode along
    assert sorted(cluster.customer_calls) == [("shard-1", ["alice"]), ("shard-2", ["alice"])]

    # A shard that does not answer leaves a lower bound: never below the
    # account's own shard, and the account itself is still checked.
    cluster.down = {"shard-2"}
    fetched = asyncio.run(source.fetch([(10, 99)], Holder.current, Budget(5.0)))
    assert fetched.found[(10, 99)].account.customer_out_24h.amount == 700
    assert fetched.unavailable == set()


DAILY_LIMIT = config.parse(
    """
[bands]
review_score = 50
block_score = 100
[rules.customer_daily_limit]
weight = 50
limit_minor = 1_250
"""
)


def test_a_node_older_than_customer_totals_still_answers_for_its_accounts() -> None:
    """In a rolling upgrade a node that ignores `customer_ids` (and refuses a
    call with none of its accounts) leaves the total a lower bound; the
    transfers are still checked, not refused as unanswered."""
    cluster = FakeCluster()
    cluster.customer_of = {10: "alice", 11: "alice"}
    cluster.out = {("shard-1", "alice"): 700, ("shard-2", "alice"): 500}
    cluster.old = {"shard-1", "shard-2"}
    source = ShardActivity(cluster)  # type: ignore[arg-type]
    for _ in range(2):  # learning the customer, then knowing it
        fetched = asyncio.run(source.fetch([(10, 99)], Holder.current, Budget(5.0)))
        assert fetched.unavailable == set()
        assert fetched.found[(10, 99)].account.customer_out_24h.amount == 700
    cluster.old = {"shard-2"}  # shard-1 upgraded: its own part, still a lower bound
    fetched = asyncio.run(source.fetch([(10, 99)], Holder.current, Budget(5.0)))
    assert fetched.found[(10, 99)].account.customer_out_24h.amount == 700 and fetched.unavailable == set()


def test_the_customer_daily_limit_counts_the_customers_other_shards() -> None:
    """700 out of alice's shard-1 account and 500 out of her shard-2 account
    today: a payment of 60 passes her limit of 1,250 only when both shards'
    parts are counted (before, only the debit shard's 700 was)."""
    cluster = FakeCluster()
    cluster.customer_of = {10: "alice", 11: "alice"}
    cluster.out = {("shard-1", "alice"): 700, ("shard-2", "alice"): 500}
    transfer = types_pb2.Transfer(
        id="t-alice",
        kind=types_pb2.TRANSFER_KIND_TRANSFER,
        debit_account_id=10,
        credit_account_id=99,
        amount=60,
        currency="CNY",
    )

    def rules_fired() -> tuple[str, ...]:
        source = ShardActivity(cluster)  # type: ignore[arg-type]
        fetched = asyncio.run(source.fetch(queries_of(transfer), DAILY_LIMIT, Budget(5.0)))
        (assessment,) = assess_batch([transfer], fetched.found, DAILY_LIMIT, NOW_MS)
        return assessment.rules

    assert rules_fired() == ("customer_daily_limit",)
    del cluster.out[("shard-2", "alice")]
    assert rules_fired() == ()


def test_a_batch_adds_each_payment_to_the_customers_other_accounts() -> None:
    """Two accounts of one customer pay out in one batch: the second sees the
    first's amount in the customer's daily total."""
    alice_1 = AccountActivity(account_id=10, customer_id="alice")
    alice_2 = AccountActivity(account_id=12, customer_id="alice")
    found = {(10, 0): Found(alice_1, False), (12, 0): Found(alice_2, False)}
    view = BatchView(found, Holder.current)
    view.moved(types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_WITHDRAWAL, debit_account_id=10, amount=300))
    assert alice_1.customer_out_24h.amount == 300 and alice_2.customer_out_24h.amount == 300


def test_alerts_are_written_before_the_transfers_are_routed() -> None:
    """A gateway that dies after routing must not leave a flagged transfer
    without its alert: when `send` runs, the alerts are already stored."""
    alerts = Alerts()
    gate = RiskGate(Holder(), activity(), alerts, RefuseReview(), clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    batch = [move(4_600), move(4_700), move(10), move(10)]
    seen_at_routing: list[str] = []

    async def dies_after_moving(items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        seen_at_routing.extend(r["transfer_id"] for r in alerts.records)
        await node(items)
        raise asyncio.CancelledError  # the process went away before answering

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(gate.run(batch, Budget(5.0), dies_after_moving))
    assert set(seen_at_routing) == {batch[1].id, batch[3].id}  # structuring alert-only, velocity BLOCK
    assert {r["transfer_id"] for r in alerts.records} == {batch[1].id, batch[3].id}


class OfficerActsDuringTheHold:
    """A review sink during whose hold a risk officer acknowledges every alert."""

    def __init__(self, alerts: Alerts) -> None:
        self._alerts = alerts

    async def hold_for_review(
        self, transfers: list[types_pb2.Transfer], assessments: Any, budget: Budget
    ) -> list[types_pb2.Transfer]:
        for record in self._alerts.stored.values():
            record["status"] = "ACKNOWLEDGED"
        return await RefuseReview().hold_for_review(transfers, assessments, budget)


def test_settling_never_overwrites_what_an_officer_did_meanwhile() -> None:
    alerts = Alerts()
    officer = OfficerActsDuringTheHold(alerts)
    gate = RiskGate(Holder(), activity(), alerts, officer, clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    # REVIEW, then refused: the intent's PENDING would be settled away, but the alert changed.
    (outcome,) = asyncio.run(gate.run([move(20_000)], Budget(5.0), node))
    assert outcome.reason == "RISK_REVIEW_UNAVAILABLE"
    (record,) = alerts.records
    assert (record["status"], record["review_state"]) == ("ACKNOWLEDGED", "PENDING")


def test_a_review_refused_settles_the_intent_to_no_pending_review() -> None:
    alerts = Alerts()
    gate = RiskGate(Holder(), activity(), alerts, RefuseReview(), clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    (outcome,) = asyncio.run(gate.run([move(20_000)], Budget(5.0), node))
    (record,) = alerts.records
    assert outcome.reason == "RISK_REVIEW_UNAVAILABLE"
    assert (record["decision"], record["review_state"], record["status"]) == ("REVIEW", "", "OPEN")
