"""The PostgreSQL baseline: pgbench output/log parsing, and a tiny real run of
both transfer variants (fresh cluster, books checked, server stopped, temp dir gone).

The real run is skipped only when the PostgreSQL server binaries are absent;
on Debian they come from `apt-get install -y --no-install-recommends postgresql-15`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from loadtest import pg_baseline
from loadtest.pg_baseline import PgResult, parse_pgbench_output, read_latencies_ms, run_pg_baseline

PGBENCH_15_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: /tmp/x/transfer.sql
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 2
maximum number of tries: 10
duration: 3 s
number of transactions actually processed: 12095
number of failed transactions: 0 (0.000%)
number of transactions retried: 3 (0.025%)
total number of retries: 3
latency average = 0.990 ms
initial connection time = 6.123 ms
tps = 4035.158424 (without initial connection time)
"""


def test_parse_pgbench_output() -> None:
    s = parse_pgbench_output(PGBENCH_15_OUTPUT)
    assert (s.processed, s.failed) == (12095, 0)
    assert s.tps == pytest.approx(4035.158424)


def test_parse_pgbench_output_without_count_raises() -> None:
    with pytest.raises(pg_baseline.PgBaselineError):
        parse_pgbench_output("pgbench: error: connection refused\n")


def test_latencies_from_per_thread_logs_skip_failed(tmp_path: Path) -> None:
    prefix = tmp_path / "txlog"
    (tmp_path / "txlog.123").write_text("0 0 1500 0 1700000000 1\n0 1 500 0 1700000000 2\n")
    (tmp_path / "txlog.123.1").write_text("1 0 failed 0 1700000000 3 9\n1 1 2500 0 1700000000 4 0\n")
    lat = read_latencies_ms(prefix)
    assert lat == [0.5, 1.5, 2.5]
    assert pg_baseline._percentile(lat, 50) == 1.5
    assert pg_baseline._percentile(lat, 99) == 2.5
    assert pg_baseline._percentile([], 99) == 0.0


def _binaries_or_skip() -> None:
    try:
        pg_baseline.find_binaries()
    except pg_baseline.PgBinariesNotFound as e:
        pytest.skip(str(e))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("one_statement", [False, True], ids=["txn", "one-statement"])
def test_tiny_real_run_books_balance(one_statement: bool) -> None:
    _binaries_or_skip()
    # Not pytest's tmp_path: its root is 0700, and as root the server runs as an unprivileged user.
    work_dir = Path(tempfile.mkdtemp(prefix="pgb-test-"))
    try:
        work_dir.chmod(0o755)
        # run_pg_baseline raises BooksDoNotBalance if money or journal rows went missing.
        res = run_pg_baseline(
            accounts=1000, duration_s=3, clients=4, work_dir=work_dir, one_statement=one_statement
        )
        assert isinstance(res, PgResult)
        assert res.scenario == ("pg-transfer-one-statement" if one_statement else "pg-transfer-txn")
        assert res.tps > 0
        assert res.transfers > 0
        assert 0 < res.p50_ms <= res.p99_ms
        assert (res.clients, res.duration_s) == (4, 3.0)
        assert list(work_dir.iterdir()) == [], "temp cluster dir not removed"
        # The server is stopped: no process still runs on a cluster under work_dir.
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True, timeout=10)
        assert str(work_dir) not in ps.stdout
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.mark.timeout(180)
def test_lossy_transfers_fail_the_books_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A "transfer" that credits one unit less than it debits must not produce a result."""
    _binaries_or_skip()
    lossy = pg_baseline.TXN_SCRIPT.replace("balance + :amt WHERE id = :c", "balance + :amt - 1 WHERE id = :c")
    assert lossy != pg_baseline.TXN_SCRIPT
    monkeypatch.setattr(pg_baseline, "TXN_SCRIPT", lossy)
    work_dir = Path(tempfile.mkdtemp(prefix="pgb-test-"))
    try:
        work_dir.chmod(0o755)
        with pytest.raises(pg_baseline.BooksDoNotBalance, match=r"sum\(balance\)"):
            run_pg_baseline(accounts=100, duration_s=1, clients=2, work_dir=work_dir)
        assert list(work_dir.iterdir()) == [], "temp cluster dir not removed after a failure"
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
