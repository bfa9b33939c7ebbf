"""PostgreSQL baseline for `shardbank bench`: the same transfers, done by PostgreSQL.

A transfers/s number only means something next to a reference, so the
benchmark runs PostgreSQL on the same machine, in the same run, doing the same
work with the same durability promise (the commit is fsynced before the client
hears "committed": ``fsync=on``, ``synchronous_commit=on``). This module:

1. finds the server binaries (``initdb``, ``pg_ctl``, ``postgres``,
   ``pgbench``, ``psql``) - on Debian they all ship in ``postgresql-15``
   (``apt-get install -y --no-install-recommends postgresql-15``);
2. creates a throw-away cluster in a temp dir and starts it listening only on a
   unix socket inside that dir and on 127.0.0.1 at a free port; PostgreSQL
   refuses to run as root, so when we are root the server runs as the
   ``postgres`` system user (else ``nobody``) via ``runuser``;
3. loads ``accounts`` (each funded) and an empty ``journal``;
4. drives it with ``pgbench`` over 127.0.0.1 TCP (the same loopback path
   shardbank's clients use) with a custom transfer script, and takes p50/p99
   from pgbench's per-transaction log (exact, unlike ``--progress`` averages);
5. checks the books - total money unchanged, every account equals its opening
   balance plus its journal lines, one journal row per transaction pgbench
   counted - and raises :class:`BooksDoNotBalance` otherwise, because a
   baseline that loses money is not a baseline;
6. always stops the server and removes the temp dir.

Every subprocess call has a timeout, so a wedged server cannot hang the bench.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

OPENING_BALANCE = 1_000_000_000
"""Minor units per account: large enough that a random walk of small
transfers never hits the CHECK (an overdraft error would abort a pgbench
client and end the run early)."""

AMOUNT_MAX = 100
DB_NAME = "bank"
DB_USER = "bench"
INSTALL_HINT = "apt-get update && apt-get install -y --no-install-recommends postgresql-15"

# Per-transaction log lines are ~50 bytes; above this many expected lines we
# log only a sample, so a long run cannot fill the disk. The estimate assumes
# the fastest rate this box could plausibly reach.
LOG_LINES_MAX = 3_000_000
TPS_CEILING_GUESS = 50_000.0

STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
SQL_TIMEOUT_S = 300
PGBENCH_GRACE_S = 120
# Deadlocks are avoided by lock ordering; retries are only a safety net so a
# rare one is retried like a real application would, not counted as lost.
MAX_TRIES = 10

# Two UPDATEs and a journal INSERT in one transaction, as an application would
# write it. The two account rows are locked in ascending id order (the \if),
# which is what a careful application does to rule out deadlocks between
# opposite transfers A->B and B->A.
TXN_SCRIPT = """\
\\set d random(1, :accounts)
\\set c 1 + (:d + random(0, :accounts - 2)) % :accounts
\\set amt random(1, {amount_max})
BEGIN;
\\if :d < :c
UPDATE accounts SET balance = balance - :amt WHERE id = :d;
UPDATE accounts SET balance = balance + :amt WHERE id = :c;
\\else
UPDATE accounts SET balance = balance + :amt WHERE id = :c;
UPDATE accounts SET balance = balance - :amt WHERE id = :d;
\\endif
INSERT INTO journal (transfer_id, debit, credit, amount) VALUES (gen_random_uuid(), :d, :c, :amt);
COMMIT;
"""

# The same transfer as one statement (one round trip, implicit transaction).
# One UPDATE touches both rows through the primary-key index with
# `id = ANY(...)`, which visits (and locks) the keys in sorted order, so it is
# deadlock-free like the script above. The journal row is written only if both
# rows were updated; the books check would catch anything else.
ONE_STATEMENT_SCRIPT = """\
\\set d random(1, :accounts)
\\set c 1 + (:d + random(0, :accounts - 2)) % :accounts
\\set amt random(1, {amount_max})
WITH moved AS (
  UPDATE accounts SET balance = balance + CASE WHEN id = :d THEN -1 ELSE 1 END * :amt
  WHERE id IN (:d, :c) RETURNING id
)
INSERT INTO journal (transfer_id, debit, credit, amount)
SELECT gen_random_uuid(), :d, :c, :amt FROM (SELECT count(*) AS n FROM moved) m WHERE m.n = 2;
"""

SCHEMA_SQL = """\
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE journal (
  id bigserial PRIMARY KEY,
  transfer_id uuid NOT NULL UNIQUE,
  debit bigint,
  credit bigint,
  amount bigint,
  at timestamptz DEFAULT now()
);
INSERT INTO accounts (id, balance) SELECT g, {opening} FROM generate_series(1, {accounts}) g;
VACUUM ANALYZE accounts;
VACUUM ANALYZE journal;
"""


class PgBaselineError(RuntimeError):
    """The baseline could not be run (binaries missing, server did not start...)."""


class PgBinariesNotFound(PgBaselineError):
    """The PostgreSQL server binaries are not installed; the message says how to install them."""


class BooksDoNotBalance(PgBaselineError):
    """PostgreSQL's end state does not match the transfers pgbench reported."""


