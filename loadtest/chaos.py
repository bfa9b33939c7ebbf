"""Bank-invariant fault runner (Jepsen's bank workload, on real processes).

It starts a local cluster, opens accounts across the shards with known
opening deposits, and runs concurrent clients doing random transfers (mostly
cross-shard, some overdrafts that must be refused) while a fault schedule
`kill -9`s the coordinator leader, a standby, a ledger node and the gateway at
random moments (each restarted after a pause). Then it checks what a bank
must guarantee:

- every transfer a client saw committed is committed, and every transfer
  whose outcome the client did not learn ends COMMITTED or ABORTED (none stuck);
- each account's balance = opening deposit + committed transfers in - out
  (so nothing was applied twice or lost), no customer balance is negative,
  nothing is held or pending;
- offline, every shard's journal verifies and the books balance per currency.

Used by operators (`shardbank chaos --duration 600`) and by the test suite in a
short form. Only 127.0.0.1; every process it started is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from clients.client import AsyncBankClient, BankClient
from clients.local_cluster import LocalCluster
from coordinator import mover
from ledger_node import verify
from loadtest import chaos_moves
from loadtest.failover_stats import failover_stats
from shardbank import meta
from shardbank.identity import cn_check_digit
from shardbank.slots import SlotMap
from shardbank.v1 import types_pb2

log = structlog.get_logger("chaos")

CURRENCY = "CNY"
OPENING_DEPOSIT_MINOR = 1_000_000
# After the load stops: how long in-doubt transfers may take to end.
RESOLVE_WAIT_S = 60.0
# Status queries in flight while resolving (each fans out to every shard).
RESOLVE_CONCURRENCY = 32
CALL_DEADLINE_S = 5.0

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED


@dataclass(frozen=True)
class ChaosConfig:
    data_dir: Path
    duration_s: float = 60.0
    shards: int = 3
    coordinators: int = 2
    accounts: int = 30
    clients: int = 8
    seed: int = 1
    # Gap between two faults, drawn uniformly.
    fault_gap_min_s: float = 2.0
    fault_gap_max_s: float = 6.0
    # How long a killed ledger node / coordinator stays down.
    restart_pause_min_s: float = 0.5
    restart_pause_max_s: float = 3.0
    cross_shard_fraction: float = 0.8
    overdraft_fraction: float = 0.05
    # Move slots back and forth meanwhile, and kill moves' sources and targets too.
    moves: bool = False


@dataclass
class Attempt:
    transfer: types_pb2.Transfer
    seen: str  # "committed" | "aborted" | "unknown"
    reason: str = ""
    final: int = 0  # TransferStatus after resolution
    cross_shard: bool = False
    committed_at: float = 0.0
    # When the call was sent and answered (monotonic s), for the stall figure.
    began_at: float = 0.0
    ended_at: float = 0.0


@dataclass
class ChaosReport:
    duration_s: float = 0.0
    attempted: int = 0
    committed: int = 0
    aborted: int = 0
    aborted_reasons: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    unknown_resolved_committed: int = 0
    unknown_resolved_aborted: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    longest_commit_pause_after_leader_kill_s: float = 0.0
    elections: int = 0
    election_after_leader_kill_s_max: float = 0.0
    in_doubt_at_election: int = 0
    in_doubt_resolved_after_election_s_max: float = 0.0
    violations: list[str] = field(default_factory=list)
    verify_exit_code: int = -1
    # Moves mode: what the moves did, and the longest stall a client saw meanwhile.
    moves_summary: list[str] = field(default_factory=list)
    longest_stall_during_move_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [
            f"duration            {self.duration_s:.0f} s",
            f"transfers attempted {self.attempted}",
            f"  committed         {self.committed}",
            f"  aborted           {self.aborted} {dict(sorted(self.aborted_reasons.items()))}",
            f"  unknown -> resolved committed {self.unknown_resolved_committed}, aborted "
            f"{self.unknown_resolved_aborted} (of {self.unknown})",
            f"kills               {dict(sorted(self.kills.items()))} (total {sum(self.kills.values())})",
            f"longest pause in cross-shard commits after a leader kill: "
            f"{self.longest_commit_pause_after_leader_kill_s:.2f} s",
            f"elections           {self.elections}; leader kill -> new leader elected: max "
            f"{self.election_after_leader_kill_s_max:.2f} s",
            f"in doubt at an election: {self.in_doubt_at_election}, all ended within "
            f"{self.in_doubt_resolved_after_election_s_max:.2f} s of the election",
            *self.moves_summary,
            f"offline verify exit {self.verify_exit_code}",
            f"violations          {len(self.violations)}",
        ]
        lines += [f"  VIOLATION: {v}" for v in self.violations[:50]]
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        # Faults draw from their own generator: the client loops share `rng`
        # in an order that depends on timing, faults must not.
        self.fault_rng = random.Random(config.seed + 1)
        # Risk check off: the runner's random bursts from a few accounts would
        # trip the velocity rules, and what it checks is the books under faults.
        self.cluster = LocalCluster(
            config.data_dir, shards=config.shards, coordinators=config.coordinators, risk_config=""
        )
        self.report = ChaosReport()
        self.attempts: list[Attempt] = []
        self.opening: dict[int, int] = {}
        self.owner: dict[int, str] = {}
        self.leader_kills: list[float] = []
        self.leader_kills_unix_s: list[float] = []
        self.cross_commits: list[float] = []
        self.move_loop: chaos_moves.MoveLoop | None = None

    # ---- set-up -----------------------------------------------------------

    def _slot_map(self) -> SlotMap:
        client = meta.connect(self.cluster.etcd_endpoint)
        try:
            found = meta.read_slot_map(client)
        finally:
            client.close()
        if found is None:
            raise RuntimeError("no slot map")
        return found

    def _open_accounts(self) -> None:
        slots = self._slot_map()
        bank = BankClient(self.cluster.gateway_address, token=self.cluster.admin_token)
        try:
            for i in range(self.config.accounts):
                first17 = f"1101051990{(i % 12) + 1:02d}{(i % 28) + 1:02d}{i % 1000:03d}"
                account = bank.open_account(
                    name=f"Chaos {i}",
                    id_number=first17 + cn_check_digit(first17),
                    phone=f"+86139{i:08d}",
                    currency=CURRENCY,
                )
                bank.deposit(account.id, OPENING_DEPOSIT_MINOR, CURRENCY)
                self.opening[account.id] = OPENING_DEPOSIT_MINOR
                self.owner[account.id] = slots.owner(account.id)
        finally:
            bank.close_channel()
        shards = Counter(self.owner.values())
        log.info("accounts_opened", accounts=len(self.opening), per_shard=dict(shards))

    # ---- load -------------------------------------------------------------

    def _pick_pair(self) -> tuple[int, int]:
        ids = list(self.opening)
        want_cross = self.rng.random() < self.config.cross_shard_fraction
        for _ in range(50):
            a, b = self.rng.sample(ids, 2)
            if (self.owner[a] != self.owner[b]) == want_cross:
                return a, b
        return tuple(self.rng.sample(ids, 2))  # type: ignore[return-value]

    async def _client_loop(self, deadline: float) -> None:
        client = AsyncBankClient(
            self.cluster.gateway_address, deadline_s=CALL_DEADLINE_S, token=self.cluster.admin_token
        )
        try:
            while time.monotonic() < deadline:
                debit, credit = self._pick_pair()
                overdraft = self.rng.random() < self.config.overdraft_fraction
                amount = 10 * OPENING_DEPOSIT_MINOR if overdraft else self.rng.randint(1, 20_000)
                transfer = types_pb2.Transfer(
                    id=str(uuid.uuid4()),
                    kind=types_pb2.TRANSFER_KIND_TRANSFER,
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount=amount,
                    currency=CURRENCY,
                )
                attempt = Attempt(transfer, "unknown", cross_shard=self.owner[debit] != self.owner[credit])
                self.attempts.append(attempt)
                attempt.began_at = time.monotonic()
                try:
                    results = await client.submit_transfers([transfer])
                    result = results[0]
                except Exception as exc:  # timeouts, killed connections: outcome unknown
                    attempt.reason = type(exc).__name__
                    attempt.ended_at = time.monotonic()
                    await asyncio.sleep(0.05)
                    continue
                attempt.ended_at = time.monotonic()
                if result.status == COMMITTED:
                    attempt.seen = "committed"
                    attempt.committed_at = time.monotonic()
                    if attempt.cross_shard:
                        self.cross_commits.append(attempt.committed_at)
                elif result.status == ABORTED:
                    attempt.seen = "aborted"
                    attempt.reason = result.reason
                else:
                    attempt.reason = result.reason or "PENDING"
                    await asyncio.sleep(0.05)
        finally:
            await client.close_channel()

    # ---- faults -----------------------------------------------------------

    def _names(self, kind: str) -> list[str]:
        return [c.name for c in self.cluster.components() if c.kind == kind]

    def _leader_name(self) -> str | None:
        client = meta.connect(self.cluster.etcd_endpoint)
        try:
            leader = meta.read_leader(client)
        finally:
            client.close()
        return None if leader is None else leader.coordinator_id

    async def _kill_and_restart(self, name: str, label: str, pause_s: float) -> None:
        self.cluster.kill(name)
        self.report.kills[label] = self.report.kills.get(label, 0) + 1
        log.info("fault_kill", component=name, fault=label, restart_in_s=round(pause_s, 2))
        await asyncio.sleep(pause_s)
        await asyncio.to_thread(self.cluster.start_component, name)

    async def _fault_loop(self, deadline: float) -> None:
        restarts: list[asyncio.Task[None]] = []
        cfg = self.config
        # Shuffled rounds of every kind: each kind is hit at least once per
        # round, whatever the draw (independent picks could skip one).
        round_of_faults = ["leader", "leader", "standby", "node", "node", "gateway"]
        if cfg.moves:
            round_of_faults += ["source", "target"]
        schedule: list[str] = []
        while True:
            await asyncio.sleep(self.fault_rng.uniform(cfg.fault_gap_min_s, cfg.fault_gap_max_s))
            if time.monotonic() >= deadline:
                break
            if not schedule:
                schedule = self.fault_rng.sample(round_of_faults, len(round_of_faults))
            fault = schedule.pop()
            pause = self.fault_rng.uniform(cfg.restart_pause_min_s, cfg.restart_pause_max_s)
            alive = {c.name for c in self.cluster.components() if c.alive}
            target: str | None = None
            if fault in ("leader", "standby"):
                leader = await asyncio.to_thread(self._leader_name)
                coordinators = [n for n in self._names("coordinator") if n in alive]
                if fault == "leader":
                    target = leader if leader in coordinators else None
                else:
                    standbys = [n for n in coordinators if n != leader]
                    target = self.fault_rng.choice(standbys) if standbys else None
                if fault == "leader" and target is not None:
                    self.leader_kills.append(time.monotonic())
                    self.leader_kills_unix_s.append(time.time())
            elif fault in ("source", "target"):
                current = self.move_loop.current if self.move_loop is not None else None
                target = chaos_moves.victim(current, fault, alive)
            elif fault == "node":
                nodes = [n for n in self._names("ledger_node") if n in alive]
                target = self.fault_rng.choice(nodes) if nodes else None
            else:
                gateways = [n for n in self._names("gateway") if n in alive]
                target = gateways[0] if gateways else None
                pause = 0.2
            if target is None:
                if fault not in ("source", "target"):  # no move running: skip, not retry
                    schedule.append(fault)  # nothing to hit right now (e.g. mid-election): next tick
                continue
            restarts.append(asyncio.create_task(self._kill_and_restart(target, fault, pause)))
        await asyncio.gather(*restarts, return_exceptions=True)

    # ---- checks -----------------------------------------------------------

    def _ensure_all_up(self) -> None:
        for component in self.cluster.components():
            if not component.alive and component.kind != "etcd":
                self.cluster.start_component(component.name)

    def _resolve(self) -> None:
        # Calls the clients gave up on may still be retried inside the gateway
        # or coordinator until their deadlines pass; let them land first.
        time.sleep(2 * CALL_DEADLINE_S)
        bank = BankClient(self.cluster.gateway_address, token=self.cluster.admin_token)
        try:
            pending = asyncio.run(self._resolve_all(list(self.attempts)))
            for attempt in pending:
                self.report.violations.append(
                    f"transfer {attempt.transfer.id} still not final after recovery"
                )
            self._check_balances(bank)
        finally:
            bank.close_channel()

    async def _resolve_all(self, attempts: list[Attempt]) -> list[Attempt]:
        """Query every transfer's final state, RESOLVE_CONCURRENCY at a time,
        until all are COMMITTED/ABORTED or RESOLVE_WAIT_S passes; returns the rest."""
        client = AsyncBankClient(
            self.cluster.gateway_address, deadline_s=CALL_DEADLINE_S, token=self.cluster.admin_token
        )
        gate = asyncio.Semaphore(RESOLVE_CONCURRENCY)

        async def settle(attempt: Attempt) -> bool:
            async with gate:
                try:
                    status = (await client.get_transfer(attempt.transfer.id)).status
                except Exception as exc:
                    if getattr(exc, "reason", "") != "TRANSFER_NOT_FOUND":
                        return False
                    status = ABORTED  # never reached a record holder: nothing moved
            if status in (COMMITTED, ABORTED):
                attempt.final = status
                return True
            return False

        deadline = time.monotonic() + RESOLVE_WAIT_S
        pending = attempts
        try:
            while pending and time.monotonic() < deadline:
                settled = await asyncio.gather(*(settle(a) for a in pending))
                pending = [a for a, done in zip(pending, settled, strict=True) if not done]
                if pending:
                    await asyncio.sleep(0.5)
        finally:
            await client.close_channel()
        return pending

    def _check_balances(self, bank: BankClient) -> None:
        expected = dict(self.opening)
        for attempt in self.attempts:
            if attempt.seen == "committed" and attempt.final != COMMITTED:
                self.report.violations.append(f"acknowledged transfer {attempt.transfer.id} is not committed")
            if attempt.seen == "aborted" and attempt.final != ABORTED:
                self.report.violations.append(f"refused transfer {attempt.transfer.id} ended committed")
            if attempt.final == COMMITTED:
                expected[attempt.transfer.debit_account_id] -= attempt.transfer.amount
                expected[attempt.transfer.credit_account_id] += attempt.transfer.amount
        for account_id, want in expected.items():
            account = bank.get_account(account_id)
            if account.balance != want:
                self.report.violations.append(
                    f"account {account_id}: balance {account.balance} != expected {want}"
                )
            if account.balance < 0:
                self.report.violations.append(f"account {account_id}: negative balance {account.balance}")
            if account.held != 0 or account.pending_credit != 0:
                self.report.violations.append(
                    f"account {account_id}: held {account.held}, pending credit {account.pending_credit}"
                )
        total = sum(bank.get_account(a).balance for a in expected)
        if total != sum(self.opening.values()):
            self.report.violations.append(f"customer money {total} != deposited {sum(self.opening.values())}")

    def _tally(self) -> None:
        r = self.report
        r.attempted = len(self.attempts)
        reasons: Counter[str] = Counter()
        for attempt in self.attempts:
            if attempt.seen == "committed":
                r.committed += 1
            elif attempt.seen == "aborted":
                r.aborted += 1
                reasons[attempt.reason] += 1
            else:
                r.unknown += 1
                if attempt.final == COMMITTED:
                    r.unknown_resolved_committed += 1
                elif attempt.final == ABORTED:
                    r.unknown_resolved_aborted += 1
        r.aborted_reasons = dict(reasons)
        commits = sorted(self.cross_commits)
        longest = 0.0
        for killed_at in self.leader_kills:
            after = [t for t in commits if t > killed_at]
            if after:
                longest = max(longest, after[0] - killed_at)
        r.longest_commit_pause_after_leader_kill_s = longest
        stats = failover_stats(self.cluster.log_dir, self.leader_kills_unix_s)
        r.elections = stats.elections
        r.election_after_leader_kill_s_max = stats.election_after_kill_s_max
        r.in_doubt_at_election = stats.in_doubt_at_election
        r.in_doubt_resolved_after_election_s_max = stats.in_doubt_resolved_after_election_s_max
        if self.move_loop is not None:
            calls = [(a.began_at, a.ended_at) for a in self.attempts if a.ended_at]
            r.longest_stall_during_move_s = chaos_moves.longest_stall_s(self.move_loop.stats, calls)
            r.moves_summary = chaos_moves.summary(self.move_loop.stats, r.longest_stall_during_move_s)

    # ---- the run ------------------------------------------------------------

    async def _load(self) -> None:
        deadline = time.monotonic() + self.config.duration_s
        workers = [asyncio.create_task(self._client_loop(deadline)) for _ in range(self.config.clients)]
        faults = asyncio.create_task(self._fault_loop(deadline))
        extra = []
        if self.config.moves:
            self.move_loop = chaos_moves.MoveLoop(
                self.cluster.etcd_endpoint, list(self.opening), self.config.seed + 2
            )
            extra.append(asyncio.create_task(self.move_loop.run(deadline)))
        await asyncio.gather(*workers, faults, *extra)

    def run(self) -> ChaosReport:
        started = time.monotonic()
        saved_pause = os.environ.get(mover.STEP_PAUSE_ENV)
        if self.config.moves:  # read by the coordinators this run starts
            os.environ[mover.STEP_PAUSE_ENV] = str(chaos_moves.STEP_PAUSE_MS)
        try:
            self.cluster.start()
            self._open_accounts()
            asyncio.run(self._load())
            self._ensure_all_up()
            if self.move_loop is not None:
                self.report.violations += self.move_loop.stats.stuck + self.move_loop.unfinished()
            self._resolve()
            self._tally()
        finally:
            self.cluster.stop()
            if saved_pause is None:
                os.environ.pop(mover.STEP_PAUSE_ENV, None)
            else:
                os.environ[mover.STEP_PAUSE_ENV] = saved_pause
        self.report.verify_exit_code = verify.main(["--data-dir", str(self.config.data_dir)])
        if self.report.verify_exit_code != 0:
            self.report.violations.append("offline verify failed (see its output)")
        self.report.duration_s = time.monotonic() - started
        return self.report


def run(config: ChaosConfig) -> ChaosReport:
    report = ChaosRun(config).run()
    with contextlib.suppress(OSError):
        (config.data_dir / "chaos-report.json").write_text(json.dumps(asdict(report), indent=2))
    return report
