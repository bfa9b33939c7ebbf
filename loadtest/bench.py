"""`shardbank bench`: transfers/s and latency of shardbank next to PostgreSQL, same box, same run.

It starts a fresh `LocalCluster` in a temp dir, opens and funds `--accounts`
accounts (batched `OpenAccounts`, batched deposits), then runs each scenario
for `--duration` seconds with a closed-loop asyncio load generator (a fixed
number of calls in flight; each worker sends its next call when the previous
one answered):

- S1 batched single-shard: 1000 transfers per call, both accounts of each
  transfer on the same shard (paired by the slot map read from etcd);
- S2 batched cross-shard (2PC): 1000 transfers per call, accounts on two shards;
- S3 64 concurrent callers, one transfer per call, 80/20 single/cross mix,
  through one `AsyncBankClient(coalesce=True)`: the client library folds
  concurrent single transfers into shared `SubmitTransfers` calls, as
  TigerBeetle's clients do (issue #5's fast path asks for exactly this);
- S3U the same 64 callers through a client that does not coalesce (one gRPC
  call per transfer), so the table shows what coalescing buys;
- S4 HTTP/JSON, one transfer per request (`POST /v1/transfers`), 80/20 mix;
- S5 HTTP/JSON, 100 transfers per request (`POST /v1/transfers:batch`), 80/20 mix;

and then the PostgreSQL baseline (`loadtest.pg_baseline`, one transaction per
transfer, 32 pgbench clients). After every scenario it checks the books: the
sum of all opened accounts' balances equals what was deposited, nothing is
held or pending, and the shards' cash accounts mirror it (per currency every
balance sums to 0). A broken check raises `BooksDoNotBalance` and the run
fails. Latency is per call (a batched call's latency covers all its
transfers); transfers/s counts committed transfers answered inside the
measured window. The cluster is stopped (by PID, `LocalCluster.stop`) in all
cases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import orjson

from clients.aio import AsyncBankClient
from clients.channel import CHANNEL_OPTIONS
from clients.local_cluster import LocalCluster
from loadtest.http_load import HttpPool
from shardbank import ids, meta
from shardbank.identity import cn_check_digit
from shardbank.slots import SlotMap
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

CURRENCY = "CNY"
# Minor units deposited into every account: large enough that a random walk of
# small transfers never meets INSUFFICIENT_FUNDS during a run.
OPENING_DEPOSIT_MINOR = 1_000_000_000
AMOUNT_MINOR_MAX = 100
# Accounts per OpenAccounts / deposit batch / GetAccounts call during set-up and checks.
SETUP_BATCH_ITEMS = 1000
# Set-up and check calls in flight at once.
SETUP_CALLS_IN_FLIGHT = 4
# Transfers per call of the batched gRPC scenarios (S1, S2) and the HTTP batch scenario (S5).
GRPC_BATCH_ITEMS = 1000
HTTP_BATCH_ITEMS = 100
CROSS_SHARD_FRACTION_MIX = 0.2
# Deadline of one call under load; generous, because a loaded 2-core box is slow.
LOAD_CALL_DEADLINE_S = 30.0
# After a scenario, how long prepared 2PC legs may take to finish before the books check fails.
SETTLE_WAIT_S = 30.0
SETTLE_POLL_S = 0.2
PG_CLIENTS = 32
PG_SYSTEM = "postgresql"
SHARDBANK_SYSTEM = "shardbank"
# Scenario names of a run with the gateway's risk check on (with --risk both).
RISK_SUFFIX = "+risk"
RESULTS_DIR_DEFAULT = "bench-results"


class BenchError(RuntimeError):
    """The benchmark could not run as asked (set-up failed, a call failed)."""


class BooksDoNotBalance(BenchError):
    """Money was lost or made: the run's numbers are worthless and the system has a bug."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    # Calls in flight at once (closed loop).
    concurrency: int
    transfers_per_call: int
    cross_shard_fraction: float
    transport: str  # "grpc-batch" | "grpc-single" | "grpc-coalesce" | "http-single" | "http-batch"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("S1", "gRPC batch 1000, single-shard", 4, GRPC_BATCH_ITEMS, 0.0, "grpc-batch"),
        Scenario("S2", "gRPC batch 1000, cross-shard 2PC", 4, GRPC_BATCH_ITEMS, 1.0, "grpc-batch"),
        Scenario(
            "S3",
            "gRPC 1/call x64, 80/20 mix, coalescing client",
            64,
            1,
            CROSS_SHARD_FRACTION_MIX,
            "grpc-coalesce",
        ),
        Scenario(
            "S3U", "gRPC 1/call x64, 80/20 mix, one call each", 64, 1, CROSS_SHARD_FRACTION_MIX, "grpc-single"
        ),
        Scenario("S4", "HTTP 1/request, 80/20 mix", 64, 1, CROSS_SHARD_FRACTION_MIX, "http-single"),
        Scenario(
            "S5", "HTTP batch 100, 80/20 mix", 8, HTTP_BATCH_ITEMS, CROSS_SHARD_FRACTION_MIX, "http-batch"
        ),
    )
}


