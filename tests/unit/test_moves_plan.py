"""Slot moves, the pure part: slot specs, refusals, phases, rebalance and drain plans."""

from __future__ import annotations

import grpc
import pytest

from shardbank import errors, moves
from shardbank.moves import Cluster, Move
from shardbank.slots import SLOT_COUNT, SlotMap


def two_shards() -> SlotMap:
    return SlotMap.even(["shard-1", "shard-2"])


@pytest.mark.parametrize(
    ("spec", "slots"),
    [
        ("5", (5,)),
        ("1-3,7", (1, 2, 3, 7)),
        (" 4095 ", (4095,)),
        ("7,1-2", (1, 2, 7)),
        ("0-4095", tuple(range(4096))),
    ],
)
def test_slot_specs_parse(spec: str, slots: tuple[int, ...]) -> None:
    assert moves.parse_slots(spec) == slots


@pytest.mark.parametrize("spec", ["", "a", "1-", "-1", "3-1", "4096", "1,1", "1-3,2", "1;2", "1--2", "9" * 6])
def test_malformed_slot_specs_are_refused(spec: str) -> None:
    with pytest.raises(errors.BankError) as refused:
        moves.parse_slots(spec)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        moves.INVALID_SLOTS,
    )


def test_format_slots_is_the_inverse_of_parse() -> None:
    slots = (0, 1, 2, 5, 9, 10)
    assert moves.format_slots(slots) == "0-2,5,9-10"
    assert moves.parse_slots(moves.format_slots(slots)) == slots


def _cluster(active: tuple[Move, ...] = ()) -> Cluster:
    return Cluster(two_shards(), frozenset({"shard-1", "shard-2", "shard-3"}), active)


def test_a_safe_request_names_its_source() -> None:
    assert moves.check_request(_cluster(), [0, 1, 2], "shard-3") == "shard-1"


@pytest.mark.parametrize(
    ("slots", "target", "reason"),
    [
        ([0, 1], "shard-9", moves.TARGET_DOWN),
        ([0, 1], "shard-1", moves.SAME_SHARD),
        ([0, 4095], "shard-3", moves.SLOTS_NOT_OWNED),
        (list(range(2048)), "shard-2", moves.SHARD_WOULD_BE_EMPTY),
        ([], "shard-2", moves.INVALID_SLOTS),
        ([0], "node-2", moves.UNKNOWN_SHARD),
    ],
)
def test_unsafe_requests_are_refused_with_a_reason(slots: list[int], target: str, reason: str) -> None:
    with pytest.raises(errors.BankError) as refused:
        moves.check_request(_cluster(), slots, target)
    assert refused.value.reason == reason


def test_slots_in_an_unfinished_move_are_refused_but_finished_ones_are_not() -> None:
    busy = Move("mv-000000000001", (5, 6), "shard-1", "shard-2", phase=moves.COPYING)
    with pytest.raises(errors.BankError) as refused:
        moves.check_request(_cluster((busy,)), [6, 7], "shard-3")
    assert refused.value.reason == moves.SLOTS_ALREADY_MOVING
    done = Move("mv-000000000001", (5, 6), "shard-1", "shard-2", phase=moves.COMPLETED)
    assert moves.check_request(_cluster((done,)), [6, 7], "shard-3") == "shard-1"


def test_a_drain_may_take_the_last_slot() -> None:
    assert moves.check_request(_cluster(), list(range(2048)), "shard-2", drain=True) == "shard-1"


def test_phases_follow_the_table_and_rollback_ends_at_the_flip() -> None:
    move = Move("mv-000000000001", (1,), "shard-1", "shard-2")
    for phase in (
        moves.COPYING,
        moves.CATCHING_UP,
        moves.FENCED,
        moves.VERIFYING,
        moves.FLIPPED,
        moves.COMPLETED,
    ):
        move = move.advance(phase)
    assert move.terminal
    with pytest.raises(ValueError):
        Move("mv-000000000001", (1,), "shard-1", "shard-2", phase=moves.FLIPPED).advance(moves.ROLLING_BACK)
    assert moves.FLIPPED not in moves.ROLLBACK_ALLOWED
    assert all(moves.ROLLING_BACK in moves.TRANSITIONS[p] for p in moves.ROLLBACK_ALLOWED)
    # A lifted fence goes back to catching up.
    assert moves.CATCHING_UP in moves.TRANSITIONS[moves.FENCED]


def test_the_record_round_trips_in_the_shared_schema() -> None:
    move = Move("mv-000000000001", (1, 2), "shard-1", "shard-2", accounts_total=3)
    data = __import__("json").loads(move.to_json())
    shared = {"move_id", "slots", "source", "target", "phase", "accounts_total", "accounts_copied",
              "records_copied", "started_at_unix_ms", "updated_at_unix_ms", "error"}  # fmt: skip
    assert shared <= set(data)
    assert data["slots"] == [1, 2]
    assert Move.from_json(move.to_json()) == move


def test_rebalance_evens_out_with_few_moves() -> None:
    plan = moves.plan_rebalance(two_shards(), ["shard-1", "shard-2", "shard-3"])
    assert [(source, target) for _, source, target in plan] == [
        ("shard-1", "shard-3"),
        ("shard-2", "shard-3"),
    ]
    owners = list(two_shards().owners)
    for slots, _, target in plan:
        for slot in slots:
            owners[slot] = target
    counts = sorted(owners.count(s) for s in ("shard-1", "shard-2", "shard-3"))
    assert counts == [1365, 1365, 1366]
    assert sum(len(s) for s, _, _ in plan) == 1365
    assert moves.plan_rebalance(two_shards(), ["shard-1", "shard-2"]) == []


def test_drain_hands_every_slot_to_the_others() -> None:
    slot_map = SlotMap.even(["shard-1", "shard-2", "shard-3"])
    plan = moves.plan_drain(slot_map, "shard-2", ["shard-1", "shard-3"])
    moved = sorted(s for slots, _, _ in plan for s in slots)
    assert moved == slot_map.slots_of("shard-2")
    assert {target for _, _, target in plan} == {"shard-1", "shard-3"}
    with pytest.raises(errors.BankError) as alone:
        moves.plan_drain(slot_map, "shard-2", [])
    assert alone.value.reason == moves.SHARD_WOULD_BE_EMPTY


def test_flipped_map_moves_only_the_slots_and_bumps_the_version() -> None:
    flipped = moves.flipped_map(two_shards(), [0, 1], "shard-1", "shard-3")
    assert flipped.version == 2
    assert flipped.owners[:3] == ("shard-3", "shard-3", "shard-1")
    assert sum(1 for o in flipped.owners if o == "shard-3") == 2
    with pytest.raises(errors.BankError):
        moves.flipped_map(two_shards(), [4095], "shard-1", "shard-3")
    assert len(flipped.owners) == SLOT_COUNT
