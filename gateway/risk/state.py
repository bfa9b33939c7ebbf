"""Where the features come from: the ledger shards (GetActivity), one call
per shard involved in a batch. Risk state therefore lives with the books:
durable, shared by every gateway, rebuilt by nothing.

A customer's daily total is summed over every shard: each shard reports the
money out of the customer's accounts it owns (`customer_ids`), and a
customer's accounts sit on several shards. The customers of accounts seen
before are asked in the same calls as the accounts (every shard gets one);
an account seen for the first time costs one more round for its customer.

`MemoryActivity` answers the same questions in-process from the same window
code (shardbank.activity) over a simulated clock: the synthetic-day
evaluation uses it to score hundreds of thousands of transfers in seconds.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import structlog

from gateway.dispatch import Budget
from gateway.risk.config import RiskConfig
from gateway.risk.features import AccountActivity, Window, from_summary
from gateway.routing import shard
from gateway.upstream import Cluster, downstream_error
from shardbank import activity, errors, limits
from shardbank.v1 import ledger_pb2, types_pb2

log = structlog.get_logger("gateway.risk")

# (account id, counterparty id or 0)
Query = tuple[int, int]
# Account -> customer ids remembered (a customer id never changes: it is not
# among the contact details an update may set); oldest forgotten first.
CUSTOMERS_KNOWN_MAX = 200_000


@dataclass(frozen=True)
class Found:
    account: AccountActivity
    counterparty_known: bool


@dataclass
class Fetched:
    """The answer to one fetch (its own: concurrent requests share the source)."""

    # What is known of each queried account; a missing key: no such account,
    # or in `unavailable`.
    found: dict[Query, Found] = field(default_factory=dict)
    # Accounts whose shard did not answer (their transfers cannot be checked).
    unavailable: set[int] = field(default_factory=set)
    # customer id -> shard id -> money out in 24 h over the accounts it owns.
    customer_totals: dict[str, dict[str, ledger_pb2.WindowTotals]] = field(default_factory=dict)


class ActivitySource(Protocol):
    async def fetch(self, queries: Iterable[Query], config: RiskConfig, budget: Budget) -> Fetched: ...


def request_for(
    queries: list[Query], config: RiskConfig, customers: list[str] | None = None
) -> ledger_pb2.GetActivityRequest:
    low, high = config.near_band()
    return ledger_pb2.GetActivityRequest(
        queries=[ledger_pb2.ActivityQuery(account_id=a, counterparty_id=c) for a, c in queries],
        dormancy_ms=config.dormancy_ms,
        near_amount_low=low,
        near_amount_high=high,
        customer_ids=customers or [],
    )


# One shard's answer to a caller: the summaries of its queries, in order, and
# the totals of those of its customers the shard gave (a node older than
# `customer_ids` gives none); None if it did not answer the queries.
Answer = tuple[list[ledger_pb2.ActivitySummary], dict[str, ledger_pb2.CustomerTotal]] | None


@dataclass(eq=False)
class _Waiting:
    queries: list[Query]
    customers: list[str]
    future: asyncio.Future[Answer]


def sum_customer_totals(fetched: Fetched) -> None:
    """Replace each found account's `customer_out_24h` (its own shard's part)
    by the sum of the parts every shard asked gave. A shard that did not
    answer leaves the sum a lower bound, and never below the part the
    account's shard reported."""
    for found in fetched.found.values():
        account = found.account
        parts = fetched.customer_totals.get(account.customer_id)
        if not account.customer_id or parts is None:
            continue
        count = sum(part.count for part in parts.values())
        amount = sum(part.amount for part in parts.values())
        if amount > account.customer_out_24h.amount:
            account.customer_out_24h = Window(count, amount)


