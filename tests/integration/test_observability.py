"""Metrics endpoints and `shardbank status` against a real cluster.

Every component's /metrics is found the way Prometheus service discovery or
`status` would find it (the `metrics_address` in its etcd registration),
scraped after real transfers, and parsed with prometheus_client's own parser.
Slot-move records are written into the real etcd in the mover's schema.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import cli
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import meta
from shardbank.moves import MOVES
from shardbank.v1 import types_pb2
from tests.integration.helpers import open_on_shard

pytestmark = pytest.mark.integration

SCRAPE_TIMEOUT_S = 5.0
# A restarted shard re-registers within one lease refresh; bound the wait generously.
REGISTER_WAIT_S = 20.0
COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= set(found))


def registrations(cluster: LocalCluster) -> dict[str, dict[str, dict[str, Any]]]:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        return {
            "shards": meta.list_shards(client),
            "coordinators": meta.read_json_prefix(client, meta.COORDINATORS),
            "gateways": meta.read_json_prefix(client, meta.GATEWAYS),
        }
    finally:
        client.close()


@pytest.fixture(scope="module")
def traffic(client: BankClient, cluster: LocalCluster) -> dict[str, int]:
    """A deposit, a single-shard and a cross-shard transfer, all committed."""
    alice = open_on_shard(client, cluster, "shard-1")
    carol = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-2")
    assert client.deposit(alice.id, 10_000, "CNY").status == COMMITTED
    assert (
        client.transfer(alice.id, carol.id, 1_000, "CNY", transfer_id=str(uuid.uuid4())).status == COMMITTED
    )
    assert client.transfer(alice.id, bob.id, 2_000, "CNY", transfer_id=str(uuid.uuid4())).status == COMMITTED
    return {"alice": alice.id, "bob": bob.id, "carol": carol.id}


def test_every_component_announces_and_serves_metrics_with_transfer_counts(
    cluster: LocalCluster, traffic: dict[str, int]
) -> None:
    found = registrations(cluster)
    announced = {
        **{k: v["metrics_address"] for k, v in found["shards"].items()},
        **{k: v["metrics_address"] for k, v in found["coordinators"].items()},
        **{k: v["metrics_address"] for k, v in found["gateways"].items()},
    }
    assert announced == cluster.metrics_addresses
    targets = json.loads(cluster.prometheus_targets_path.read_text())
    assert sorted(t for group in targets for t in group["targets"]) == sorted(announced.values())

    gateway = scrape(announced["gw-1"])
    assert value(gateway, "shardbank_gateway_transfers_total", kind="transfer", outcome="committed") >= 2
    assert value(gateway, "shardbank_gateway_transfers_total", kind="deposit", outcome="committed") >= 1
    assert (
        value(gateway, "shardbank_rpc_duration_seconds_count", component="gateway", rpc="SubmitTransfers")
        >= 3
    )
    assert value(gateway, "shardbank_batch_items_count", component="gateway", rpc="SubmitTransfers") >= 3

    for shard_id in ("shard-1", "shard-2"):
        node = scrape(announced[shard_id])
        assert value(node, "shardbank_node_transfers_committed_total") > 0, shard_id
        assert value(node, "shardbank_node_group_commit_items_count") > 0, shard_id
        assert value(node, "shardbank_node_group_commit_sync_seconds_count") > 0, shard_id
        assert value(node, "shardbank_node_accounts") >= 1, shard_id
        assert value(node, "shardbank_node_journal_seq") > 0, shard_id
        assert value(node, "shardbank_node_slots_owned") == 2048, shard_id
        # Frame lanes open: shard-1 took the gateway's single-shard writes and
        # the coordinator's Decide, shard-2 only the coordinator's Prepare/Finish.
        lanes = {"shard-1": 2, "shard-2": 1}[shard_id]
        assert value(node, "shardbank_node_frame_connections") == lanes, shard_id
        assert value(node, "shardbank_rocksdb_estimate_num_keys") > 0, shard_id
        assert ("shardbank_rocksdb_mem_tables_size_bytes", ()) in node, shard_id
    # The cross-shard transfer prepared on shard-2 and was finished there too.
    shard_2 = scrape(announced["shard-2"])
    assert value(shard_2, "shardbank_rpc_duration_seconds_count", component="ledger_node", rpc="Prepare") >= 1

    coordinators = {name: scrape(announced[name]) for name in ("coord-1", "coord-2")}
    leaders = [name for name, s in coordinators.items() if value(s, "shardbank_coordinator_is_leader") == 1]
    assert len(leaders) == 1
    leader = coordinators[leaders[0]]
    assert value(leader, "shardbank_coordinator_transfers_total", outcome="committed") >= 1
    assert value(leader, "shardbank_coordinator_round_items_count") >= 1
    assert value(leader, "shardbank_coordinator_epoch") > 0
    assert value(leader, "shardbank_coordinator_leader_changes_total") >= 1


def move_record(move_id: str, phase: str, copied: int, total: int, slots: list[int]) -> str:
    now_ms = int(time.time() * 1000)
    return json.dumps(
        {
            "move_id": move_id,
            "slots": slots,
            "source": "shard-1",
            "target": "shard-2",
            "phase": phase,
            "accounts_total": total,
            "accounts_copied": copied,
            "records_copied": 3 * copied,
            "started_at_unix_ms": now_ms - 5_000,
            "updated_at_unix_ms": now_ms,
            "error": "",
        }
    )


@pytest.fixture
def moves(cluster: LocalCluster) -> Iterator[dict[str, str]]:
    """An unfinished and a finished move, plus a key that is not a move record."""
    running, done = f"m-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    client = meta.connect(cluster.etcd_endpoint)
    try:
        client.put(MOVES + running, move_record(running, "COPYING", 30, 120, [100, 101, 102]))
        client.put(MOVES + done, move_record(done, "COMPLETED", 7, 7, [5]))
        client.put(MOVES + "garbage", "{not json")
        yield {"running": running, "done": done}
    finally:
        client.delete_prefix(MOVES)
        client.close()


def status_json(cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    code = cli.main(["status", "--json", "--data-dir", str(cluster.data_dir), "--sample-s", "0.5", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_status_shows_the_cluster_and_moves_in_progress(
    cluster: LocalCluster, traffic: dict[str, int], moves: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = status_json(cluster, capsys)
    assert code == 0
    assert report["ok"] and report["etcd"]["healthy"]
    assert [m["name"] for m in report["etcd"]["members"]] == ["sb"]
    shards = {s["shard_id"]: s for s in report["shards"]}
    assert set(shards) == {"shard-1", "shard-2"}
    for shard_id, row in shards.items():
        assert row["state"] == "up", row
        assert row["address"] == cluster.address(shard_id)
        assert row["slots"] == 2048
        assert row["journal_seq"] > 0
        assert row["transfers_per_s"] is not None and row["transfers_per_s"] >= 0
        assert row["in_doubt_legs"] == 0
    assert shards["shard-1"]["slot_ranges"] == ["0-2047"]
    assert shards["shard-1"]["accounts"] >= 2
    coordinators = report["coordinators"]
    assert coordinators["leader"] in ("coord-1", "coord-2") and coordinators["epoch"] > 0
    roles = sorted((m["role"], m["state"]) for m in coordinators["members"])
    assert roles == [("leader", "up"), ("standby", "standby")]
    assert [(g["gateway_id"], g["state"]) for g in report["gateways"]] == [("gw-1", "up")]
    by_id = {m["move_id"]: m for m in report["moves"]}
    assert set(by_id) == {moves["running"], moves["done"]}  # the garbage key is skipped, not a crash
    running = by_id[moves["running"]]
    assert (running["phase"], running["accounts_copied"], running["accounts_total"]) == ("COPYING", 30, 120)
    assert running["progress"] == 0.25 and not running["terminal"]
    assert by_id[moves["done"]]["terminal"]

    # The table form shows the move's progress and the leader.
    assert cli.main(["status", "--data-dir", str(cluster.data_dir), "--sample-s", "0"]) == 0
    text = capsys.readouterr().out
    assert moves["running"] in text and "25.0%" in text and moves["done"] not in text
    assert f"coordinator leader {coordinators['leader']}" in text

    # The leader exports the unfinished move's progress; the standby exports none.
    leader_metrics = scrape(cluster.metrics_addresses[coordinators["leader"]])
    assert value(leader_metrics, "shardbank_slot_move_progress_ratio", move_id=moves["running"]) == 0.25
    assert value(leader_metrics, "shardbank_slot_move_phase", move_id=moves["running"], phase="COPYING") == 1
    assert value(leader_metrics, "shardbank_slot_move_accounts_copied", move_id=moves["done"]) == 0
    assert value(leader_metrics, "shardbank_slot_moves", phase="COMPLETED") == 1
    standby = next(m["coordinator_id"] for m in coordinators["members"] if m["role"] == "standby")
    assert value(scrape(cluster.metrics_addresses[standby]), "shardbank_slot_moves") == 0


def test_status_shows_a_killed_shard_as_down_not_a_crash(
    cluster: LocalCluster, traffic: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.kill("shard-2")
    try:
        code, report = status_json(cluster, capsys)
        assert code == 0
        shards = {s["shard_id"]: s for s in report["shards"]}
        assert shards["shard-1"]["state"] == "up"
        assert shards["shard-2"]["state"] in ("down", "unreachable")  # "unreachable" until its lease ends
        assert shards["shard-2"]["error"]
        assert shards["shard-2"]["slots"] == 2048  # still owns its slots in the map
    finally:
        cluster.start_component("shard-2")
    deadline = time.monotonic() + REGISTER_WAIT_S
    while "shard-2" not in registrations(cluster)["shards"] and time.monotonic() < deadline:
        time.sleep(0.2)


def test_status_of_an_etcd_that_is_not_there_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    code = cli.main(
        ["status", "--json", "--data-dir", str(tmp_path), "--etcd", "127.0.0.1:1", "--deadline", "1"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["ok"] is False and report["etcd"]["healthy"] is False
