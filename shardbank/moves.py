"""Slot moves, the pure part: the etcd record, slot range parsing, the checks
that refuse an unsafe request, the phase rules, and planning of rebalance and
drain. No etcd, no gRPC: the CLI (`clients/cli_shard.py`) and the mover
(`coordinator/mover.py`) both call this, so a request is judged the same way
where it is made and where it is carried out. docs/moves.md has the protocol.

The record is `/shardbank/moves/<move_id>` (a schema shared with
`shardbank status`; fields may be added, never renamed).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import grpc

from shardbank import errors
from shardbank.errors import BankError
from shardbank.slots import SLOT_COUNT, SlotMap

MOVES = "/shardbank/moves/"

PENDING = "PENDING"
COPYING = "COPYING"
CATCHING_UP = "CATCHING_UP"
VERIFYING = "VERIFYING"
FENCED = "FENCED"
FLIPPED = "FLIPPED"
COMPLETED = "COMPLETED"
ROLLING_BACK = "ROLLING_BACK"
ROLLED_BACK = "ROLLED_BACK"
FAILED = "FAILED"
PHASES = (
    PENDING, COPYING, CATCHING_UP, FENCED, VERIFYING, FLIPPED,
    COMPLETED, ROLLING_BACK, ROLLED_BACK, FAILED,
)  # fmt: skip
TERMINAL = frozenset({COMPLETED, ROLLED_BACK, FAILED})
# Until the slot map flips, the source still has everything: a move can be undone.
ROLLBACK_ALLOWED = frozenset({PENDING, COPYING, CATCHING_UP, FENCED, VERIFYING})

# Which phase may follow which (the mover's steps; anything else is a bug).
TRANSITIONS: Mapping[str, frozenset[str]] = {
    PENDING: frozenset({COPYING, ROLLING_BACK, FAILED}),
    COPYING: frozenset({CATCHING_UP, ROLLING_BACK}),
    CATCHING_UP: frozenset({FENCED, ROLLING_BACK}),
    # A fence that cannot drain in-doubt legs in time is lifted: back to catch-up.
    FENCED: frozenset({VERIFYING, CATCHING_UP, ROLLING_BACK}),
    VERIFYING: frozenset({FLIPPED, ROLLING_BACK}),
    FLIPPED: frozenset({COMPLETED}),
    ROLLING_BACK: frozenset({ROLLED_BACK, FAILED}),
    COMPLETED: frozenset(),
    ROLLED_BACK: frozenset(),
    FAILED: frozenset(),
}

# Refusal reasons of a move request (ErrorInfo reasons, like shardbank.errors).
INVALID_SLOTS = "INVALID_SLOTS"
UNKNOWN_SHARD = "UNKNOWN_SHARD"
TARGET_DOWN = "TARGET_DOWN"
SAME_SHARD = "SAME_SHARD"
SLOTS_NOT_OWNED = "SLOTS_NOT_OWNED"
SLOTS_ALREADY_MOVING = "SLOTS_ALREADY_MOVING"
SHARD_WOULD_BE_EMPTY = "SHARD_WOULD_BE_EMPTY"
MOVE_NOT_FOUND = "MOVE_NOT_FOUND"
MOVE_NOT_REVERSIBLE = "MOVE_NOT_REVERSIBLE"
NOTHING_TO_MOVE = "NOTHING_TO_MOVE"

# A slot spec ("100-199,300") is at most this long: the longest useful one
# names every slot once.
SLOT_SPEC_LENGTH_MAX = 64 * 1024
MOVE_ID_LENGTH_MAX = 64
_SHARD_ID = re.compile(r"shard-[1-9][0-9]{0,8}")
_MOVE_ID = re.compile(r"mv-[0-9a-f]{12}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Move:
    """One move as stored in etcd (the shared schema plus our own fields)."""

    move_id: str
    slots: tuple[int, ...]
    source: str
    target: str
    phase: str = PENDING
    accounts_total: int = 0
    accounts_copied: int = 0
    records_copied: int = 0
    started_at_unix_ms: int = 0
    updated_at_unix_ms: int = 0
    error: str = ""
    # Added fields (not in the shared schema's list).
    history_copied: int = 0
    rollback_requested: bool = False
    # A drain may take a shard's last slot; a plain move may not.
    drain: bool = False
    requested_by: str = ""
    # Source journal seq the target has caught up to, and catch-up rounds.
    watermark_seq: int = 0
    catch_up_rounds: int = 0
    fence_attempts: int = 0
    # Slot map version the flip produced.
    slot_map_version: int = 0
    # How long the slots were fenced (ms), for the longest-stall figure.
    fenced_ms: int = 0
    fenced_at_unix_ms: int = 0
    # Why the current step is being retried (a node down...); "" when not.
    waiting: str = ""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def key(self) -> str:
        return MOVES + self.move_id

    def to_json(self) -> str:
        data = asdict(self)
        data["slots"] = list(self.slots)
        return json.dumps(data, sort_keys=True)

    @property
    def progress(self) -> float:
        """accounts_copied / accounts_total in 0..1 (1 when there is nothing to copy)."""
        if self.accounts_total <= 0:
            return 1.0 if self.phase not in (PENDING, COPYING) else 0.0
        return max(0.0, min(1.0, self.accounts_copied / self.accounts_total))

    @staticmethod
    def from_json(text: str | bytes) -> Move:
        """Parse a record; ValueError if it is not one (readers such as
        `status` and the metrics skip such a key rather than crash)."""
        try:
            data: dict[str, Any] = json.loads(text)
            known = {f for f in Move.__dataclass_fields__}
            values = {k: v for k, v in data.items() if k in known}
            values["slots"] = tuple(int(s) for s in data["slots"])
            return Move(**values)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a move record: {exc}") from None

    def advance(self, phase: str, **changes: Any) -> Move:
        """The move in `phase` (a legal step only), stamped now."""
        check_transition(self.phase, phase)
        changes.setdefault("waiting", "")
        return replace(self, phase=phase, updated_at_unix_ms=now_ms(), **changes)

    def update(self, **changes: Any) -> Move:
        return replace(self, updated_at_unix_ms=now_ms(), **changes)


def check_transition(old: str, new: str) -> None:
    if new not in TRANSITIONS.get(old, frozenset()):
        raise ValueError(f"a move cannot go from {old} to {new}")


def new_move_id() -> str:
    return f"mv-{uuid.uuid4().hex[:12]}"


def check_move_id(text: str) -> str:
    if len(text) > MOVE_ID_LENGTH_MAX or not _MOVE_ID.fullmatch(text):
        raise errors.invalid(errors.INVALID_ARGUMENT, "a move id looks like mv-0123456789ab")
    return text


def check_shard_id(text: str) -> str:
    if not _SHARD_ID.fullmatch(text):
        raise errors.invalid(UNKNOWN_SHARD, f"shard id must look like shard-N, got {text[:40]!r}")
    return text


def parse_slots(spec: str) -> tuple[int, ...]:
    """'100-199,300' -> (100, ..., 199, 300): sorted, each slot once.

    Refused (INVALID_ARGUMENT INVALID_SLOTS): empty parts, a range that runs
    backwards, a slot outside 0..SLOT_COUNT-1, a slot named twice, junk."""
    if not spec or len(spec) > SLOT_SPEC_LENGTH_MAX:
        raise errors.invalid(INVALID_SLOTS, f"give slots as ranges like 100-199,300 (0..{SLOT_COUNT - 1})")
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", part)
        if match is None:
            raise errors.invalid(INVALID_SLOTS, f"{part[:20]!r} is not a slot or a range FIRST-LAST")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise errors.invalid(INVALID_SLOTS, f"range {first}-{last} runs backwards")
        if last >= SLOT_COUNT:
            raise errors.invalid(INVALID_SLOTS, f"slot {last} is outside 0..{SLOT_COUNT - 1}")
        span = set(range(first, last + 1))
        if span & chosen:
            raise errors.invalid(INVALID_SLOTS, f"slot {min(span & chosen)} is named twice")
        chosen |= span
    return tuple(sorted(chosen))


def format_slots(slots: Iterable[int]) -> str:
    """(100, ..., 199, 300) -> '100-199,300'."""
    ordered = sorted(set(slots))
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[index], ordered[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        index = end + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Cluster:
    """What a move request is judged against: the slot map, the shards that
    are registered (up) now, and the moves not yet finished."""

    slot_map: SlotMap
    registered: frozenset[str]
    active: tuple[Move, ...] = field(default_factory=tuple)


def check_request(cluster: Cluster, slots: Sequence[int], target: str, drain: bool = False) -> str:
    """The source shard of a move of `slots` to `target`, or the refusal.

    Unsafe requests are refused here, before anything is written."""
    check_shard_id(target)
    if not slots:
        raise errors.invalid(INVALID_SLOTS, "no slots to move")
    if any(not 0 <= s < SLOT_COUNT for s in slots):
        raise errors.invalid(INVALID_SLOTS, f"slots must be 0..{SLOT_COUNT - 1}")
    owners = {cluster.slot_map.owners[s] for s in slots}
    if len(owners) != 1:
        raise errors.precondition(
            SLOTS_NOT_OWNED, f"the slots belong to {', '.join(sorted(owners))}: one source per move"
        )
    source = owners.pop()
    if source == target:
        raise errors.precondition(SAME_SHARD, f"the slots are already on {target}")
    if target not in cluster.registered:
        known = target in cluster.slot_map.owners
        if not known:
            raise BankError(
                grpc.StatusCode.UNAVAILABLE,
                TARGET_DOWN,
                f"{target} is not registered: start it (shardbank shard add) first",
            )
        raise BankError(grpc.StatusCode.UNAVAILABLE, TARGET_DOWN, f"{target} is down")
    if source not in cluster.registered:
        raise BankError(grpc.StatusCode.UNAVAILABLE, TARGET_DOWN, f"the source {source} is down")
    busy = set(slots) & {s for m in cluster.active if not m.terminal for s in m.slots}
    if busy:
        raise errors.precondition(
            SLOTS_ALREADY_MOVING, f"slot {min(busy)} is already in a move that has not finished"
        )
    left = len(cluster.slot_map.slots_of(source)) - len(slots)
    if left == 0 and not drain:
        raise errors.precondition(
            SHARD_WOULD_BE_EMPTY,
            f"{source} would own no slots while it holds accounts: use `shardbank shard drain {source}`",
        )
    return source


# A plan: moves as (slots, source, target), to be requested in order.
Planned = list[tuple[tuple[int, ...], str, str]]


def plan_rebalance(slot_map: SlotMap, shards: Sequence[str]) -> Planned:
    """Moves (slots, source, target) that leave every shard of `shards` with
    SLOT_COUNT // n slots (the first SLOT_COUNT % n get one more), moving as
    few slots as possible and taking each source's highest slots first so
    ranges stay contiguous. Shards owning slots but not listed keep theirs."""
    ordered = sorted(set(shards), key=_shard_order)
    if not ordered:
        return []
    owned = {s: slot_map.slots_of(s) for s in ordered}
    pool = sum(len(v) for v in owned.values())
    base, extra = divmod(pool, len(ordered))
    quota = {s: base + (1 if i < extra else 0) for i, s in enumerate(ordered)}
    surplus = {s: sorted(owned[s])[quota[s] :] for s in ordered if len(owned[s]) > quota[s]}
    needs = [(s, quota[s] - len(owned[s])) for s in ordered if len(owned[s]) < quota[s]]
    plan: Planned = []
    for target, need in needs:
        while need > 0:
            source = next(s for s in ordered if surplus.get(s))
            take = surplus[source][:need]
            surplus[source] = surplus[source][need:]
            need -= len(take)
            plan.append((tuple(take), source, target))
    return plan


def plan_drain(slot_map: SlotMap, shard: str, others: Sequence[str]) -> Planned:
    """Moves that hand every slot of `shard` to `others`, in contiguous
    chunks, to whichever of them owns the fewest slots at that point."""
    receivers = sorted(set(others) - {shard}, key=_shard_order)
    slots = slot_map.slots_of(shard)
    if not slots:
        raise errors.precondition(NOTHING_TO_MOVE, f"{shard} owns no slots")
    if not receivers:
        raise errors.precondition(SHARD_WOULD_BE_EMPTY, f"no other shard is up to take {shard}'s slots")
    counts = {r: len(slot_map.slots_of(r)) for r in receivers}
    chunk = -(-len(slots) // len(receivers))
    plan: Planned = []
    for start in range(0, len(slots), chunk):
        target = min(receivers, key=lambda r: (counts[r], _shard_order(r)))
        piece = tuple(slots[start : start + chunk])
        counts[target] += len(piece)
        plan.append((piece, shard, target))
    return plan


def _shard_order(shard_id: str) -> tuple[int, str]:
    suffix = shard_id.rpartition("-")[2]
    return (int(suffix) if suffix.isdigit() else 1 << 30, shard_id)


def flipped_map(slot_map: SlotMap, slots: Sequence[int], source: str, target: str) -> SlotMap:
    """The slot map after the move: `slots` go from `source` to `target`,
    version + 1. Refuses if any slot is not the source's (a stale plan)."""
    owners = list(slot_map.owners)
    for slot in slots:
        if owners[slot] != source:
            raise errors.precondition(
                SLOTS_NOT_OWNED, f"slot {slot} is owned by {owners[slot]}, not {source}"
            )
        owners[slot] = target
    return SlotMap(slot_map.version + 1, tuple(owners))