@dataclass(frozen=True)
class Row:
    """One line of the result table (and one object of `--json`)."""

    scenario: str
    system: str
    tps: float
    p50_ms: float
    p99_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "system": self.system,
            "tps": round(self.tps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
        }


@dataclass
class Tally:
    """What the workers of one scenario saw inside the measured window."""

    latencies_ms: list[float] = field(default_factory=list)
    transfers: int = 0
    # Committed in the whole scenario, warm-up and tail included: what the
    # components' CPU time (measured over the whole scenario) is divided by.
    transfers_all: int = 0
    refused: int = 0
    calls_failed: int = 0
    first_failure: str = ""


# ---- pure helpers (unit-tested) ------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of sorted values; 0.0 if empty.

    The same definition as `loadtest.pg_baseline`, so both systems' p99 mean the same thing.
    """
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    if not sorted_values:
        return 0.0
    rank = max(1, -(-q * len(sorted_values) // 100))  # ceil(q/100 * n), at least 1
    return sorted_values[min(int(rank), len(sorted_values)) - 1]


def group_by_shard(account_ids: Sequence[int], owner: Callable[[int], str]) -> dict[str, list[int]]:
    """Account ids per owning shard (ids keep their order), shards sorted."""
    groups: dict[str, list[int]] = {}
    for account_id in account_ids:
        groups.setdefault(owner(account_id), []).append(account_id)
    return dict(sorted(groups.items()))


def pick_pair(groups: dict[str, list[int]], cross_shard: bool, rng: random.Random) -> tuple[int, int]:
    """Two distinct accounts: on one shard, or on two different shards."""
    shards = [s for s, members in groups.items() if len(members) >= (1 if cross_shard else 2)]
    if cross_shard:
        if len(shards) < 2:
            raise BenchError("a cross-shard pair needs accounts on at least two shards")
        debit_shard, credit_shard = rng.sample(shards, 2)
        return rng.choice(groups[debit_shard]), rng.choice(groups[credit_shard])
    if not shards:
        raise BenchError("a single-shard pair needs a shard with at least two accounts")
    debit, credit = rng.sample(groups[rng.choice(shards)], 2)
    return debit, credit


def ratio_to(tps: float, baseline_tps: float | None) -> str:
    if baseline_tps is None or baseline_tps <= 0:
        return "-"
    return f"{tps / baseline_tps:.2f}x"


def format_table(rows: Sequence[Row], baseline_tps: float | None) -> str:
    """The one result table, fixed-width, aligned."""
    header = ["SCENARIO", "SYSTEM", "TRANSFERS/S", "P50 MS", "P99 MS", "VS POSTGRESQL"]
    body = [
        [
            r.scenario,
            r.system,
            f"{r.tps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            ratio_to(r.tps, baseline_tps),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {2, 3, 4, 5}

    def fmt(line: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(line) for line in [header, *body])


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [row.to_json() for row in rows]


def summarize(scenario: str, tally: Tally, window_s: float) -> Row:
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    lat = sorted(tally.latencies_ms)
    return Row(
        scenario, SHARDBANK_SYSTEM, tally.transfers / window_s, percentile(lat, 50), percentile(lat, 99)
    )


def parse_scenarios(text: str) -> list[Scenario]:
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS and n != "PG"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {','.join(SCENARIOS)},PG; got {text!r}")
    return [SCENARIOS[n] for n in names if n in SCENARIOS]


def runnable(scenarios: Sequence[Scenario], shards: int) -> tuple[list[Scenario], list[Scenario]]:
    """(to run, skipped): with one shard nothing can cross shards, so every
    scenario with a cross-shard fraction is skipped rather than failed."""
    if shards >= 2:
        return list(scenarios), []
    return (
        [s for s in scenarios if s.cross_shard_fraction == 0],
        [s for s in scenarios if s.cross_shard_fraction > 0],
    )


def cpu_us_per_transfer(cpu_s_by_kind: dict[str, float], transfers: int) -> dict[str, float]:
    """CPU microseconds each kind of component spent per committed transfer
    (summed over the processes of that kind); empty if nothing committed."""
    if transfers <= 0:
        return {}
    return {kind: round(cpu_s * 1e6 / transfers, 1) for kind, cpu_s in sorted(cpu_s_by_kind.items())}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc); 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_kind(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds so far per component kind, plus this process (the load generator: `client`)."""
    totals: dict[str, float] = {}
    for component in cluster.components():
        if component.pid is not None:
            totals[component.kind] = totals.get(component.kind, 0.0) + process_cpu_s(component.pid)
    own = os.times()
    totals["client"] = own.user + own.system
    return totals


