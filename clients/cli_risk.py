"""`shardbank risk ...`: the risk officer's commands.

shardbank risk alerts [--status OPEN] [--rule R] [--account A] [--decision D] [--limit N] [--json]
shardbank risk review TRANSFER_ID --approve|--reject [--note ...]
shardbank risk ack ALERT_ID [--note ...]
shardbank risk resolve ALERT_ID --note ...
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from clients import render
from clients.cli_auth import count_at_most
from shardbank import alerts
from shardbank.money import format_amount
from shardbank.v1 import risk_pb2, types_pb2


def _when(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    return dt.datetime.fromtimestamp(unix_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _alert_fields(alert: risk_pb2.Alert) -> str:
    return render.fields(
        [
            ("alert", alert.alert_id),
            ("created (UTC)", _when(alert.created_at_unix_ms)),
            ("status", alert.status),
            ("decision", f"{alert.decision} (score {alert.score})"),
            ("rules", ", ".join(alert.rules) or "-"),
            ("severity", alert.severity),
            ("transfer", f"{alert.transfer_id} ({alert.transfer_kind})"),
            ("amount", f"{format_amount(alert.amount, alert.currency)} {alert.currency}"),
            ("from -> to", f"{alert.debit_account_id} -> {alert.credit_account_id}"),
            ("review", alert.review_state or "-"),
            ("review deadline (UTC)", _when(alert.review_deadline_unix_ms)),
            ("last change by", alert.actor or "-"),
            ("note", alert.note or "-"),
        ]
    )


def cmd_alerts(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        page = bank.list_alerts(
            status=args.status,
            rule=args.rule,
            account_id=args.account,
            decision=args.decision,
            page_size=args.limit,
        )
    rows = [
        [a.alert_id, _when(a.created_at_unix_ms), a.status, a.decision, ",".join(a.rules),
         f"{format_amount(a.amount, a.currency)} {a.currency}", str(a.account_id), a.review_state or "-",
         a.transfer_id]
        for a in page.alerts
    ]  # fmt: skip
    header = [
        "ALERT",
        "CREATED (UTC)",
        "STATUS",
        "DECISION",
        "RULES",
        "AMOUNT",
        "ACCOUNT",
        "REVIEW",
        "TRANSFER",
    ]
    return emit(args, page, lambda: render.table(header, rows))


def cmd_review(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        done = bank.review_transfer(args.transfer_id, approve=args.approve, note=args.note)
    status = types_pb2.TransferStatus.Name(done.transfer.status).removeprefix("TRANSFER_STATUS_")
    verb = "approved" if args.approve else "rejected"
    return emit(args, done, lambda: f"{verb} {done.transfer.id}: {status} {done.transfer.reason}".rstrip())


def cmd_ack(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        alert = bank.acknowledge_alert(args.alert_id, args.note)
    return emit(args, alert, lambda: _alert_fields(alert))


def cmd_resolve(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        alert = bank.resolve_alert(args.alert_id, args.note)
    return emit(args, alert, lambda: _alert_fields(alert))


def _account(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise argparse.ArgumentTypeError(f"not an account id: {text!r}")
    return int(text)


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    risk = commands.add_parser("risk", help="alerts and the review of held transfers (risk officer)")
    actions = risk.add_subparsers(dest="risk_action", required=True, metavar="ACTION")
    listing = actions.add_parser("alerts", parents=[common], help="alerts, newest first")
    listing.add_argument("--status", default="", choices=["", *alerts.STATUSES])
    listing.add_argument("--rule", default="", help="only alerts this rule raised")
    listing.add_argument("--account", type=_account, default=0, help="only alerts about this account")
    listing.add_argument("--decision", default="", choices=["", *alerts.DECISIONS])
    listing.add_argument(
        "--limit", type=count_at_most(alerts.PAGE_SIZE_MAX), default=alerts.PAGE_SIZE_DEFAULT
    )
    listing.set_defaults(handler=cmd_alerts)
    review = actions.add_parser("review", parents=[common], help="approve or reject a held transfer")
    review.add_argument("transfer_id", metavar="TRANSFER_ID")
    decision = review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true", help="the transfer completes")
    decision.add_argument("--reject", action="store_true", help="the transfer is aborted, the hold released")
    review.add_argument("--note", default="", help=f"why (at most {alerts.NOTE_LENGTH_MAX} characters)")
    review.set_defaults(handler=cmd_review)
    ack = actions.add_parser("ack", parents=[common], help="acknowledge an alert")
    ack.add_argument("alert_id", metavar="ALERT_ID")
    ack.add_argument("--note", default="")
    ack.set_defaults(handler=cmd_ack)
    resolve = actions.add_parser("resolve", parents=[common], help="resolve an alert (a note is required)")
    resolve.add_argument("alert_id", metavar="ALERT_ID")
    resolve.add_argument("--note", required=True)
    resolve.set_defaults(handler=cmd_resolve)
