"""The fault runner's moves mode (`shardbank chaos --moves`): slots move back
and forth between shards while transfers run and processes are killed.

One loop requests a move at a time: the slots of a few accounts on a random
shard, to a random other shard, and waits for its end. The fault loop
(`loadtest/chaos.py`) adds two kinds of kill in this mode: the current move's
source and its target (the mover, the coordinator leader, is killed by the
existing "leader" faults). A move may end COMPLETED, or rolled back (FAILED /
ROLLED_BACK) when a step cannot finish; both are safe. What must hold is what
the runner checks anyway (no transfer lost or doubled, books balance, every
journal verifies), plus: every move ends (none stuck), and the longest stall
a client saw while a move ran is reported.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import structlog

from clients import shard_ops
from shardbank import errors, meta, move_records
from shardbank.moves import Move
from shardbank.slots import slot_of

log = structlog.get_logger("chaos.moves")

# Pause after each mover step, so that kills land inside moves (a move of a
# few accounts takes ~100 ms otherwise). Set for the cluster's processes.
STEP_PAUSE_MS = 150
# Accounts whose slots one move takes (of those on the chosen source).
ACCOUNTS_PER_MOVE_MAX = 4
# Gap between two moves.
MOVE_GAP_S = 0.5
# A move still running after this long (from its request) counts as stuck.
MOVE_END_WAIT_S = 120.0


@dataclass
class MoveStats:
    requested: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    fenced_ms_max: int = 0
    # (requested at, ended at), monotonic seconds, for the stall figure.
    windows: list[tuple[float, float]] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)


class MoveLoop:
    def __init__(self, etcd_endpoint: str, accounts: list[int], seed: int) -> None:
        self._etcd_endpoint = etcd_endpoint
        self._accounts = accounts
        self._rng = random.Random(seed)
        self.stats = MoveStats()
        self.current: Move | None = None

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(MOVE_GAP_S)
            await asyncio.to_thread(self._one_move, deadline)

    def _one_move(self, deadline: float) -> None:
        client = meta.connect(self._etcd_endpoint)
        try:
            view = shard_ops.cluster_view(client)
            shards = sorted(view.registered)
            if len(shards) < 2:
                return
            source = self._rng.choice(shards)
            mine = [a for a in self._accounts if view.slot_map.owner(a) == source]
            if not mine:
                return
            picked = self._rng.sample(mine, min(len(mine), self._rng.randint(1, ACCOUNTS_PER_MOVE_MAX)))
            slots = sorted({slot_of(a) for a in picked})
            target = self._rng.choice([s for s in shards if s != source])
            started = time.monotonic()
            try:
                move = shard_ops.request_move(client, slots, target, actor="chaos")
            except errors.BankError as refusal:  # e.g. a target just killed: TARGET_DOWN
                self.stats.refused[refusal.reason] = self.stats.refused.get(refusal.reason, 0) + 1
                return
            self.stats.requested += 1
            self.current = move
            wait_s = max(deadline - time.monotonic(), 0) + MOVE_END_WAIT_S
            done = shard_ops.wait(client, move.move_id, wait_s)
            self.current = None
            self.stats.windows.append((started, time.monotonic()))
            self.stats.phases[done.phase] = self.stats.phases.get(done.phase, 0) + 1
            self.stats.fenced_ms_max = max(self.stats.fenced_ms_max, done.fenced_ms)
            if not done.terminal:
                self.stats.stuck.append(f"move {done.move_id} still {done.phase} after {wait_s:.0f} s")
            log.info(
                "chaos_move",
                move_id=done.move_id,
                phase=done.phase,
                slots=len(slots),
                fenced_ms=done.fenced_ms,
            )
        except Exception as exc:  # etcd restarting...: the next round tries again
            log.warning("chaos_move_failed", error=type(exc).__name__, detail=str(exc)[:200])
        finally:
            client.close()

    def unfinished(self) -> list[str]:
        """Moves not terminal in etcd (after the load and the kills)."""
        client = meta.connect(self._etcd_endpoint)
        try:
            deadline = time.monotonic() + MOVE_END_WAIT_S
            while True:
                open_moves = [m for m in move_records.list_moves(client) if not m.terminal]
                if not open_moves or time.monotonic() > deadline:
                    return [f"move {m.move_id} stuck in {m.phase}" for m in open_moves]
                time.sleep(0.5)
        finally:
            client.close()


def longest_stall_s(stats: MoveStats, attempts: list[tuple[float, float]]) -> float:
    """The longest time one transfer call took, among calls that overlapped a move."""
    longest = 0.0
    for began, ended in attempts:
        if any(began <= end and ended >= start for start, end in stats.windows):
            longest = max(longest, ended - began)
    return longest


def summary(stats: MoveStats, stall_s: float) -> list[str]:
    phases = dict(sorted(Counter(stats.phases).items()))
    refused = dict(sorted(stats.refused.items()))
    return [
        f"moves               {stats.requested} requested: {phases}; refused {refused}",
        f"longest client stall during a move: {stall_s:.2f} s; longest fence {stats.fenced_ms_max} ms",
    ]


def victim(move: Move | None, role: str, alive: set[str]) -> str | None:
    """The current move's source or target, if it is up."""
    if move is None:
        return None
    name = move.source if role == "source" else move.target
    return name if name in alive else None