def resident_id(n: int) -> str:
    """A valid, deterministic mainland resident ID for bench holder n."""
    first17 = f"1101051990{(n % 12) + 1:02d}{(n % 28) + 1:02d}{n % 1000:03d}"
    return first17 + cn_check_digit(first17)


# ---- cluster access ---------------------------------------------------------------


def auth_token(cluster: object) -> str | None:
    """The cluster's admin API key once gateway auth exists; None before."""
    token = getattr(cluster, "admin_token", None)
    return token if isinstance(token, str) and token else None


def node_channel_factory(cluster: object) -> Callable[[str], grpc.aio.Channel]:
    """Channels straight to ledger nodes, signed with the cluster secret when services authenticate."""
    secret = getattr(cluster, "cluster_secret", b"")
    interceptors: list[Any] = []
    if secret:
        from shardbank import service_auth  # present once service-to-service auth exists

        interceptors = list(service_auth.channel_interceptors(secret, "bench"))

    def open_channel(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors or None)

    return open_channel


def grpc_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def http_headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def async_client(
    target: str, token: str | None, deadline_s: float, coalesce: bool = False
) -> AsyncBankClient:
    # `token=` only when there is one, so this runs before and after the client grows the argument.
    kwargs: dict[str, Any] = {"token": token} if token else {}
    return AsyncBankClient(target, deadline_s=deadline_s, coalesce=coalesce, **kwargs)


def read_slot_map(etcd_endpoint: str) -> SlotMap:
    client = meta.connect(etcd_endpoint)
    try:
        found = meta.read_slot_map(client)
    finally:
        client.close()
    if found is None:
        raise BenchError("no slot map in etcd")
    return found


def chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def bounded_gather(jobs: Sequence[Callable[[], Awaitable[Any]]], in_flight: int) -> list[Any]:
    gate = asyncio.Semaphore(in_flight)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


# ---- set-up -------------------------------------------------------------------------


