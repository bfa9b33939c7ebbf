"""Slots: the unit of placement. account id -> slot by a stable hash; the
slot map (slot -> shard id, versioned) lives in etcd as one key, so a move
flips ownership in one transaction.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SLOT_COUNT = 4096


def slot_of(account_id: int) -> int:
    """Stable across processes, versions and machines (CRC-32 of 8 bytes)."""
    return zlib.crc32(account_id.to_bytes(8, "big")) % SLOT_COUNT


@dataclass(frozen=True)
class SlotMap:
    version: int
    owners: tuple[str, ...]  # owners[slot] = shard id

    @staticmethod
    def even(shard_ids: list[str], version: int = 1) -> SlotMap:
        """Contiguous, even ranges of slots over the shards, in order."""
        if not shard_ids:
            raise ValueError("a slot map needs at least one shard")
        count = len(shard_ids)
        owners = tuple(shard_ids[slot * count // SLOT_COUNT] for slot in range(SLOT_COUNT))
        return SlotMap(version, owners)

    def owner(self, account_id: int) -> str:
        return self.owners[slot_of(account_id)]

    def slots_of(self, shard_id: str) -> list[int]:
        return [slot for slot, owner in enumerate(self.owners) if owner == shard_id]

    def shard_ids(self) -> list[str]:
        return sorted(set(self.owners))

    def ranges(self) -> list[tuple[int, int, str]]:
        """[(first, last, shard)] runs of consecutive slots with one owner."""
        runs: list[tuple[int, int, str]] = []
        start = 0
        for slot in range(1, SLOT_COUNT + 1):
            if slot == SLOT_COUNT or self.owners[slot] != self.owners[start]:
                runs.append((start, slot - 1, self.owners[start]))
                start = slot
        return runs

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "slot_count": SLOT_COUNT, "ranges": self.ranges()})

    @staticmethod
    def from_json(text: str | bytes) -> SlotMap:
        data = json.loads(text)
        if data.get("slot_count") != SLOT_COUNT:
            raise ValueError(
                f"slot map has slot_count {data.get('slot_count')}, this build uses {SLOT_COUNT}"
            )
        return SlotMap.from_ranges(int(data["version"]), data["ranges"])

    @staticmethod
    def from_ranges(version: int, ranges: Iterable[Sequence[object]]) -> SlotMap:
        """A map from `ranges()` runs, checked: from etcd, or as the gateway
        publishes it to clients (`ClusterInfo.slot_ranges`)."""
        owners: list[str | None] = [None] * SLOT_COUNT
        for first, last, shard in ranges:
            # Checked, not trusted: a negative index would silently wrap around,
            # an overlap would silently give a slot to the later range.
            if not (isinstance(first, int) and isinstance(last, int) and 0 <= first <= last < SLOT_COUNT):
                raise ValueError(f"slot map range {first}..{last} is outside 0..{SLOT_COUNT - 1}")
            if not isinstance(shard, str) or not shard:
                raise ValueError(f"slot map range {first}..{last} has no shard id")
            for slot in range(first, last + 1):
                if owners[slot] is not None:
                    raise ValueError(f"slot map gives slot {slot} to {owners[slot]} and {shard}")
                owners[slot] = shard
        if any(owner is None for owner in owners):
            raise ValueError("slot map leaves slots without an owner")
        return SlotMap(version, tuple(o for o in owners if o is not None))
