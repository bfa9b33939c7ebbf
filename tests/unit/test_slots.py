"""Slot hashing must never change (it decides where money lives); the slot
map survives its JSON form and refuses a malformed one."""

from __future__ import annotations

import json

import pytest

from shardbank import slots
from shardbank.slots import SLOT_COUNT, SlotMap


def crc32_bitwise(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected 0xEDB88320) written out, independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# Pinned: changing any of these moves accounts between shards.
PINNED = {
    0: 3945,
    1: 4095,
    1156: 3412,
    2156: 2066,
    10**15: 183,
    6222020000000007: 1994,
    4532015112830366: 2537,
}


@pytest.mark.parametrize(("account_id", "slot"), sorted(PINNED.items()))
def test_slot_of_is_pinned(account_id: int, slot: int) -> None:
    assert slots.slot_of(account_id) == slot


def test_slot_of_is_crc32_of_8_big_endian_bytes_mod_4096() -> None:
    for account_id in [*PINNED, 2**64 - 1, 1234567890123456]:
        expected = crc32_bitwise(account_id.to_bytes(8, "big")) % SLOT_COUNT
        assert slots.slot_of(account_id) == expected


def test_even_map_splits_contiguously() -> None:
    two = SlotMap.even(["shard-1", "shard-2"])
    assert two.ranges() == [(0, 2047, "shard-1"), (2048, 4095, "shard-2")]
    three = SlotMap.even(["a", "b", "c"])
    assert sum(len(three.slots_of(s)) for s in "abc") == SLOT_COUNT
    assert {len(three.slots_of(s)) for s in "abc"} <= {1365, 1366}
    assert two.owner(6222020000000007) == "shard-1"  # slot 1994
    assert two.owner(2156) == "shard-2"  # slot 2066
    with pytest.raises(ValueError):
        SlotMap.even([])


def test_json_round_trip() -> None:
    original = SlotMap.even(["shard-1", "shard-2", "shard-3"], version=7)
    owners = list(original.owners)
    owners[5] = "shard-3"  # a moved slot splits a range
    moved = SlotMap(8, tuple(owners))
    for slot_map in (original, moved):
        again = SlotMap.from_json(slot_map.to_json())
        assert again == slot_map
    assert SlotMap.from_json(moved.to_json().encode()) == moved
    expected = [[0, 4, "shard-1"], [5, 5, "shard-3"], [6, 1365, "shard-1"]]
    assert json.loads(moved.to_json())["ranges"][:3] == expected


def _json(ranges: list[list[object]], slot_count: int = SLOT_COUNT) -> str:
    return json.dumps({"version": 1, "slot_count": slot_count, "ranges": ranges})


@pytest.mark.parametrize(
    "text",
    [
        _json([[0, 4095, "a"]], slot_count=1024),
        _json([[0, 4094, "a"]]),  # slot 4095 without an owner
        _json([[0, 4095, "a"], [10, 10, "b"]]),  # overlap
        _json([[-1, -1, "b"], [0, 4095, "a"]]),  # would wrap around to slot 4095
        _json([[0, 4096, "a"]]),
        _json([[10, 5, "a"], [0, 4095, "b"]]),
        _json([[0, 4095, ""]]),
    ],
)
def test_from_json_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        SlotMap.from_json(text)