async def open_accounts(gateway: str, token: str | None, count: int) -> list[int]:
    """Open `count` personal CNY accounts through batched OpenAccounts (the client has no batch open)."""
    async with grpc.aio.insecure_channel(gateway, options=CHANNEL_OPTIONS) as channel:
        stub = bank_pb2_grpc.BankStub(channel)

        def job(first: int, size: int) -> Callable[[], Awaitable[list[int]]]:
            async def run() -> list[int]:
                items = [
                    bank_pb2.OpenAccountRequest(
                        currency=CURRENCY,
                        type=types_pb2.ACCOUNT_TYPE_PERSONAL,
                        holder=types_pb2.Holder(
                            name=f"Bench {n}",
                            id_type=types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID,
                            id_number=resident_id(n),
                            phone=f"+86139{n % 10**8:08d}",
                        ),
                    )
                    for n in range(first, first + size)
                ]
                reply = await stub.OpenAccounts(
                    bank_pb2.OpenAccountsRequest(accounts=items),
                    timeout=LOAD_CALL_DEADLINE_S,
                    wait_for_ready=True,
                    metadata=grpc_metadata(token),
                )
                refused = [r for r in reply.results if r.code != 0]
                if refused or len(reply.results) != size:
                    raise BenchError(f"OpenAccounts refused {len(refused)} of {size}: {refused[:1]}")
                return [r.account.id for r in reply.results]

            return run

        jobs = [
            job(first, min(SETUP_BATCH_ITEMS, count - first)) for first in range(0, count, SETUP_BATCH_ITEMS)
        ]
        opened = await bounded_gather(jobs, SETUP_CALLS_IN_FLIGHT)
    return [account_id for batch in opened for account_id in batch]