@dataclass(frozen=True)
class PgResult:
    """One baseline run. `tps` is pgbench's (committed transfers / s, excluding connection setup)."""

    scenario: str
    tps: float
    p50_ms: float
    p99_ms: float
    transfers: int
    clients: int
    duration_s: float


@dataclass(frozen=True)
class PgBinaries:
    """Absolute paths of the programs we run (never the Debian pg_wrapper, which wants clusters)."""

    initdb: Path
    pg_ctl: Path
    postgres: Path
    pgbench: Path
    psql: Path


_TOOLS = ("initdb", "pg_ctl", "postgres", "pgbench", "psql")


def find_binaries() -> PgBinaries:
    """Locate one PostgreSQL installation that has all the tools we need.

    Prefers the newest ``/usr/lib/postgresql/<ver>/bin`` (Debian) so that all
    tools come from the same version, then ``$PG_BIN`` overrides, then PATH.
    ``/usr/bin/pgbench`` on Debian is ``pg_wrapper``, which picks a version
    from configured clusters; we avoid it by resolving real binaries.
    """
    candidates: list[Path] = []
    env_dir = os.environ.get("PG_BIN")
    if env_dir:
        candidates.append(Path(env_dir))

    def version_key(p: str) -> tuple[int, ...]:
        parts = Path(p).parent.name.split(".")
        return tuple(int(x) for x in parts if x.isdigit())

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    candidates.extend(Path(d) for d in debian)
    for tool in ("pg_ctl", "initdb"):
        found = shutil.which(tool)
        if found:
            candidates.append(Path(found).resolve().parent)
    for d in candidates:
        paths = [d / t for t in _TOOLS]
        if all(p.is_file() and os.access(p, os.X_OK) for p in paths):
            return PgBinaries(*paths)
    missing = [t for t in _TOOLS if not any((d / t).is_file() for d in candidates)]
    raise PgBinariesNotFound(
        f"PostgreSQL binaries not found (missing: {', '.join(missing) or 'a directory with all of them'}; "
        f"looked in {[str(c) for c in candidates] or 'nothing'}). On Debian all of them ship in the "
        f"postgresql-15 package: {INSTALL_HINT}"
    )


