"""shardbank.metrics: the dashboard only names defined metrics, move records
parse (or are refused) exactly, and the scrape-time collectors export what
they read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shardbank import metrics
from shardbank.moves import MOVES, Move
from shardbank.v1 import types_pb2

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "shardbank.json"
# Labels every series gets from the scrape (Prometheus) or from LocalCluster's file_sd targets.
TARGET_LABELS = {"instance", "job", "name", "shard"}
# Grafana's own variables, replaced by a duration before parsing.
GRAFANA_RANGE = "$__rate_interval"


def expressions(node: Any) -> list[str]:
    """Every PromQL `expr` anywhere in a Grafana dashboard."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """The metric selectors of a PromQL expression, parsed by a real PromQL
    parser (a syntax error raises ValueError)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr.replace(GRAFANA_RANGE, "1m")), pre_visit=visit)
    return found


def used_metrics(dashboard: Any) -> dict[str, set[str]]:
    """Base metric name -> label names its selectors match on, over the whole dashboard."""
    used: dict[str, set[str]] = {}
    for expr in expressions(dashboard):
        for selector in selectors(expr):
            labels = used.setdefault(metrics.base_name(selector.name), set())
            labels |= {m.name for m in selector.matchers.matchers}
    return used


def test_every_metric_and_label_in_the_dashboard_is_defined() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(expressions(dashboard)) >= 20
    used = used_metrics(dashboard)
    defined = metrics.defined_labels()
    assert set(used) - set(defined) == set()
    for name, labels in used.items():
        assert labels <= defined[name] | TARGET_LABELS, (name, labels - defined[name])
    # The main panels are there: throughput, latency, sync time, queue, in-doubt, leader, moves, RocksDB.
    for wanted in (
        "shardbank_gateway_transfers",
        "shardbank_rpc_duration_seconds",
        "shardbank_node_group_commit_sync_seconds",
        "shardbank_batch_items",
        "shardbank_node_writer_queue_items",
        "shardbank_node_in_doubt_legs",
        "shardbank_coordinator_is_leader",
        "shardbank_coordinator_epoch",
        "shardbank_slot_move_progress_ratio",
        "shardbank_rocksdb_estimate_num_keys",
    ):
        assert wanted in used, wanted


def test_the_dashboard_check_catches_typos_and_bad_syntax() -> None:
    typo = {"targets": [{"expr": "sum(rate(shardbank_gateway_transfer_total[$__rate_interval]))"}]}
    assert set(used_metrics(typo)) - metrics.defined_names() == {"shardbank_gateway_transfer"}
    bad_label = {"expr": 'shardbank_node_journal_seq{rpc="x"}'}
    assert used_metrics(bad_label) == {"shardbank_node_journal_seq": {"rpc"}}
    with pytest.raises(ValueError):
        selectors("sum(rate(shardbank_batch_items_count[1m])")


def record(**changes: Any) -> str:
    base = {
        "move_id": "m1", "slots": [100, 101], "source": "shard-1", "target": "shard-3", "phase": "COPYING",
        "accounts_total": 200, "accounts_copied": 50, "records_copied": 400,
        "started_at_unix_ms": 1_000, "updated_at_unix_ms": 2_000, "error": "",
    }  # fmt: skip
    base.update(changes)
    return json.dumps(base)


def test_move_record_parses_the_movers_schema() -> None:
    move = Move.from_json(record())
    assert (move.move_id, move.slots, move.source, move.target) == ("m1", (100, 101), "shard-1", "shard-3")
    assert move.progress == 0.25 and not move.terminal
    assert Move.from_json(record(phase="ROLLED_BACK")).terminal
    assert Move.from_json(record(accounts_total=0, phase="VERIFYING")).progress == 1.0
    assert Move.from_json(record(accounts_total=0, phase="COPYING")).progress == 0.0
    assert Move.from_json(record(accounts_copied=500)).progress == 1.0


@pytest.mark.parametrize("raw", ["{nope", "[]", record(move_id=None) + "x", json.dumps({"move_id": "x"})])
def test_move_record_refuses_what_is_not_one(raw: str) -> None:
    with pytest.raises(ValueError):
        Move.from_json(raw)


class FakeMeta:
    def __init__(self, key: str) -> None:
        self.key = key.encode()