async def fund_accounts(client: AsyncBankClient, account_ids: Sequence[int]) -> int:
    """Deposit OPENING_DEPOSIT_MINOR into each account; the total deposited."""

    def job(batch: Sequence[int]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            items = [
                types_pb2.Transfer(
                    kind=types_pb2.TRANSFER_KIND_DEPOSIT,
                    credit_account_id=a,
                    amount=OPENING_DEPOSIT_MINOR,
                    currency=CURRENCY,
                )
                for a in batch
            ]
            refused = [o for o in await client.submit_transfers(items) if o.code != 0]
            if refused:
                raise BenchError(f"{len(refused)} deposits refused, first: {refused[0].reason}")

        return run

    await bounded_gather([job(b) for b in chunks(account_ids, SETUP_BATCH_ITEMS)], SETUP_CALLS_IN_FLIGHT)
    return OPENING_DEPOSIT_MINOR * len(account_ids)


# ---- books check --------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    balance: int
    held: int
    pending_credit: int
    negative: int
    missing: int
    cash_balance: int


async def read_books(
    nodes: dict[str, str],
    groups: dict[str, list[int]],
    cash_ids: dict[str, int],
    open_channel: Callable[[str], grpc.aio.Channel],
) -> Books:
    """Sum every opened account, read from its own shard with batched GetAccounts."""
    totals = {"balance": 0, "held": 0, "pending_credit": 0, "negative": 0, "missing": 0, "cash": 0}
    channels = {s: open_channel(a) for s, a in nodes.items()}
    try:

        def job(shard: str, batch: Sequence[int], cash: bool) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                stub = ledger_pb2_grpc.LedgerNodeStub(channels[shard])
                reply = await stub.GetAccounts(
                    ledger_pb2.GetAccountsRequest(ids=list(batch)), timeout=LOAD_CALL_DEADLINE_S
                )
                for result in reply.results:
                    if result.code != 0:
                        totals["missing"] += 0 if cash else 1  # a cash account appears on first use
                        continue
                    a = result.account
                    if cash:
                        totals["cash"] += a.balance
                        continue
                    totals["balance"] += a.balance
                    totals["held"] += a.held
                    totals["pending_credit"] += a.pending_credit
                    totals["negative"] += a.balance < 0

            return run

        jobs = [job(s, b, False) for s, members in groups.items() for b in chunks(members, SETUP_BATCH_ITEMS)]
        jobs += [job(s, [cash_id], True) for s, cash_id in cash_ids.items()]
        await bounded_gather(jobs, SETUP_CALLS_IN_FLIGHT)
    finally:
        for channel in channels.values():
            await channel.close()
    return Books(
        totals["balance"],
        totals["held"],
        totals["pending_credit"],
        totals["negative"],
        totals["missing"],
        totals["cash"],
    )


def books_problems(books: Books, deposited_minor: int) -> list[str]:
    """What is wrong with the books (empty: they balance). Pure, so it is tested."""
    problems = []
    if books.missing:
        problems.append(f"{books.missing} opened accounts not found")
    if books.balance != deposited_minor:
        problems.append(
            f"customer balances sum to {books.balance}, deposited {deposited_minor} "
            f"(difference {books.balance - deposited_minor})"
        )
    if books.balance + books.cash_balance != 0:
        problems.append(f"customers {books.balance} + cash accounts {books.cash_balance} != 0")
    if books.held or books.pending_credit:
        problems.append(f"still held {books.held}, pending credit {books.pending_credit}")
    if books.negative:
        problems.append(f"{books.negative} customer balances below zero")
    return problems


async def check_books(
    nodes: dict[str, str],
    groups: dict[str, list[int]],
    cash_ids: dict[str, int],
    deposited_minor: int,
    label: str,
    open_channel: Callable[[str], grpc.aio.Channel],
) -> Books:
    """Wait (bounded) for prepared 2PC legs to finish, then insist the books balance."""
    deadline = time.monotonic() + SETTLE_WAIT_S
    while True:
        books = await read_books(nodes, groups, cash_ids, open_channel)
        problems = books_problems(books, deposited_minor)
        settling = books.held or books.pending_credit
        if not problems or not settling or time.monotonic() >= deadline:
            break
        await asyncio.sleep(SETTLE_POLL_S)
    if problems:
        raise BooksDoNotBalance(f"after {label}: " + "; ".join(problems))
    return books


# ---- load -----------------------------------------------------------------------------


class Workload:
    """Random transfers over the opened accounts, by shard."""

    def __init__(self, groups: dict[str, list[int]], seed: int) -> None:
        self.groups = groups
        self.rng = random.Random(seed)

    def transfers(self, count: int, cross_shard_fraction: float) -> list[types_pb2.Transfer]:
        items = []
        for _ in range(count):
            debit, credit = pick_pair(self.groups, self.rng.random() < cross_shard_fraction, self.rng)
            items.append(
                types_pb2.Transfer(
                    id=ids.new_transfer_id(),
                    kind=types_pb2.TRANSFER_KIND_TRANSFER,
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount=self.rng.randint(1, AMOUNT_MINOR_MAX),
                    currency=CURRENCY,
                )
            )
        return items


def transfer_json(t: types_pb2.Transfer, with_kind: bool) -> dict[str, Any]:
    body = {
        "id": t.id,
        "debit_account_id": str(t.debit_account_id),
        "credit_account_id": str(t.credit_account_id),
        "amount": str(t.amount),
        "currency": t.currency,
    }
    if with_kind:
        body["kind"] = "TRANSFER_KIND_TRANSFER"
    return body


# A call: send one batch, return (committed, refused) counts. Raises if the call failed.
Call = Callable[[list[types_pb2.Transfer]], Awaitable[tuple[int, int]]]


async def closed_loop(
    call: Call, workload: Workload, scenario: Scenario, duration_s: float, warmup_s: float
) -> tuple[Tally, float]:
    """`scenario.concurrency` workers, each: build a batch, send, wait, repeat until the deadline.

    Only calls that start after the warm-up and answer before the deadline count.
    Returns the tally and the measured window (seconds)."""
    tally = Tally()
    start = time.monotonic()
    measure_from = start + warmup_s
    deadline = measure_from + duration_s

    async def worker() -> None:
        while time.monotonic() < deadline:
            batch = workload.transfers(scenario.transfers_per_call, scenario.cross_shard_fraction)
            began = time.monotonic()
            try:
                committed, refused = await call(batch)
            except Exception as exc:  # a failed call is counted and reported, the run goes on
                tally.calls_failed += 1
                tally.first_failure = tally.first_failure or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.05)
                continue
            ended = time.monotonic()
            tally.transfers_all += committed
            if began >= measure_from and ended <= deadline:
                tally.latencies_ms.append((ended - began) * 1000.0)
                tally.transfers += committed
                tally.refused += refused

    await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
    return tally, duration_s


