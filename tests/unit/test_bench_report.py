"""`shardbank bench` pure parts: percentiles, pairing by shard, the table and JSON rows, the books check."""

from __future__ import annotations

import argparse
import json
import os
import random

import pytest

from loadtest import bench
from loadtest.bench import Books, Row, Tally


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.percentile(values, 100) == 100.0
    assert bench.percentile(values, 0) == 1.0


def test_percentile_small_and_empty() -> None:
    assert bench.percentile([], 99) == 0.0
    assert bench.percentile([7.0], 50) == 7.0
    assert bench.percentile([1.0, 2.0], 50) == 1.0
    assert bench.percentile([1.0, 2.0], 99) == 2.0
    with pytest.raises(ValueError):
        bench.percentile([1.0], 101)


def test_summarize_counts_transfers_per_second_and_call_latency() -> None:
    tally = Tally(latencies_ms=[3.0, 1.0, 2.0, 10.0], transfers=4000)
    row = bench.summarize("S1", tally, 2.0)
    assert row == Row("S1", "shardbank", 2000.0, 2.0, 10.0)


OWNERS = {1: "shard-1", 2: "shard-2", 3: "shard-1", 4: "shard-2", 5: "shard-1", 6: "shard-2"}


def test_group_by_shard_keeps_order_and_sorts_shards() -> None:
    groups = bench.group_by_shard([6, 1, 2, 3, 4, 5], OWNERS.__getitem__)
    assert list(groups) == ["shard-1", "shard-2"]
    assert groups == {"shard-1": [1, 3, 5], "shard-2": [6, 2, 4]}


def test_pick_pair_single_shard_stays_on_one_shard() -> None:
    groups = bench.group_by_shard(list(OWNERS), OWNERS.__getitem__)
    rng = random.Random(7)
    for _ in range(200):
        debit, credit = bench.pick_pair(groups, False, rng)
        assert debit != credit
        assert OWNERS[debit] == OWNERS[credit]


def test_pick_pair_cross_shard_crosses() -> None:
    groups = bench.group_by_shard(list(OWNERS), OWNERS.__getitem__)
    rng = random.Random(7)
    for _ in range(200):
        debit, credit = bench.pick_pair(groups, True, rng)
        assert OWNERS[debit] != OWNERS[credit]


def test_pick_pair_refuses_impossible_pairs() -> None:
    rng = random.Random(1)
    with pytest.raises(bench.BenchError):
        bench.pick_pair({"shard-1": [1, 2]}, True, rng)
    with pytest.raises(bench.BenchError):
        bench.pick_pair({"shard-1": [1], "shard-2": [2]}, False, rng)


def test_workload_mix_respects_the_fraction() -> None:
    owners = {i: f"shard-{i % 2 + 1}" for i in range(1, 201)}
    workload = bench.Workload(bench.group_by_shard(list(owners), owners.__getitem__), seed=3)
    items = workload.transfers(1000, 0.2)
    cross = sum(1 for t in items if owners[t.debit_account_id] != owners[t.credit_account_id])
    assert 120 <= cross <= 280  # 200 expected
    assert len({t.id for t in items}) == 1000
    assert all(1 <= t.amount <= bench.AMOUNT_MINOR_MAX for t in items)


ROWS = [
    Row("S1", "shardbank", 12345.6, 250.123, 600.5),
    Row("S3", "shardbank", 500.0, 100.0, 300.0),
    Row("PG", "postgresql", 5000.0, 6.2, 15.75),
]


def test_rows_json_shape() -> None:
    rows = json.loads(json.dumps(bench.rows_json(ROWS)))
    assert [set(r) for r in rows] == [{"scenario", "system", "tps", "p50_ms", "p99_ms"}] * 3
    assert rows[0] == {
        "scenario": "S1",
        "system": "shardbank",
        "tps": 12345.6,
        "p50_ms": 250.123,
        "p99_ms": 600.5,
    }


def test_table_has_one_aligned_line_per_row_and_ratios() -> None:
    table = bench.format_table(ROWS, baseline_tps=5000.0).splitlines()
    assert table[0].split() == [
        "SCENARIO",
        "SYSTEM",
        "TRANSFERS/S",
        "P50",
        "MS",
        "P99",
        "MS",
        "VS",
        "POSTGRESQL",
    ]
    assert len(table) == 4
    assert len({len(line) for line in table}) == 1  # right-aligned last column: same width
    assert table[1].split() == ["S1", "shardbank", "12,346", "250.12", "600.50", "2.47x"]
    assert table[3].split()[-1] == "1.00x"


def test_table_without_baseline_shows_dash() -> None:
    line = bench.format_table(ROWS[:1], baseline_tps=None).splitlines()[1]
    assert line.split()[-1] == "-"


def test_parse_scenarios() -> None:
    assert [s.name for s in bench.parse_scenarios("s1, S3,PG")] == ["S1", "S3"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_scenarios("S9")


def test_books_problems_clean_and_broken() -> None:
    ok = Books(balance=1000, held=0, pending_credit=0, negative=0, missing=0, cash_balance=-1000)
    assert bench.books_problems(ok, 1000) == []
    lost = Books(balance=999, held=0, pending_credit=0, negative=0, missing=0, cash_balance=-1000)
    problems = bench.books_problems(lost, 1000)
    assert any("difference -1" in p for p in problems)
    assert any("!= 0" in p for p in problems)
    stuck = Books(balance=1000, held=5, pending_credit=5, negative=1, missing=2, cash_balance=-1000)
    assert len(bench.books_problems(stuck, 1000)) == 3


def test_auth_only_when_a_token_exists() -> None:
    class Before:
        pass

    class After:
        admin_token = "sbk_x"

    assert bench.auth_token(Before()) is None
    assert bench.auth_token(After()) == "sbk_x"
    assert bench.grpc_metadata(None) == ()
    assert bench.grpc_metadata("t") == (("authorization", "Bearer t"),)
    assert "Authorization" not in bench.http_headers(None)
    assert bench.http_headers("t")["Authorization"] == "Bearer t"


def test_resident_ids_are_valid() -> None:
    from shardbank import identity

    for n in (0, 1, 999, 12345, 99999):
        identity.check_cn_resident_id(bench.resident_id(n))


def test_one_shard_runs_only_the_single_shard_scenarios() -> None:
    every = list(bench.SCENARIOS.values())
    run, skipped = bench.runnable(every, shards=1)
    assert [s.name for s in run] == ["S1"]
    assert [s.name for s in skipped] == ["S2", "S3", "S3U", "S4", "S5"]
    assert bench.runnable(every, shards=2) == (every, [])


def test_cpu_per_transfer_in_microseconds() -> None:
    assert bench.cpu_us_per_transfer({"ledger_node": 0.5, "gateway": 0.25}, 10_000) == {
        "gateway": 25.0,
        "ledger_node": 50.0,
    }
    assert bench.cpu_us_per_transfer({"gateway": 1.0}, 0) == {}


def test_process_cpu_reads_proc_and_tolerates_a_gone_process() -> None:
    sum(i * i for i in range(200_000))  # spend a little CPU
    assert bench.process_cpu_s(os.getpid()) > 0
    assert bench.process_cpu_s(2**22 + 12345) == 0.0