class ShardActivity:
    """GetActivity on the shards owning the accounts, concurrently; a query
    that meets SLOT_MOVED is asked again once after a slot map refresh.

    Concurrent requests coalesce: the queries for one shard of every request
    that reaches this point in the same event-loop turn ride one GetActivity
    (as clients coalesce transfers), so single-transfer calls do not each pay
    a round trip of their own."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._waiting: dict[str, list[_Waiting]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self._customer_of: dict[int, str] = {}

    async def fetch(self, queries: Iterable[Query], config: RiskConfig, budget: Budget) -> Fetched:
        fetched = Fetched()
        pending = sorted(set(queries))
        known = {c for a, _ in pending if (c := self._customer_of.get(a))}
        customers = sorted(known)
        for attempt in range(2):
            moved = await self._round(pending, customers, config, budget, fetched)
            customers = []
            if not moved or attempt == 1:
                fetched.unavailable |= {account for account, _ in moved}
                break
            await self._cluster.refresh_map()
            pending = moved
        self._remember(fetched)
        learned = sorted({f.account.customer_id for f in fetched.found.values()} - known - {""})
        if learned:
            await self._round([], learned, config, budget, fetched)
        sum_customer_totals(fetched)
        return fetched

    def _remember(self, fetched: Fetched) -> None:
        for found in fetched.found.values():
            account = found.account
            if account.customer_id and account.account_id not in self._customer_of:
                self._customer_of[account.account_id] = account.customer_id
                if len(self._customer_of) > CUSTOMERS_KNOWN_MAX:
                    del self._customer_of[next(iter(self._customer_of))]

    async def _round(
        self,
        queries: list[Query],
        customers: list[str],
        config: RiskConfig,
        budget: Budget,
        fetched: Fetched,
    ) -> list[Query]:
        """Ask each account's shard about it, and every shard about `customers`."""
        by_shard: dict[str, list[Query]] = defaultdict(list)
        for query in queries:
            try:
                by_shard[self._cluster.owner(query[0])].append(query)
            except errors.BankError:
                fetched.unavailable.add(query[0])
        if customers and self._cluster.has_slot_map():
            for shard_id in self._cluster.slot_map.shard_ids():  # a customer's accounts may be anywhere
                by_shard.setdefault(shard_id, [])
        shard_ids = list(by_shard)
        replies = await asyncio.gather(
            *(self._ask(s, by_shard[s], customers, config, budget) for s in shard_ids),
            return_exceptions=False,
        )
        moved: list[Query] = []
        for shard_id, reply in zip(shard_ids, replies, strict=True):
            asked = by_shard[shard_id]
            totals = {} if reply is None else reply[1]
            if len(totals) != len(customers):
                log.warning(
                    "risk_customer_totals_partial", shard_id=shard_id, missing=len(customers) - len(totals)
                )
            for customer_id, total in totals.items():
                fetched.customer_totals.setdefault(customer_id, {})[shard_id] = total.out_24h
            if reply is None or len(reply[0]) != len(asked):
                fetched.unavailable |= {account for account, _ in asked}
                continue
            for query, summary in zip(asked, reply[0], strict=True):
                if summary.code == 0:
                    fetched.found[query] = Found(from_summary(summary), summary.counterparty_known)
                elif summary.reason == errors.SLOT_MOVED:
                    moved.append(query)
        return moved

    async def _ask(
        self, shard_id: str, queries: list[Query], customers: list[str], config: RiskConfig, budget: Budget
    ) -> Answer:
        """The summaries of `queries` in order and the totals the shard gave
        of `customers`; None if it did not answer the queries."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(queries, customers, loop.create_future())
        queue = self._waiting.get(shard_id)
        if queue is None:
            self._waiting[shard_id] = queue = []
            loop.call_soon(self._start_flush, shard_id, config, budget.call_timeout_s())
        queue.append(waiting)
        return await waiting.future

    def _start_flush(self, shard_id: str, config: RiskConfig, timeout_s: float) -> None:
        task = asyncio.ensure_future(self._flush(shard_id, config, timeout_s))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, shard_id: str, config: RiskConfig, timeout_s: float) -> None:
        batch = self._waiting.pop(shard_id, [])
        answers: dict[Query, ledger_pb2.ActivitySummary] = {}
        totals: dict[str, ledger_pb2.CustomerTotal] = {}
        try:
            unique = list(dict.fromkeys(q for waiting in batch for q in waiting.queries))
            customers = list(dict.fromkeys(c for waiting in batch for c in waiting.customers))
            size = limits.BATCH_ITEMS_MAX
            chunks = [
                (unique[i : i + size], customers[i : i + size])
                for i in range(0, max(len(unique), len(customers)), size)
            ]
            replies = await asyncio.gather(
                *(self._call(shard_id, queries, names, config, timeout_s) for queries, names in chunks)
            )
            for (queries, names), reply in zip(chunks, replies, strict=True):
                if reply is None:
                    continue
                if len(reply.summaries) == len(queries):
                    answers.update(zip(queries, reply.summaries, strict=True))
                if len(reply.customers) == len(names):  # an older node answers none
                    totals.update(zip(names, reply.customers, strict=True))
        finally:  # every waiting caller gets an answer, whatever happened
            for waiting in batch:
                if waiting.future.done():  # its caller gave up
                    continue
                if all(q in answers for q in waiting.queries):
                    given = {c: totals[c] for c in waiting.customers if c in totals}
                    waiting.future.set_result(([answers[q] for q in waiting.queries], given))
                else:
                    waiting.future.set_result(None)

    async def _call(
        self, shard_id: str, queries: list[Query], customers: list[str], config: RiskConfig, timeout_s: float
    ) -> ledger_pb2.GetActivityResponse | None:
        try:
            node = self._cluster.node(shard_id)
            reply: ledger_pb2.GetActivityResponse = await node.GetActivity(
                request_for(queries, config, customers), timeout=timeout_s
            )
            return reply
        except grpc.RpcError as exc:
            error = downstream_error(exc, shard(shard_id))
        except errors.BankError as exc:
            error = exc
        log.warning("risk_activity_unavailable", shard_id=shard_id, reason=error.reason)
        return None


class MemoryActivity:
    """In-process activity over a simulated clock (evaluation, tests): the
    caller opens accounts and records every posting that happened."""

    def __init__(self) -> None:
        self._accounts: dict[int, tuple[int, str, int]] = {}
        self._events: dict[int, list[activity.Event]] = defaultdict(list)
        self.index = activity.ActivityIndex(self._load, self._created_at)
        self.now_ms = 0

    def open(self, account_id: int, account_type: int, customer_id: str, created_at_ms: int) -> None:
        self._accounts[account_id] = (account_type, customer_id, created_at_ms)

    def post(self, transfer: types_pb2.Transfer, at_ms: int) -> None:
        """A committed transfer between two known accounts (cash sides ignored)."""
        debit, credit, amount = transfer.debit_account_id, transfer.credit_account_id, transfer.amount
        for account_id, delta, other in ((debit, -amount, credit), (credit, amount, debit)):
            if account_id in self._accounts:
                self._events[account_id].append((at_ms, delta, other))
                self.index.observe(account_id, at_ms, delta, other)

    def _load(self, account_id: int) -> Iterable[activity.Event]:
        return reversed(self._events.get(account_id, []))

    def _created_at(self, account_id: int) -> int:
        return self._accounts.get(account_id, (0, "", 0))[2]

    async def fetch(self, queries: Iterable[Query], config: RiskConfig, budget: Budget) -> Fetched:
        return Fetched(self.fetch_now(queries, config))

    def fetch_now(self, queries: Iterable[Query], config: RiskConfig) -> dict[Query, Found]:
        low, high = config.near_band()
        found: dict[Query, Found] = {}
        for account_id, counterparty in set(queries):
            meta = self._accounts.get(account_id)
            if meta is None:
                continue
            summary = activity.summarize(
                self.index.get(account_id, self.now_ms),
                self.now_ms,
                counterparty=counterparty,
                dormancy_ms=config.dormancy_ms,
                near_low=low,
                near_high=high,
            )
            message = activity.summary_message(account_id, meta[0], meta[1], meta[2], summary)
            # Only this account's own 24 h out here: the evaluation has one
            # account per customer per type, so this is the customer's total.
            message.customer_out_24h.CopyFrom(message.out_24h)
            found[(account_id, counterparty)] = Found(from_summary(message), summary.counterparty_known)
        return found