def _server_user() -> str | None:
    """The OS user to run initdb/postgres as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PgBaselineError("running as root but neither a 'postgres' nor a 'nobody' user exists")


def _as_user(user: str | None, argv: Sequence[str]) -> list[str]:
    """Prefix argv so it runs as `user` (PostgreSQL refuses to run as root)."""
    if user is None:
        return list(argv)
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", user, "--", *argv]


def _run(argv: Sequence[str], timeout: float, cwd: Path, what: str, stdin: str | None = None) -> str:
    """Run a command with a timeout; on failure raise with its output (the only useful diagnostic)."""
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10"},
        )
    except subprocess.TimeoutExpired as e:
        raise PgBaselineError(f"{what}: timed out after {timeout:.0f}s") from e
    if proc.returncode != 0:
        raise PgBaselineError(
            f"{what}: exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc.stdout + proc.stderr


def _free_port() -> int:
    """A port free on 127.0.0.1 right now (startup retries on the small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of already-sorted values; 0.0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def read_latencies_ms(log_prefix: Path) -> list[float]:
    """Latencies (ms) of successful transactions from pgbench's ``--log`` files, sorted.

    Line format (PG 15): ``client_id transaction_no time script_no epoch epoch_us [retries]``
    where ``time`` is µs, or ``failed`` / ``skipped`` for transactions that did not commit.
    One file per thread: ``<prefix>.<pid>`` and ``<prefix>.<pid>.<n>``.
    """
    out: list[float] = []
    for name in glob.glob(f"{log_prefix}.*"):
        with open(name, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    out.append(int(parts[2]) / 1000.0)
    out.sort()
    return out


@dataclass(frozen=True)
class PgbenchSummary:
    """What we need from pgbench's report."""

    processed: int
    failed: int
    tps: float


def parse_pgbench_output(text: str) -> PgbenchSummary:
    """Pull transaction counts and tps out of pgbench's summary (format of PG 13-16)."""
    m = re.search(r"number of transactions actually processed:\s*(\d+)", text)
    if not m:
        raise PgBaselineError(f"pgbench output has no transaction count:\n{text[-4000:]}")
    processed = int(m.group(1))
    fm = re.search(r"number of failed transactions:\s*(\d+)", text)
    failed = int(fm.group(1)) if fm else 0
    tm = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text) or re.search(
        r"tps = ([0-9.]+)", text
    )
    if not tm:
        raise PgBaselineError(f"pgbench output has no tps:\n{text[-4000:]}")
    return PgbenchSummary(processed=processed, failed=failed, tps=float(tm.group(1)))


class _Cluster:
    """A throw-away PostgreSQL cluster in `root`; `stop()` is safe to call in any state."""

    def __init__(self, bins: PgBinaries, root: Path, user: str | None, clients: int) -> None:
        self.bins = bins
        self.root = root
        self.user = user
        self.clients = clients
        self.data = root / "data"
        self.sock = root / "sock"
        self.port = 0
        self.started = False

    def init(self) -> None:
        """initdb with trust auth: nothing but our own socket and 127.0.0.1 can reach it."""
        self.sock.mkdir(mode=0o700)
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            # A work_dir under e.g. /root is not traversable by the server user; say so plainly.
            try:
                _run(_as_user(self.user, ["test", "-w", str(self.root)]), timeout=10, cwd=Path("/"), what="")
            except PgBaselineError as e:
                raise PgBaselineError(
                    f"{self.root} is not reachable by the server user {self.user!r}; "
                    "pass a work_dir whose parents are world-traversable (e.g. /tmp or /var/tmp)"
                ) from e
        _run(
            _as_user(
                self.user,
                [
                    str(self.bins.initdb),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
            ),
            timeout=120,
            cwd=self.root,
            what="initdb",
        )

    def _write_conf(self) -> None:
        """Durable settings (the promise shardbank makes) and loopback/socket-only listening."""
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sock}'",
            "max_connections": str(max(self.clients + 10, 20)),
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "wal_sync_method": "fdatasync",
            "shared_buffers": "256MB",
            # Keep checkpoints from landing in the middle of a short run by size.
            "max_wal_size": "4GB",
            "checkpoint_timeout": "15min",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# --- loadtest.pg_baseline ---\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def start(self) -> None:
        """Start on a free port; retry a couple of times if another process grabbed the port."""
        last: Exception | None = None
        for _ in range(3):
            self.port = _free_port()
            self._write_conf()  # later settings win, so re-appending just updates the port
            self.started = True  # from here on stop() must try
            try:
                _run(
                    _as_user(
                        self.user,
                        [
                            str(self.bins.pg_ctl),
                            "-D",
                            str(self.data),
                            "-l",
                            str(self.root / "server.log"),
                            "-w",
                            "-t",
                            str(STARTUP_TIMEOUT_S),
                            "start",
                        ],
                    ),
                    timeout=STARTUP_TIMEOUT_S + 15,
                    cwd=self.root,
                    what="pg_ctl start",
                )
                return
            except PgBaselineError as e:
                last = e
                self.stop()
        log_tail = ""
        with contextlib.suppress(OSError):
            log_tail = (self.root / "server.log").read_text(errors="replace")[-4000:]
        raise PgBaselineError(f"PostgreSQL did not start: {last}\nserver.log:\n{log_tail}")

    def psql(self, sql: str, timeout: float = SQL_TIMEOUT_S) -> str:
        """Run SQL over the unix socket, stopping at the first error; returns unaligned output.

        The SQL goes in on stdin (not -c) so each statement runs on its own, as VACUUM requires.
        """
        return _run(
            [
                str(self.bins.psql),
                "-h",
                str(self.sock),
                "-p",
                str(self.port),
                "-U",
                DB_USER,
                "-d",
                DB_NAME,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ],
            timeout=timeout,
            cwd=self.root,
            what="psql",
            stdin=sql,
        ).strip()

    def create_db(self) -> None:
        """Create the benchmark database (connecting to `postgres` first)."""
        _run(
            [
                str(self.bins.psql),
                "-h",
                str(self.sock),
                "-p",
                str(self.port),
                "-U",
                DB_USER,
                "-d",
                "postgres",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"CREATE DATABASE {DB_NAME}",
            ],
            timeout=60,
            cwd=self.root,
            what="create database",
        )

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        """fast stop, then immediate, then SIGKILL the postmaster's process group."""
        if not self.started:
            return
        for mode in ("fast", "immediate"):
            if not (self.data / "postmaster.pid").exists():
                break
            with contextlib.suppress(PgBaselineError):
                _run(
                    _as_user(
                        self.user,
                        [
                            str(self.bins.pg_ctl),
                            "-D",
                            str(self.data),
                            "-m",
                            mode,
                            "-w",
                            "-t",
                            str(STOP_TIMEOUT_S),
                            "stop",
                        ],
                    ),
                    timeout=STOP_TIMEOUT_S + 10,
                    cwd=self.root,
                    what=f"pg_ctl stop -m {mode}",
                )
        pid = self._postmaster_pid()
        if pid is not None and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.started = False


def _check_durable(cluster: _Cluster) -> None:
    """Refuse to measure a server that would acknowledge commits before they are on disk."""
    got = cluster.psql(
        "SELECT current_setting('fsync') || ',' || current_setting('synchronous_commit')"
        " || ',' || current_setting('listen_addresses')"
    )
    if got != "on,on,127.0.0.1":
        raise PgBaselineError(f"server settings fsync,synchronous_commit,listen_addresses = {got!r}")


def _check_books(cluster: _Cluster, accounts: int, summary: PgbenchSummary) -> None:
    """Raise BooksDoNotBalance unless PostgreSQL kept exactly the money and transfers it reported."""
    total, n_accounts, min_balance = (
        int(x) for x in cluster.psql("SELECT sum(balance), count(*), min(balance) FROM accounts").split("|")
    )
    journal_rows = int(cluster.psql("SELECT count(*) FROM journal"))
    # Each account = opening + credits - debits, per the journal (catches lost or doubled updates
    # that happen to cancel out in the total).
    mismatched = int(
        cluster.psql(
            f"""
            SELECT count(*) FROM accounts a
            LEFT JOIN (
              SELECT id, sum(delta) AS delta FROM (
                SELECT debit AS id, -amount AS delta FROM journal
                UNION ALL
                SELECT credit AS id, amount AS delta FROM journal
              ) x GROUP BY id
            ) j ON j.id = a.id
            WHERE a.balance <> {OPENING_BALANCE} + coalesce(j.delta, 0)
            """
        )
    )
    problems: list[str] = []
    expected_total = accounts * OPENING_BALANCE
    if n_accounts != accounts:
        problems.append(f"{n_accounts} accounts, expected {accounts}")
    if total != expected_total:
        problems.append(f"sum(balance) = {total}, expected {expected_total} (diff {total - expected_total})")
    if min_balance < 0:
        problems.append(f"negative balance {min_balance}")
    if journal_rows != summary.processed:
        problems.append(
            f"journal has {journal_rows} rows but pgbench reports {summary.processed} transactions"
        )
    if mismatched:
        problems.append(f"{mismatched} accounts differ from opening balance + their journal lines")
    if summary.failed:
        problems.append(f"pgbench reports {summary.failed} failed transactions (not retried successfully)")
    if problems:
        raise BooksDoNotBalance("PostgreSQL baseline books check failed: " + "; ".join(problems))


def run_pg_baseline(
    accounts: int = 100_000,
    duration_s: float = 30.0,
    clients: int = 32,
    work_dir: Path | None = None,
    one_statement: bool = False,
) -> PgResult:
    """Create a fresh cluster, load `accounts`, run transfers for `duration_s`, check the books.

    `work_dir` is where the temp dir goes (default: the system temp dir); it
    must be on the disk you want to measure, since fsync cost is most of a
    durable commit. Raises PgBinariesNotFound, PgBaselineError or
    BooksDoNotBalance; the server is stopped and the temp dir removed in all cases.
    """
    if accounts < 2:
        raise ValueError("need at least 2 accounts to transfer between")
    if clients < 1 or duration_s < 1:
        raise ValueError("need clients >= 1 and duration_s >= 1 (pgbench -T takes whole seconds)")
    bins = find_binaries()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="pg-baseline-", dir=work_dir))
    # mkdtemp is 0700 root; the server user needs to enter it. Its parent must be traversable too.
    os.chmod(root, 0o755)
    cluster = _Cluster(bins, root, user, clients)
    scenario = "pg-transfer-one-statement" if one_statement else "pg-transfer-txn"
    try:
        cluster.init()
        cluster.start()
        cluster.create_db()
        _check_durable(cluster)
        cluster.psql(SCHEMA_SQL.format(opening=OPENING_BALANCE, accounts=accounts))

        script = root / "transfer.sql"
        template = ONE_STATEMENT_SCRIPT if one_statement else TXN_SCRIPT
        script.write_text(template.format(amount_max=AMOUNT_MAX), encoding="ascii")
        whole_s = max(1, round(duration_s))
        sampling = min(1.0, LOG_LINES_MAX / (whole_s * TPS_CEILING_GUESS))
        log_prefix = root / "txlog"
        argv = [
            str(bins.pgbench),
            "-h", "127.0.0.1",
            "-p", str(cluster.port),
            "-U", DB_USER,
            "-n",  # no pgbench_* tables to vacuum
            "-f", str(script),
            "-D", f"accounts={accounts}",
            "-c", str(clients),
            "-j", str(min(2, clients)),
            "-T", str(whole_s),
            "-M", "prepared",
            f"--max-tries={MAX_TRIES}",
            "--log",
            f"--log-prefix={log_prefix}",
            *([f"--sampling-rate={sampling:.6f}"] if sampling < 1.0 else []),
            DB_NAME,
        ]  # fmt: skip
        out = _run(argv, timeout=whole_s + PGBENCH_GRACE_S, cwd=root, what="pgbench")
        summary = parse_pgbench_output(out)
        _check_books(cluster, accounts, summary)
        lat = read_latencies_ms(log_prefix)
        if not lat:
            raise PgBaselineError("pgbench wrote no latency log lines")
        return PgResult(
            scenario=scenario,
            tps=summary.tps,
            p50_ms=_percentile(lat, 50),
            p99_ms=_percentile(lat, 99),
            transfers=summary.processed,
            clients=clients,
            duration_s=float(whole_s),
        )
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m loadtest.pg_baseline --accounts N --duration S --clients C [--json]``."""
    ap = argparse.ArgumentParser(prog="python -m loadtest.pg_baseline", description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds (rounded to whole seconds)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--work-dir", type=Path, default=None, help="parent of the temp cluster dir")
    ap.add_argument("--one-statement", action="store_true", help="each transfer as one CTE statement")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    try:
        res = run_pg_baseline(
            accounts=args.accounts,
            duration_s=args.duration,
            clients=args.clients,
            work_dir=args.work_dir,
            one_statement=args.one_statement,
        )
    except PgBaselineError as e:
        print(f"pg_baseline: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(res)))
    else:
        print(
            f"{res.scenario}: {res.tps:.1f} transfers/s  p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms  "
            f"({res.transfers} transfers, {res.clients} clients, {res.duration_s:.0f} s, books OK)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
