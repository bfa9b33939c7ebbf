"""Charts for the benchmarks (matplotlib, headless Agg backend).

    python -m loadtest.plot CSV_PREFIX OUT.png

plots a Locust run from `<CSV_PREFIX>_stats_history.csv`: transfers/s (top)
and p50/p99 call latency (bottom) over time. Transfers/s comes from the
`transfers` entry the locustfile reports (its request count x average content
size is the cumulative number of committed transfers), which Locust writes to
the history only with `--csv-full-history`; without it the top panel shows
calls/s of the Aggregated row instead. `bench_bar_chart` draws
`shardbank bench`'s transfers/s per scenario next to PostgreSQL.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSFERS_ENTRY = "transfers"
AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class Series:
    seconds: list[float]
    rate_per_s: list[float]
    rate_label: str
    latency_seconds: list[float]
    p50_ms: list[float]
    p99_ms: list[float]


def _number(text: str | None) -> float | None:
    if text is None or text in ("", "N/A"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_history(prefix: str | Path) -> Series:
    """Per-timestamp transfers/s (or calls/s) and p50/p99 latency from a Locust stats history CSV."""
    path = Path(f"{prefix}_stats_history.csv")
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    aggregated = [r for r in rows if r.get("Name") == AGGREGATED]
    transfers = [r for r in rows if r.get("Name") == TRANSFERS_ENTRY]
    t0 = min(float(r["Timestamp"]) for r in rows)
    latency = {float(r["Timestamp"]) - t0: (_number(r.get("50%")), _number(r.get("99%"))) for r in aggregated}
    if transfers:
        times, rates = _rate_from_totals(transfers, t0)
        label = "transfers/s"
    else:
        times = [float(r["Timestamp"]) - t0 for r in aggregated]
        rates = [_number(r.get("Requests/s")) or 0.0 for r in aggregated]
        label = "calls/s (run with --csv-full-history for transfers/s)"
    lat_times = sorted(t for t, (p50, p99) in latency.items() if p50 is not None and p99 is not None)
    return Series(
        seconds=times,
        rate_per_s=rates,
        rate_label=label,
        latency_seconds=lat_times,
        p50_ms=[latency[t][0] or 0.0 for t in lat_times],
        p99_ms=[latency[t][1] or 0.0 for t in lat_times],
    )


def _rate_from_totals(rows: Sequence[dict[str, str]], t0: float) -> tuple[list[float], list[float]]:
    """Transfers/s between consecutive history rows of the `transfers` entry.

    Cumulative transfers = Total Request Count x Total Average Content Size."""
    points: dict[float, float] = {}
    for r in rows:
        count = _number(r.get("Total Request Count")) or 0.0
        size = _number(r.get("Total Average Content Size")) or 0.0
        points[float(r["Timestamp"]) - t0] = count * size
    times = sorted(points)
    out_t: list[float] = []
    out_r: list[float] = []
    for before, after in itertools.pairwise(times):
        out_t.append(after)
        out_r.append(max(0.0, (points[after] - points[before]) / (after - before)))
    return out_t, out_r


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(prefix: str | Path, out: str | Path) -> Path:
    series = read_history(prefix)
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(series.seconds, series.rate_per_s, color="tab:blue")
    top.set_ylabel(series.rate_label)
    top.grid(True, alpha=0.3)
    bottom.plot(series.latency_seconds, series.p50_ms, label="p50", color="tab:green")
    bottom.plot(series.latency_seconds, series.p99_ms, label="p99", color="tab:red")
    bottom.set_ylabel("call latency, ms")
    bottom.set_xlabel("seconds since start")
    bottom.legend()
    bottom.grid(True, alpha=0.3)
    fig.suptitle(f"shardbank locust run: {Path(str(prefix)).name}")
    fig.tight_layout()
    out_path = Path(out)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def bench_bar_chart(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Bars of transfers/s per scenario (rows as `shardbank bench --json` prints them)."""
    plt = _pyplot()
    labels = [f"{r['scenario']}\n{r['system']}" for r in rows]
    values = [float(r["tps"]) for r in rows]
    colors = ["tab:gray" if r["system"] == "postgresql" else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 5))
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    ax.set_ylabel("transfers/s")
    ax.set_title("shardbank bench: committed transfers/s (PostgreSQL in gray)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    out_path = Path(out)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.plot", description=__doc__.splitlines()[0])
    parser.add_argument("csv_prefix", metavar="CSV_PREFIX", help="the --csv prefix of a Locust run")
    parser.add_argument("out", metavar="OUT.png")
    args = parser.parse_args(argv)
    print(plot_history(args.csv_prefix, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