def grpc_batch_call(client: AsyncBankClient) -> Call:
    async def call(batch: list[types_pb2.Transfer]) -> tuple[int, int]:
        outcomes = await client.submit_transfers(batch)
        committed = sum(1 for o in outcomes if o.code == 0)
        return committed, len(outcomes) - committed

    return call


def grpc_single_call(client: AsyncBankClient) -> Call:
    async def call(batch: list[types_pb2.Transfer]) -> tuple[int, int]:
        (t,) = batch
        await client.transfer(t.debit_account_id, t.credit_account_id, t.amount, t.currency, t.id)
        return 1, 0

    return call


def http_call(pool: HttpPool, batched: bool) -> Call:
    async def call(batch: list[types_pb2.Transfer]) -> tuple[int, int]:
        if batched:
            body = orjson.dumps({"transfers": [transfer_json(t, True) for t in batch]})
            reply = await pool.post("/v1/transfers:batch", body)
            if reply.status != 200:
                raise BenchError(f"HTTP {reply.status}: {reply.body[:200]!r}")
            outcomes = orjson.loads(reply.body).get("transfers", [])
            committed = sum(1 for o in outcomes if not o.get("code"))
            return committed, len(outcomes) - committed
        (t,) = batch
        reply = await pool.post("/v1/transfers", orjson.dumps(transfer_json(t, False)))
        if reply.status not in (201, 202):
            raise BenchError(f"HTTP {reply.status}: {reply.body[:200]!r}")
        return 1, 0

    return call


# ---- the run --------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    accounts: int = 100_000
    duration_s: float = 20.0
    shards: int = 2
    coordinators: int = 2
    scenarios: tuple[Scenario, ...] = tuple(SCENARIOS.values())
    postgres: bool = True
    concurrency: int | None = None
    warmup_s: float = 1.0
    seed: int = 1
    out_dir: Path = Path(RESULTS_DIR_DEFAULT)
    data_dir: Path | None = None
    keep_data: bool = False
    # Risk check at the gateway: ("off",), ("on",) or both, back to back in
    # one run (a fresh cluster each), to measure what the check costs.
    risk: tuple[str, ...] = ("off",)


@dataclass
class BenchReport:
    rows: list[Row]
    details: list[dict[str, Any]]
    pg_tps: float | None
    started_at: str
    config: dict[str, Any]