class FakeEtcd:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get_prefix(self, prefix: str) -> list[tuple[bytes, FakeMeta]]:
        return [(v.encode(), FakeMeta(k)) for k, v in sorted(self.values.items()) if k.startswith(prefix)]


def scrape(collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_move_collector_exports_unfinished_moves_only_while_active() -> None:
    etcd = FakeEtcd(
        {
            MOVES + "m1": record(),
            MOVES + "m2": record(move_id="m2", phase="COMPLETED", started_at_unix_ms=0),
            MOVES + "bad": "{",
        }
    )
    moves, unreadable = metrics.read_moves(etcd)
    assert [m.move_id for m in moves] == ["m2", "m1"] and unreadable == [MOVES + "bad"]
    active = {"on": True}
    collector = metrics.MoveCollector(lambda: etcd, lambda: active["on"], lambda: 6_000)
    found = scrape(collector)
    key = (("move_id", "m1"), ("source", "shard-1"), ("target", "shard-3"))
    assert found[("shardbank_slot_move_progress_ratio", key)] == 0.25
    assert found[("shardbank_slot_move_accounts_copied", key)] == 50
    assert found[("shardbank_slot_move_age_seconds", key)] == 5.0
    assert found[("shardbank_slot_move_phase", tuple(sorted((*key, ("phase", "COPYING")))))] == 1
    assert found[("shardbank_slot_moves", (("phase", "COMPLETED"),))] == 1
    assert found[("shardbank_slot_moves", (("phase", "FAILED"),))] == 0
    assert not any(dict(labels).get("move_id") == "m2" for _, labels in found)
    active["on"] = False
    assert scrape(collector) == {}


def test_move_collector_survives_etcd_down() -> None:
    def broken() -> Any:
        raise ConnectionError("etcd down")

    assert scrape(metrics.MoveCollector(broken, lambda: True, lambda: 0)) == {}


def test_node_collector_exports_readings_and_survives_a_closed_db() -> None:
    readings = metrics.NodeReadings(
        gauges={"shardbank_node_writer_queue_items": 7, "shardbank_node_in_doubt_legs": 2},
        counters={"shardbank_node_transfers_committed": 1234},
        rocksdb=metrics.rocksdb_readings({"rocksdb.estimate-num-keys": 99}.get),
    )
    found = scrape(metrics.NodeCollector(lambda: readings))
    assert found[("shardbank_node_writer_queue_items", ())] == 7
    assert found[("shardbank_node_in_doubt_legs", ())] == 2
    assert found[("shardbank_node_transfers_committed_total", ())] == 1234
    assert found[("shardbank_rocksdb_estimate_num_keys", ())] == 99
    assert ("shardbank_rocksdb_live_sst_files_size_bytes", ()) not in found  # the DB did not answer it

    def closed() -> metrics.NodeReadings:
        raise RuntimeError("DB closed")

    assert scrape(metrics.NodeCollector(closed)) == {}


def transfer(kind: int, status: int, code: int = 0) -> types_pb2.Transfer:
    return types_pb2.Transfer(kind=kind, status=status, code=code)


def test_outcome_labels_and_one_increment_per_kind_and_outcome() -> None:
    committed = types_pb2.TRANSFER_STATUS_COMMITTED
    assert metrics.outcome_label(transfer(types_pb2.TRANSFER_KIND_TRANSFER, committed)) == "committed"
    assert metrics.outcome_label(transfer(0, types_pb2.TRANSFER_STATUS_REJECTED, 3)) == "rejected"
    assert metrics.outcome_label(transfer(0, types_pb2.TRANSFER_STATUS_PENDING, 14)) == "unavailable"

    def count(kind: str, outcome: str) -> float:
        return metrics.GATEWAY_TRANSFERS.labels(kind, outcome)._value.get()

    before = (count("payment", "committed"), count("deposit", "aborted"))
    metrics.count_transfers(
        [transfer(types_pb2.TRANSFER_KIND_PAYMENT, committed)] * 3
        + [transfer(types_pb2.TRANSFER_KIND_DEPOSIT, types_pb2.TRANSFER_STATUS_ABORTED, 9)]
    )
    assert (count("payment", "committed"), count("deposit", "aborted")) == (before[0] + 3, before[1] + 1)
