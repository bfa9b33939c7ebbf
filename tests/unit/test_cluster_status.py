"""`shardbank status`: rows from etcd registrations and node samples (pure),
the transfers/s arithmetic, and the text form."""

from __future__ import annotations

from typing import Any

from clients import cluster_status, render
from shardbank import meta
from shardbank.slots import SLOT_COUNT, SlotMap
from shardbank.v1 import ledger_pb2


def info(applied: int, pid: int = 10, **fields: Any) -> ledger_pb2.NodeInfo:
    return ledger_pb2.NodeInfo(transfers_applied=applied, pid=pid, **fields)


def test_transfer_rate_from_two_samples() -> None:
    assert cluster_status.transfer_rate((1.0, info(100)), (3.0, info(700))) == 300.0
    assert cluster_status.transfer_rate((1.0, info(100)), None) is None
    assert cluster_status.transfer_rate((1.0, info(100)), (3.0, "UNAVAILABLE")) is None
    assert cluster_status.transfer_rate((1.0, info(100)), (1.0, info(200))) is None  # no time passed
    assert cluster_status.transfer_rate((1.0, info(100, pid=1)), (2.0, info(200, pid=2))) is None  # restarted


def test_shard_rows_up_unreachable_and_down() -> None:
    slot_map = SlotMap.even(["shard-1", "shard-2", "shard-3"])
    registered = {
        "shard-1": {"address": "h:1", "metrics_address": "h:91", "frame_address": "h:131"},
        "shard-2": {"address": "h:2"},
        "shard-10": {"address": "h:10"},  # registered, owns no slots yet (a new shard)
    }
    first = {
        "shard-1": (0.0, info(10, accounts=5, journal_seq=40, in_doubt_legs=1)),
        "shard-2": (0.0, "DEADLINE"),
    }
    second = {
        "shard-1": (0.5, info(60, accounts=6, journal_seq=90, in_doubt_legs=0)),
        "shard-2": (0.5, "DEADLINE"),
    }
    rows = {r["shard_id"]: r for r in cluster_status.shard_rows(slot_map, registered, first, second)}
    assert [r for r in rows] == ["shard-1", "shard-2", "shard-3", "shard-10"]  # numeric order
    one = rows["shard-1"]
    assert (one["state"], one["accounts"], one["journal_seq"], one["in_doubt_legs"]) == ("up", 6, 90, 0)
    assert one["transfers_per_s"] == 100.0 and one["metrics_address"] == "h:91"
    assert one["frame_address"] == "h:131" and rows["shard-2"]["frame_address"] == ""
    assert one["slots"] == len(slot_map.slots_of("shard-1")) and one["slot_ranges"] == ["0-1365"]
    assert rows["shard-2"]["state"] == "unreachable" and "DEADLINE" in rows["shard-2"]["error"]
    assert rows["shard-3"]["state"] == "down" and rows["shard-3"]["slots"] > 0
    assert rows["shard-10"]["state"] == "unreachable" and rows["shard-10"]["slots"] == 0


def test_slot_ranges_after_a_move() -> None:
    owners = ["shard-1"] * SLOT_COUNT
    owners[100:200] = ["shard-2"] * 100
    owners[300] = "shard-2"
    slot_map = SlotMap(2, tuple(owners))
    assert cluster_status.slot_ranges(slot_map, "shard-2") == ["100-199", "300"]
    assert cluster_status.slot_ranges(slot_map, "shard-1") == ["0-99", "200-299", f"301-{SLOT_COUNT - 1}"]
    assert cluster_status.slot_ranges(None, "shard-1") == []


def test_coordinator_section_names_leader_and_standbys() -> None:
    leader = meta.Leader("coord-2", "h:72", 41)
    section = cluster_status.coordinator_section(
        leader, {"coord-1": {"address": "h:71"}, "coord-2": {"address": "h:72", "metrics_address": "h:102"}}
    )
    assert (section["leader"], section["epoch"]) == ("coord-2", 41)
    assert [(m["coordinator_id"], m["role"]) for m in section["members"]] == [
        ("coord-1", "standby"),
        ("coord-2", "leader"),
    ]
    assert cluster_status.coordinator_section(None, {})["leader"] == ""


def report(moves: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ok": True,
        "etcd": {"endpoint": "h:2379", "healthy": True, "version": "3.4", "leader": "sb",
                 "members": [{"name": "sb", "client_urls": ["http://h:2379"]}]},
        "slot_map": {"version": 3, "slot_count": SLOT_COUNT},
        "shards": [
            {"shard_id": "shard-1", "address": "h:1", "state": "up", "slots": 4096, "slot_ranges": ["0-4095"],
             "accounts": 5, "journal_seq": 9, "transfers_per_s": 12.5, "in_doubt_legs": 0,
             "writer_queue_items": 0},
            {"shard_id": "shard-2", "address": "", "state": "down", "slots": 0, "slot_ranges": [],
             "error": "not registered in etcd (process down)"},
        ],
        "coordinators": {"leader": "", "epoch": 0, "members": []},
        "gateways": [],
        "moves": moves,
    }  # fmt: skip


def move(move_id: str, phase: str, progress: float, terminal: bool) -> dict[str, Any]:
    return {
        "move_id": move_id, "phase": phase, "source": "shard-1", "target": "shard-2", "slots": 100,
        "first_slot": 100, "last_slot": 199, "accounts_copied": 30, "accounts_total": 120,
        "progress": progress, "error": "", "terminal": terminal,
    }  # fmt: skip


def test_text_form_shows_down_parts_and_move_progress() -> None:
    text = render.status(report([move("m-run", "COPYING", 0.25, False), move("m-old", "COMPLETED", 1, True)]))
    assert "shard-2" in text and "DOWN" in text and "not registered" in text
    assert "coordinator leader NONE (epoch 0)" in text
    assert "gateways: none" in text
    assert "m-run" in text and "COPYING" in text and "25.0%" in text and "(1 finished)" in text
    assert "m-old" not in text
    assert "12.5" in text


def test_text_form_when_etcd_is_down() -> None:
    down = {"ok": False, "etcd": {"endpoint": "h:1", "healthy": False, "error": "ConnectionFailedError"}}
    assert render.status(down) == "etcd h:1: DOWN (ConnectionFailedError); nothing else can be read"


def test_progress_bar_bounds() -> None:
    assert render.progress_bar(0.0, 10) == "[..........]   0.0%"
    assert render.progress_bar(0.5, 10) == "[#####.....]  50.0%"
    assert render.progress_bar(1.5, 10).startswith("[##########]")


def test_health_states_of_coordinators_and_gateways() -> None:
    from clients import health

    leader = meta.Leader("coord-1", "h:71", 7)
    registered = {
        "coord-1": {"address": "h:71"},
        "coord-2": {"address": "h:72"},
        "coord-3": {"address": "h:73"},
    }
    probed = {"coord-1": health.SERVING, "coord-2": health.NOT_SERVING, "coord-3": None}
    states = [m["state"] for m in cluster_status.coordinator_section(leader, registered, probed)["members"]]
    assert states == ["up", "standby", "unreachable"]
    assert cluster_status.health_state(health.NOT_SERVING) == "not_serving"
    assert "UNREACHABLE" in render.status(
        report([]) | {"gateways": [{"gateway_id": "gw-1", "address": "h:1", "http_address": "",
                                    "metrics_address": "", "state": "unreachable"}]}
    )  # fmt: skip
