"""`loadtest.plot`: transfers/s and latency from a tiny synthetic Locust history, and the bench bar chart."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadtest import plot

pytest.importorskip("matplotlib")

COLUMNS = [
    "Timestamp",
    "User Count",
    "Type",
    "Name",
    "Requests/s",
    "Failures/s",
    "50%",
    "99%",
    "Total Request Count",
    "Total Failure Count",
    "Total Median Response Time",
    "Total Average Response Time",
    "Total Min Response Time",
    "Total Max Response Time",
    "Total Average Content Size",
]


def _write(prefix: Path, rows: list[dict[str, object]]) -> None:
    with Path(f"{prefix}_stats_history.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _history(prefix: Path, with_transfers: bool) -> None:
    rows: list[dict[str, object]] = []
    for i, t in enumerate((1000, 1001, 1002, 1003)):
        if with_transfers:
            # 10 calls/s of 100 transfers: cumulative count 10*i, average size 100.
            rows.append(
                {
                    "Timestamp": t,
                    "Type": "TRANSFERS",
                    "Name": "transfers",
                    "Requests/s": 10,
                    "50%": "N/A",
                    "99%": "N/A",
                    "Total Request Count": 10 * i,
                    "Total Average Content Size": 100 if i else 0,
                }
            )
        rows.append(
            {
                "Timestamp": t,
                "Type": "",
                "Name": "Aggregated",
                "Requests/s": 10 + i,
                "50%": 20 + i,
                "99%": 90 + i,
                "Total Request Count": 20 * i,
                "Total Average Content Size": 50,
            }
        )
    _write(prefix, rows)


def test_transfers_per_second_from_the_transfers_entry(tmp_path: Path) -> None:
    _history(tmp_path / "run", with_transfers=True)
    series = plot.read_history(tmp_path / "run")
    assert series.rate_label == "transfers/s"
    assert series.seconds == [1.0, 2.0, 3.0]
    assert series.rate_per_s == [1000.0, 1000.0, 1000.0]
    assert series.latency_seconds == [0.0, 1.0, 2.0, 3.0]
    assert series.p50_ms == [20.0, 21.0, 22.0, 23.0]
    assert series.p99_ms == [90.0, 91.0, 92.0, 93.0]


def test_without_full_history_falls_back_to_calls(tmp_path: Path) -> None:
    _history(tmp_path / "run", with_transfers=False)
    series = plot.read_history(tmp_path / "run")
    assert series.rate_label.startswith("calls/s")
    assert series.rate_per_s == [10.0, 11.0, 12.0, 13.0]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    _history(tmp_path / "run", with_transfers=True)
    out = plot.plot_history(tmp_path / "run", tmp_path / "out.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_cli(tmp_path: Path) -> None:
    _history(tmp_path / "run", with_transfers=True)
    assert plot.main([str(tmp_path / "run"), str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 0


def test_bench_bar_chart(tmp_path: Path) -> None:
    rows = [
        {"scenario": "S1", "system": "shardbank", "tps": 12000.0, "p50_ms": 1, "p99_ms": 2},
        {"scenario": "PG", "system": "postgresql", "tps": 4000.0, "p50_ms": 1, "p99_ms": 2},
    ]
    out = plot.bench_bar_chart(rows, tmp_path / "bars.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