async def run_scenario(
    scenario: Scenario, cluster: LocalCluster, token: str | None, workload: Workload, config: BenchConfig
) -> Tally:
    if config.concurrency is not None:
        scenario = Scenario(
            scenario.name,
            scenario.description,
            config.concurrency,
            scenario.transfers_per_call,
            scenario.cross_shard_fraction,
            scenario.transport,
        )
    if scenario.transport.startswith("grpc"):
        client = async_client(
            cluster.gateway_address,
            token,
            LOAD_CALL_DEADLINE_S,
            coalesce=scenario.transport == "grpc-coalesce",
        )
        try:
            call = grpc_batch_call(client) if scenario.transport == "grpc-batch" else grpc_single_call(client)
            tally, _ = await closed_loop(call, workload, scenario, config.duration_s, config.warmup_s)
        finally:
            await client.close_channel()
        return tally
    host, port = cluster.http_address.rsplit(":", 1)
    pool = HttpPool(host, int(port), http_headers(token), scenario.concurrency, LOAD_CALL_DEADLINE_S)
    try:
        call = http_call(pool, scenario.transport == "http-batch")
        tally, _ = await closed_loop(call, workload, scenario, config.duration_s, config.warmup_s)
    finally:
        await pool.close()
    return tally


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run_shardbank(cluster: LocalCluster, config: BenchConfig) -> tuple[list[Row], list[dict[str, Any]]]:
    token = auth_token(cluster)
    slot_map = read_slot_map(cluster.etcd_endpoint)
    began = time.monotonic()
    account_ids = await open_accounts(cluster.gateway_address, token, config.accounts)
    client = async_client(cluster.gateway_address, token, LOAD_CALL_DEADLINE_S)
    try:
        deposited = await fund_accounts(client, account_ids)
    finally:
        await client.close_channel()
    groups = group_by_shard(account_ids, slot_map.owner)
    log(
        f"opened and funded {len(account_ids)} accounts in {time.monotonic() - began:.1f} s: "
        + ", ".join(f"{s} {len(m)}" for s, m in groups.items())
    )
    nodes = cluster.node_addresses
    cash_ids = {s: ids.system_account_id(int(s.rsplit("-", 1)[1]), CURRENCY) for s in nodes}
    open_channel = node_channel_factory(cluster)
    await check_books(nodes, groups, cash_ids, deposited, "set-up", open_channel)
    workload = Workload(groups, config.seed)
    rows, details = [], []
    scenarios, skipped = runnable(config.scenarios, config.shards)
    for scenario in skipped:
        log(f"{scenario.name}: skipped, it crosses shards and there is one shard")
    for scenario in scenarios:
        log(f"{scenario.name}: {scenario.description} for {config.duration_s:.0f} s")
        cpu_before = cpu_by_kind(cluster)
        tally = await run_scenario(scenario, cluster, token, workload, config)
        cpu_after = cpu_by_kind(cluster)
        cpu_s = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
        cpu_us = cpu_us_per_transfer(cpu_s, tally.transfers_all)
        row = summarize(scenario.name, tally, config.duration_s)
        books = await check_books(nodes, groups, cash_ids, deposited, scenario.name, open_channel)
        log(
            f"{scenario.name}: {row.tps:,.0f} transfers/s, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms; "
            f"calls {len(tally.latencies_ms)}, refused {tally.refused}, failed calls {tally.calls_failed}; "
            f"books balance ({books.balance} minor)"
        )
        log(f"{scenario.name}: CPU us per transfer by component: {cpu_us}")
        if tally.first_failure:
            log(f"{scenario.name}: first failed call: {tally.first_failure}")
        rows.append(row)
        details.append(
            {
                **row.to_json(),
                "description": scenario.description,
                "calls": len(tally.latencies_ms),
                "transfers": tally.transfers,
                "refused": tally.refused,
                "calls_failed": tally.calls_failed,
                "first_failure": tally.first_failure,
                "shards": config.shards,
                "transfers_all": tally.transfers_all,
                "cpu_s": {k: round(v, 3) for k, v in sorted(cpu_s.items())},
                "cpu_us_per_transfer": cpu_us,
            }
        )
    return rows, details


def run_postgres(config: BenchConfig) -> Row:
    from loadtest.pg_baseline import run_pg_baseline

    log(f"PG: PostgreSQL baseline, {PG_CLIENTS} clients, one transaction per transfer")
    result = run_pg_baseline(config.accounts, config.duration_s, clients=PG_CLIENTS)
    log(f"PG: {result.tps:,.0f} transfers/s (books checked by pg_baseline)")
    return Row("PG", PG_SYSTEM, result.tps, result.p50_ms, result.p99_ms)


