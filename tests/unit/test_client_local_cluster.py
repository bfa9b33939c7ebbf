"""LocalCluster with etcd alone (real process, free ports): start, state
file, kill by name, restart, stop leaves nothing running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from clients import added_shards, cli, health
from clients.cluster_state import read_state, running
from clients.local_cluster import ETCD_NOT_FOUND, RISK_CONFIG_DEFAULT, ClusterError, LocalCluster
from shardbank import meta

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not on PATH"),
]


def etcd_only(data_dir: Path) -> LocalCluster:
    return LocalCluster(data_dir, shards=0, coordinators=0, gateway=False, start_timeout_s=30)


def test_etcd_only_lifecycle(tmp_path: Path) -> None:
    cluster = etcd_only(tmp_path)
    try:
        cluster.start()
        [etcd] = cluster.components()
        assert (etcd.name, etcd.kind, etcd.alive) == ("etcd", "etcd", True)
        assert etcd.pid is not None and running(etcd.pid)
        assert health.etcd_healthy(cluster.etcd_endpoint, 1.0)
        assert etcd.log == tmp_path / "logs" / "etcd.log"

        state = read_state(tmp_path)
        assert state is not None
        assert [(c.name, c.pid) for c in state.components] == [("etcd", etcd.pid)]
        assert running(state.components[0].pid, state.components[0].argv)

        client = meta.connect(cluster.etcd_endpoint)
        meta.init_slot_map(client, ["shard-1", "shard-2"])
        client.close()

        first_pid = etcd.pid
        cluster.kill("etcd")
        assert not cluster.alive("etcd")
        assert not running(first_pid)

        second_pid = cluster.start_component("etcd")
        assert second_pid != first_pid
        client = meta.connect(cluster.etcd_endpoint)
        slot_map = meta.read_slot_map(client)  # survived: etcd data is under DATA/etcd
        client.close()
        assert slot_map is not None and slot_map.shard_ids() == ["shard-1", "shard-2"]

        with pytest.raises(ClusterError):
            cluster.start_component("etcd")  # already running
        with pytest.raises(ClusterError):
            cluster.kill("shard-9")
        with pytest.raises(ClusterError):
            etcd_only(tmp_path).start()  # a second cluster on the same data dir
    finally:
        cluster.stop()
    assert not running(second_pid)
    assert all(not c.alive for c in cluster.components())
    state = read_state(tmp_path)
    assert state is not None and state.components[0].pid is None
    cluster.stop()  # twice is fine


def test_restart_on_existing_data_dir_keeps_the_slot_map(tmp_path: Path) -> None:
    with etcd_only(tmp_path) as cluster:
        client = meta.connect(cluster.etcd_endpoint)
        created = meta.init_slot_map(client, ["shard-1"])
        client.close()
    with etcd_only(tmp_path) as again:  # new free ports, same DATA/etcd
        client = meta.connect(again.etcd_endpoint)
        assert meta.read_slot_map(client) == created
        client.close()


def test_sigterm_and_sigstop(tmp_path: Path) -> None:
    with etcd_only(tmp_path) as cluster:
        pid = cluster.pid("etcd")
        cluster.kill("etcd", signal.SIGSTOP, wait=False)
        assert cluster.alive("etcd")
        cluster.kill("etcd", signal.SIGCONT, wait=False)
        cluster.kill("etcd", signal.SIGTERM)
        assert not cluster.alive("etcd")
        assert pid is not None and not running(pid)


def test_missing_etcd_is_a_clear_error(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, shards=0, coordinators=0, gateway=False, etcd_binary="no-such-etcd")
    with pytest.raises(ClusterError) as caught:
        cluster.start()
    assert caught.value.reason == ETCD_NOT_FOUND
    assert "not on PATH" in caught.value.message


def test_ports_with_a_base_port(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path,
        shards=3,
        coordinators=2,
        base_port=50051,
        etcd_port=2379,
        gateway_port=50051,
        http_port=8080,
    )
    assert cluster.gateway_address == "127.0.0.1:50051"
    assert cluster.node_addresses == {f"shard-{i}": f"127.0.0.1:{50060 + i}" for i in (1, 2, 3)}
    assert cluster.coordinator_addresses == {"coord-1": "127.0.0.1:50071", "coord-2": "127.0.0.1:50072"}
    assert cluster.etcd_endpoint == "127.0.0.1:2379"
    etcd_argv = cluster.spec("etcd").argv
    assert "http://127.0.0.1:2380" in etcd_argv
    node_argv = cluster.spec("shard-2").argv
    assert node_argv[1:] == (
        "-m", "ledger_node", "--shard-id", "shard-2", "--listen", "127.0.0.1:50062",
        "--data-dir", str(tmp_path.resolve() / "shard-2"), "--frame-listen", "127.0.0.1:50132",
        "--etcd", "127.0.0.1:2379",
        "--cluster-secret-file", str(tmp_path.resolve() / "cluster.secret"),
        "--metrics-port", "50092",
    )  # fmt: skip
    assert cluster.spec("gw-1").argv[1:] == (
        "-m", "gateway", "--id", "gw-1", "--listen", "127.0.0.1:50051", "--etcd", "127.0.0.1:2379",
        "--cluster-secret-file", str(tmp_path.resolve() / "cluster.secret"),
        "--http-listen", "127.0.0.1:8080", "--risk-config", RISK_CONFIG_DEFAULT, "--metrics-port", "50081",
    )  # fmt: skip
    assert cluster.metrics_addresses == {
        "shard-1": "127.0.0.1:50091", "shard-2": "127.0.0.1:50092", "shard-3": "127.0.0.1:50093",
        "coord-1": "127.0.0.1:50101", "coord-2": "127.0.0.1:50102", "gw-1": "127.0.0.1:50081",
    }  # fmt: skip
    assert cluster.http_address == "127.0.0.1:8080"
    assert cluster.names() == ["etcd", "shard-1", "shard-2", "shard-3", "coord-1", "coord-2", "gw-1"]


def test_free_ports_are_distinct(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, shards=4, coordinators=3)
    addresses = [c.address for c in cluster.components()]
    assert len(set(addresses)) == len(addresses) == 9
    metrics = list(cluster.metrics_addresses.values())
    assert len(metrics) == 8  # every component but etcd
    assert len(set(metrics + addresses + [cluster.http_address])) == 18


def test_no_metrics_flag_when_metrics_are_off(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, shards=1, coordinators=1, metrics=False)
    assert cluster.metrics_addresses == {}
    assert all("--metrics-port" not in cluster.spec(n).argv for n in cluster.names())
    assert cluster.prometheus_targets() == []


def test_prometheus_file_sd_targets(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, shards=2, coordinators=1, base_port=50051)
    path = cluster.write_prometheus_targets()
    assert path == tmp_path.resolve() / "prometheus" / "targets.json"
    groups = json.loads(path.read_text())
    by_name = {g["labels"]["name"]: g for g in groups}
    assert set(by_name) == {"shard-1", "shard-2", "coord-1", "gw-1"}
    assert by_name["shard-2"] == {
        "targets": ["127.0.0.1:50092"],
        "labels": {"job": "shardbank_ledger_node", "name": "shard-2", "shard": "shard-2"},
    }
    assert by_name["gw-1"]["targets"] == ["127.0.0.1:50081"]


def test_status_json_lists_components_from_the_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with etcd_only(tmp_path) as cluster:
        # No --etcd: the endpoint comes from the state file `start()` wrote.
        code = cli.main(["status", "--json", "--data-dir", str(tmp_path), "--sample-s", "0"])
        out, _ = capsys.readouterr()
        assert code == 0  # etcd answered; nothing else runs, which is reported, not an error
        data = json.loads(out)
        assert data["ok"] and data["etcd"]["endpoint"] == cluster.etcd_endpoint
        assert data["shards"] == [] and data["gateways"] == [] and data["moves"] == []
        assert data["coordinators"]["leader"] == ""
        [etcd] = data["components"]
        assert (etcd["name"], etcd["pid"], etcd["state"]) == ("etcd", cluster.pid("etcd"), "running")
    assert os.path.exists(tmp_path / "cluster.json")


def test_status_lists_a_shard_added_from_another_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`shard add` while `up` runs records the node in added_shards.json, not
    in the state file: status still shows it, running or stopped by its PID."""
    stand_in = subprocess.Popen(["sleep", "60"])  # a live process standing in for the added node
    try:
        with etcd_only(tmp_path):
            added_shards.write(
                tmp_path,
                [
                    added_shards.AddedShard("shard-3", "127.0.0.1:1", ("sleep", "60"), stand_in.pid),
                    added_shards.AddedShard("shard-4", "127.0.0.1:2", ("sleep", "60"), None),
                ],
            )
            assert cli.main(["status", "--json", "--data-dir", str(tmp_path), "--sample-s", "0"]) == 0
            rows = {c["name"]: c for c in json.loads(capsys.readouterr().out)["components"]}
    finally:
        stand_in.kill()
        stand_in.wait()
    assert set(rows) == {"etcd", "shard-3", "shard-4"}
    three, four = rows["shard-3"], rows["shard-4"]
    assert (three["kind"], three["address"], three["pid"], three["state"]) == (
        "ledger_node", "127.0.0.1:1", stand_in.pid, "running"
    )  # fmt: skip
    assert (four["pid"], four["state"]) == (None, "stopped")
    assert three["log"] == str(tmp_path / "logs" / "shard-3.log")
