"""`shardbank report aml|eod`: compliance and end-of-day reports of a live cluster.

Access: the caller needs a staff API key of role auditor or admin — checked
by the gateway (a one-record ListAudit, which only those roles may call) —
and the cluster's reader key (`DATA/reader.secret`), because the reports read
the ledger nodes directly (signed LedgerNode.ReadJournal / ListAccounts)
instead of through the gateway: the end-of-day check verifies the ledger
itself, independent of the component that routes money into it, and bulk
journal pages do not pass through the public API. The gateway still names the
shards (GetClusterInfo). The reader key opens the nodes' read methods only
(`shardbank.service_auth`): the back office does not need the cluster secret,
which can move money. The cluster secret itself is still accepted.

Exit: 0 done (eod: no discrepancy), 1 a discrepancy, an unreadable shard or
a refused credential (one line each), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc

from clients.cluster_state import read_state
from clients.reports import aml, day, eod, output
from clients.reports.alerts import read_alerts
from clients.reports.chart import volume_chart
from clients.reports.gather import Gathered, gather
from clients.reports.journal_reader import ShardAddress
from shardbank import errors as bank_errors
from shardbank import identity, meta, service_auth

EXIT_OK = 0
EXIT_FAILED = 1
ETCD_DEFAULT = "127.0.0.1:2379"
REPORTS_DIR = "reports"
SUMMARY_ROWS_MAX = 20
SHARD_ADDRESS_WAIT_S = 5.0
IN_DOUBT_MS_MAX = 86_400_000
SHARD_ADDRESS_POLL_S = 0.25


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser("report", help="AML and end-of-day reports of the live cluster")
    kinds = report.add_subparsers(dest="report", required=True, metavar="REPORT")
    for name, handler, what in (
        ("aml", cmd_aml, "large-value and suspicious transaction reports (PBoC [2016] No. 3)"),
        ("eod", cmd_eod, "end of day: counts, trial balance, journals verified online, 2PC, merchants"),
    ):
        sub = kinds.add_parser(name, parents=[common], help=what)
        sub.add_argument("--date", default="today", help="YYYY-MM-DD in --tz (default today)")
        sub.add_argument("--tz", default=day.DEFAULT_TZ, help="IANA time zone of the reporting day")
        sub.add_argument("--data-dir", default="./var", help="cluster data dir (secret, cluster.json, token)")
        sub.add_argument("--out", default="", metavar="DIR", help="default <data-dir>/reports")
        service_auth.add_secret_argument(sub)
        sub.set_defaults(handler=handler)
        if name == "eod":
            sub.add_argument(
                "--in-doubt-ms",
                type=_in_doubt_ms,
                default=eod.IN_DOUBT_OLDER_THAN_MS,
                metavar="MS",
                help="a 2PC leg prepared longer ago than this is a discrepancy",
            )
        if name == "aml":
            sub.add_argument("--etcd", default="", metavar="HOST:PORT", help="default from cluster.json")
            sub.add_argument(
                "--mask-ids", action="store_true", help="mask ID numbers in the files too (stdout always is)"
            )
    key = kinds.add_parser(
        "reader-key", parents=[common], help="write the reports' read-only key (from the cluster secret)"
    )
    key.add_argument("--data-dir", default="./var", help="where cluster.secret is (unless named)")
    key.add_argument("--out", default="", metavar="FILE", help="default <data-dir>/reader.secret")
    service_auth.add_secret_argument(key)
    key.set_defaults(handler=cmd_reader_key)


def cmd_reader_key(args: argparse.Namespace) -> int:
    """For a cluster not started by `shardbank up` (which writes it itself):
    run where the cluster secret is, hand the file to the back office."""
    from clients.cli import UsageError

    data_dir = Path(args.data_dir)
    secret = _secret(args, data_dir, reader_first=False)
    out = Path(args.out or data_dir / service_auth.READER_SECRET_FILE_NAME)
    existed = out.exists()
    service_auth.ensure_reader_file(out, secret)
    if service_auth.read_secret(out) != service_auth.reader_secret(secret):
        raise UsageError(bank_errors.invalid(bank_errors.INVALID_ARGUMENT, f"{out} holds another key"))
    print(f"{out}: {'already there' if existed else 'written'} (mode 0600; read methods of the nodes only)")
    return 0


def _in_doubt_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= IN_DOUBT_MS_MAX:
        raise argparse.ArgumentTypeError(f"must be 1..{IN_DOUBT_MS_MAX} ms")
    return value


class _Run:
    """What both reports need: the day, the shards, the secret, the output dir."""

    def __init__(self, args: argparse.Namespace) -> None:
        from clients.cli import UsageError

        try:
            self.window = day.day_window(day.parse_date(args.date, args.tz), args.tz)
        except ValueError as exc:
            raise UsageError(bank_errors.invalid(bank_errors.INVALID_ARGUMENT, str(exc))) from None
        self.data_dir = Path(args.data_dir)
        self.out = Path(args.out) if args.out else self.data_dir / REPORTS_DIR
        self.cut_ms = min(self.window.end_ms, int(time.time() * 1000))
        self.secret = _secret(args, self.data_dir)
        self.shards = _staff_shards(args)

    def gather(self, *, compare_accounts: bool, in_doubt_older_than_ms: int | None) -> Gathered:
        return gather(
            self.shards,
            self.secret,
            self.window,
            self.cut_ms,
            compare_accounts=compare_accounts,
            in_doubt_older_than_ms=in_doubt_older_than_ms,
        )


def _secret(args: argparse.Namespace, data_dir: Path, reader_first: bool = True) -> bytes:
    """The key named by --cluster-secret-file or the environment; else, in the
    data dir, the reader key when `reader_first` and it is there, then the
    cluster secret."""
    from clients.cli import UsageError

    reader = data_dir / service_auth.READER_SECRET_FILE_NAME
    default = reader if reader_first and reader.exists() else data_dir / service_auth.SECRET_FILE_NAME
    path = args.cluster_secret_file or os.environ.get(service_auth.SECRET_FILE_ENV, "") or str(default)
    try:
        return service_auth.read_secret(path)
    except (OSError, ValueError) as exc:
        raise UsageError(
            bank_errors.invalid(bank_errors.INVALID_ARGUMENT, f"no usable cluster secret: {exc}")
        ) from None


def _staff_shards(args: argparse.Namespace) -> list[ShardAddress]:
    """Refused unless the key is an auditor's or admin's; then the shards."""
    from clients.cli import client

    with client(args) as bank:
        try:
            bank.list_audit(page_size=1)
        except bank_errors.BankError as exc:
            if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                exc.message = f"reports need an auditor or admin key ({exc.message})"
            raise
        info = bank.cluster_info()
        # The gateway learns a restarted node's address from etcd a moment
        # later: ask again for a few seconds before calling a shard unreadable.
        deadline = time.monotonic() + SHARD_ADDRESS_WAIT_S
        while any(not s.address for s in info.shards) and time.monotonic() < deadline:
            time.sleep(SHARD_ADDRESS_POLL_S)
            info = bank.cluster_info()
    # `up` is the gateway's last look and lags a restart too; the node itself answers.
    return [ShardAddress(s.shard_id, s.address) for s in info.shards]


def _etcd_endpoint(args: argparse.Namespace, data_dir: Path) -> str:
    if args.etcd:
        return str(args.etcd)
    state = read_state(data_dir)
    return state.etcd if state is not None and state.etcd else ETCD_DEFAULT


def cmd_aml(args: argparse.Namespace) -> int:
    run = _Run(args)
    found = run.gather(compare_accounts=False, in_doubt_older_than_ms=None)
    large = aml.large_value(found.transfers, found.directory, run.window, reveal_ids=not args.mask_ids)
    client = meta.connect(_etcd_endpoint(args, run.data_dir))
    try:
        suspicious = aml.suspicious(read_alerts(client, run.window), run.window)
    finally:
        client.close()
    stem = f"aml-{run.window.date.isoformat()}"
    data = {
        "report": "AML",
        "date": run.window.date.isoformat(),
        "tz": run.window.tz,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "thresholds_minor": aml.THRESHOLDS_MINOR,
        "large_value": large.rows,
        "suspicious": suspicious,
        "legs_evaluated": large.legs_evaluated,
        "not_evaluated_legs_by_currency": large.not_evaluated,
        "problems": found.problems,
        "complete": not found.problems,
    }
    files = [
        output.write_csv(run.out / f"{stem}-large-value.csv", aml.LARGE_VALUE_FIELDS, large.rows),
        output.write_csv(run.out / f"{stem}-suspicious.csv", aml.SUSPICIOUS_FIELDS, suspicious),
        output.write_json(run.out / f"{stem}.json", data),
    ]
    if args.json:
        print(json.dumps({**data, "files": [str(f) for f in files]}, indent=2, ensure_ascii=False))
    else:
        print(_aml_summary(data, files))
    return EXIT_OK if not found.problems else EXIT_FAILED


def _aml_summary(data: dict[str, Any], files: list[Path]) -> str:
    rows: list[dict[str, Any]] = data["large_value"]
    lines = [
        f"AML {data['date']} ({data['tz']}): {len(rows)} large-value rows "
        f"({len({r['customer_id'] for r in rows})} customers), {len(data['suspicious'])} suspicious alerts"
    ]
    for row in rows[:SUMMARY_ROWS_MAX]:
        lines.append(
            f"  {row['category']:<22} {row['basis']:<10} {row['customer_id']} "
            f"{identity.mask_id_number(row['id_number'])} {row['direction']:<3} "
            f"{row['amount']} {row['currency']} {row['transfer_id']}"
        )
    if len(rows) > SUMMARY_ROWS_MAX:
        lines.append(f"  ... {len(rows) - SUMMARY_ROWS_MAX} more in the files")
    for currency, count in sorted(data["not_evaluated_legs_by_currency"].items()):
        lines.append(f"  {count} legs in {currency}: no threshold for this currency, not evaluated")
    for line in data["problems"]:
        lines.append(f"INCOMPLETE {line}")
    lines.extend(f"wrote {path}" for path in files)
    return "\n".join(lines)


def cmd_eod(args: argparse.Namespace) -> int:
    run = _Run(args)
    found = run.gather(compare_accounts=True, in_doubt_older_than_ms=args.in_doubt_ms)
    result = eod.end_of_day(found.scans, found.in_doubt, found.unreadable, run.window, run.cut_ms)
    stem = f"eod-{run.window.date.isoformat()}"
    chart = volume_chart(
        result.data["volume_per_hour_minor"],
        f"shardbank volume per hour, {run.window.date.isoformat()} ({run.window.tz})",
        _ensure(run.out) / f"{stem}-volume.png",
    )
    files = [output.write_json(run.out / f"{stem}.json", result.data), chart]
    if args.json:
        print(json.dumps({**result.data, "files": [str(f) for f in files]}, indent=2, ensure_ascii=False))
    else:
        print(eod.summary(result))
        print("\n".join(f"wrote {path}" for path in files))
    return EXIT_OK if result.ok else EXIT_FAILED


def _ensure(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory
