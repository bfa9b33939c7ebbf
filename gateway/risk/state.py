"""Where the features come from: the ledger shards (GetActivity), one call
per shard involved in a batch. Risk state therefore lives with the books:
durable, shared by every gateway, rebuilt by nothing.

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
from gateway.risk.features import AccountActivity, from_summary
from gateway.routing import shard
from gateway.upstream import Cluster, downstream_error
from shardbank import activity, errors, limits
from shardbank.v1 import ledger_pb2, types_pb2

log = structlog.get_logger("gateway.risk")

# (account id, counterparty id or 0)
Query = tuple[int, int]


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


class ActivitySource(Protocol):
    async def fetch(self, queries: Iterable[Query], config: RiskConfig, budget: Budget) -> Fetched: ...


def request_for(queries: list[Query], config: RiskConfig) -> ledger_pb2.GetActivityRequest:
    low, high = config.near_band()
    return ledger_pb2.GetActivityRequest(
        queries=[ledger_pb2.ActivityQuery(account_id=a, counterparty_id=c) for a, c in queries],
        dormancy_ms=config.dormancy_ms,
        near_amount_low=low,
        near_amount_high=high,
    )


@dataclass(eq=False)
class _Waiting:
    queries: list[Query]
    future: asyncio.Future[list[ledger_pb2.ActivitySummary] | None]


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

    async def fetch(self, queries: Iterable[Query], config: RiskConfig, budget: Budget) -> Fetched:
        fetched = Fetched()
        pending = sorted(set(queries))
        for attempt in range(2):
            moved = await self._round(pending, config, budget, fetched)
            if not moved or attempt == 1:
                fetched.unavailable |= {account for account, _ in moved}
                break
            await self._cluster.refresh_map()
            pending = moved
        return fetched

    async def _round(
        self, queries: list[Query], config: RiskConfig, budget: Budget, fetched: Fetched
    ) -> list[Query]:
        by_shard: dict[str, list[Query]] = defaultdict(list)
        for query in queries:
            try:
                by_shard[self._cluster.owner(query[0])].append(query)
            except errors.BankError:
                fetched.unavailable.add(query[0])
        shard_ids = list(by_shard)
        replies = await asyncio.gather(
            *(self._ask(s, by_shard[s], config, budget) for s in shard_ids), return_exceptions=False
        )
        moved: list[Query] = []
        for shard_id, reply in zip(shard_ids, replies, strict=True):
            asked = by_shard[shard_id]
            if reply is None or len(reply) != len(asked):
                fetched.unavailable |= {account for account, _ in asked}
                continue
            for query, summary in zip(asked, reply, strict=True):
                if summary.code == 0:
                    fetched.found[query] = Found(from_summary(summary), summary.counterparty_known)
                elif summary.reason == errors.SLOT_MOVED:
                    moved.append(query)
        return moved

    async def _ask(
        self, shard_id: str, queries: list[Query], config: RiskConfig, budget: Budget
    ) -> list[ledger_pb2.ActivitySummary] | None:
        """The summaries of `queries` in order, or None if the shard did not answer."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(queries, loop.create_future())
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
        try:
            unique = list(dict.fromkeys(q for waiting in batch for q in waiting.queries))
            size = limits.BATCH_ITEMS_MAX
            chunks = [unique[i : i + size] for i in range(0, len(unique), size)]
            replies = await asyncio.gather(
                *(self._call(shard_id, chunk, config, timeout_s) for chunk in chunks)
            )
            for chunk, reply in zip(chunks, replies, strict=True):
                if reply is not None and len(reply.summaries) == len(chunk):
                    answers.update(zip(chunk, reply.summaries, strict=True))
        finally:  # every waiting caller gets an answer, whatever happened
            for waiting in batch:
                if waiting.future.done():  # its caller gave up
                    continue
                if all(q in answers for q in waiting.queries):
                    waiting.future.set_result([answers[q] for q in waiting.queries])
                else:
                    waiting.future.set_result(None)

    async def _call(
        self, shard_id: str, queries: list[Query], config: RiskConfig, timeout_s: float
    ) -> ledger_pb2.GetActivityResponse | None:
        try:
            node = self._cluster.node(shard_id)
            reply: ledger_pb2.GetActivityResponse = await node.GetActivity(
                request_for(queries, config), timeout=timeout_s
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