def run(config: BenchConfig) -> BenchReport:
    started_at = time.strftime("%Y%m%dT%H%M%S")
    data_dir = config.data_dir or Path(tempfile.mkdtemp(prefix="shardbank-bench-"))
    rows: list[Row] = []
    details: list[dict[str, Any]] = []
    for risk in config.risk if config.scenarios else ():
        mode_dir = data_dir / f"risk-{risk}" if len(config.risk) > 1 else data_dir
        cluster = LocalCluster(
            mode_dir,
            shards=config.shards,
            coordinators=config.coordinators,
            risk_config="" if risk == "off" else None,
        )
        try:
            log(f"starting a local cluster in {mode_dir} ({config.shards} shards, risk check {risk})")
            cluster.start()
            mode_rows, mode_details = asyncio.run(run_shardbank(cluster, config))
        finally:
            cluster.stop()
            if not config.keep_data and config.data_dir is None:
                shutil.rmtree(mode_dir, ignore_errors=True)
        if risk == "on":
            mode_rows = [replace(row, scenario=row.scenario + RISK_SUFFIX) for row in mode_rows]
            for detail in mode_details:
                detail["scenario"] += RISK_SUFFIX
        rows += mode_rows
        details += mode_details
    if config.scenarios and config.data_dir is None and not config.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    pg_tps = None
    if config.postgres:
        pg_row = run_postgres(config)
        rows.append(pg_row)
        details.append({**pg_row.to_json(), "description": f"pgbench txn, {PG_CLIENTS} clients"})
        pg_tps = pg_row.tps
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "scenarios"
    }
    settings["scenarios"] = [s.name for s in config.scenarios]
    return BenchReport(rows, details, pg_tps, started_at, settings)


def write_results(report: BenchReport, out_dir: Path) -> tuple[Path, Path | None]:
    """`<out_dir>/<timestamp>.json` and the bar chart next to it (None if matplotlib is missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{report.started_at}.json"
    document = {
        "started_at": report.started_at,
        "config": report.config,
        "rows": rows_json(report.rows),
        "details": report.details,
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    try:
        from loadtest import plot
    except ImportError:
        return json_path, None
    png_path = out_dir / f"{report.started_at}.png"
    try:
        plot.bench_bar_chart(rows_json(report.rows), png_path)
    except ImportError:
        log("matplotlib is not installed: no chart")
        return json_path, None
    return json_path, png_path


# ---- CLI ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument(
        "--shards", type=int, default=2, help="ledger nodes (1: the cross-shard scenarios are skipped)"
    )
    parser.add_argument("--coordinators", type=int, default=2)
    parser.add_argument(
        "--scenarios",
        default=",".join([*SCENARIOS, "PG"]),
        help="comma-separated subset of S1,S2,S3,S3U,S4,S5 and PG (default: all)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="calls in flight (default: per scenario)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", default=RESULTS_DIR_DEFAULT, help="where <timestamp>.json/.png go")
    parser.add_argument("--data-dir", default="", help="cluster data dir (default: a fresh temp dir)")
    parser.add_argument(
        "--risk",
        choices=("off", "on", "both"),
        default="off",
        help="gateway risk check (config/risk.toml); both: off then on, back to back, rows S1 / S1+risk",
    )
    parser.set_defaults(handler=cmd_bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.accounts < 4 or args.duration < 1 or args.shards < 1:
        raise BenchError("need --accounts >= 4, --duration >= 1 and --shards >= 1")
    names = {n.strip().upper() for n in args.scenarios.split(",")}
    return BenchConfig(
        accounts=args.accounts,
        duration_s=args.duration,
        shards=args.shards,
        coordinators=args.coordinators,
        scenarios=tuple(parse_scenarios(args.scenarios)),
        postgres="PG" in names,
        concurrency=args.concurrency,
        seed=args.seed,
        out_dir=Path(args.out_dir),
        data_dir=Path(args.data_dir) if args.data_dir else None,
        risk=("off", "on") if args.risk == "both" else (args.risk,),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except argparse.ArgumentTypeError as exc:
        raise BenchError(str(exc)) from None
    report = run(config)
    json_path, png_path = write_results(report, config.out_dir)
    if args.json:
        print(json.dumps(rows_json(report.rows), indent=2))
    else:
        print(format_table(report.rows, report.pg_tps))
    log(f"results: {json_path}" + (f", chart: {png_path}" if png_path else ""))
    return 0
