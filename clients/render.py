"""Human output of the CLI: short aligned lines and tables. Amounts go
through `money.format_amount`; ID numbers and phones are shown masked (the
`--json` form prints the messages as the gateway sent them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from shardbank import identity, ids
from shardbank.money import format_amount
from shardbank.v1 import ledger_pb2, types_pb2


def _enum(descriptor_name: str, prefix: str, value: int) -> str:
    enum = types_pb2.DESCRIPTOR.enum_types_by_name[descriptor_name]
    found = enum.values_by_number.get(value)
    return found.name.removeprefix(prefix) if found is not None else str(value)


def account_type(value: int) -> str:
    return _enum("AccountType", "ACCOUNT_TYPE_", value)


def account_status(value: int) -> str:
    return _enum("AccountStatus", "ACCOUNT_STATUS_", value)


def transfer_kind(value: int) -> str:
    return _enum("TransferKind", "TRANSFER_KIND_", value)


def transfer_status(value: int) -> str:
    return _enum("TransferStatus", "TRANSFER_STATUS_", value)


def timestamp(unix_ms: int) -> str:
    if unix_ms <= 0:
        return "-"
    moment = dt.datetime.fromtimestamp(unix_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def fields(rows: Sequence[tuple[str, str]]) -> str:
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def account_label(account_id: int) -> str:
    if ids.is_system_account_id(account_id):
        return f"{account_id} (cash)"
    return str(account_id) if account_id else "-"


def account(found: types_pb2.Account) -> str:
    cur = found.currency
    holder = found.holder
    id_type = _enum("IdDocumentType", "ID_DOCUMENT_TYPE_", holder.id_type).lower()
    rows = [
        ("account", str(found.id)),
        ("holder", holder.name or "-"),
        (
            "id document",
            f"{id_type} {identity.mask_id_number(holder.id_number)}" if holder.id_number else "-",
        ),
        ("phone", identity.mask_phone(holder.phone) if holder.phone else "-"),
        ("country", identity.country_of(holder.country) if holder.id_number else "-"),
        ("type", account_type(found.type)),
        ("status", account_status(found.status)),
        ("currency", cur),
        ("balance", format_amount(found.balance, cur)),
        ("available", format_amount(found.available, cur)),
        ("held", format_amount(found.held, cur)),
        ("incoming", format_amount(found.pending_credit, cur)),
        ("overdraft limit", format_amount(found.overdraft_limit, cur)),
        ("opened", timestamp(found.created_at_unix_ms)),
    ]
    for change in found.status_history:
        what = f"{account_status(change.from_status)} -> {account_status(change.to_status)}"
        rows.append(
            (
                "status change",
                f"{timestamp(change.at_unix_ms)} {what} by {change.actor or '-'}: {change.reason}",
            )
        )
    return fields(rows)


def transfer(found: types_pb2.Transfer) -> str:
    rows = [
        ("transfer", found.id),
        ("status", transfer_status(found.status)),
        ("kind", transfer_kind(found.kind)),
        ("from", account_label(found.debit_account_id)),
        ("to", account_label(found.credit_account_id)),
        ("amount", f"{format_amount(found.amount, found.currency)} {found.currency}"),
    ]
    if found.memo:
        rows.append(("memo", found.memo))
    if found.code or found.reason:
        rows.append(("reason", f"{found.reason}: {found.message}" if found.message else found.reason))
    rows.append(("cross-shard", "yes" if found.cross_shard else "no"))
    if found.created_at_unix_ms:
        rows.append(("at", timestamp(found.created_at_unix_ms)))
    return fields(rows)


def history(page: ledger_pb2.ListHistoryResponse) -> str:
    rows = []
    for entry in page.entries:
        item = entry.transfer
        sign = "+" if entry.balance_delta > 0 else ""
        rows.append(
            [
                str(entry.journal_seq),
                timestamp(item.created_at_unix_ms),
                transfer_kind(item.kind),
                sign + format_amount(entry.balance_delta, item.currency),
                format_amount(entry.balance_after, item.currency),
                item.id,
                item.memo,
            ]
        )
    if not rows:
        text = "no entries"
    else:
        text = table(["SEQ", "TIME", "KIND", "CHANGE", "BALANCE", "TRANSFER", "MEMO"], rows)
    if page.next_page_token:
        text += f"\nmore: --page-token {page.next_page_token}"
    return text


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _ranges(runs: Sequence[str], shown_max: int = 3) -> str:
    if not runs:
        return "-"
    more = f" +{len(runs) - shown_max}" if len(runs) > shown_max else ""
    return ",".join(runs[:shown_max]) + more


SHARD_HEADER = ("SHARD", "ADDRESS", "STATE", "SLOTS", "RANGES", "ACCOUNTS", "JOURNAL", "TRANSFERS/S",
                "IN-DOUBT", "REVIEW", "QUEUE")  # fmt: skip
MOVE_HEADER = ("MOVE", "PHASE", "FROM -> TO", "SLOTS", "ACCOUNTS", "PROGRESS", "ERROR")


def _state(state: str | None) -> str:
    """Healthy states in lower case, trouble in upper case (it should catch the eye)."""
    if state is None:
        return "-"
    return state if state in ("up", "standby") else state.upper()


def _shard_row(s: dict[str, Any]) -> list[str]:
    state = _state(s["state"])
    keys = ("accounts", "journal_seq", "transfers_per_s", "in_doubt_legs", "review_holds",
            "writer_queue_items")  # fmt: skip
    return [s["shard_id"], _cell(s["address"]), state, str(s["slots"]), _ranges(s["slot_ranges"])] + [
        _cell(s.get(key)) for key in keys
    ]


def status(report: dict[str, Any]) -> str:
    """`shardbank status` as text (the report of `clients.cluster_status.collect`)."""
    etcd = report["etcd"]
    if not report.get("ok"):
        return f"etcd {etcd['endpoint']}: DOWN ({etcd.get('error', 'unhealthy')}); nothing else can be read"
    members = ", ".join(f"{m['name']} {','.join(m['client_urls'])}" for m in etcd["members"])
    lines = [
        f"etcd {etcd['endpoint']}: {'healthy' if etcd['healthy'] else 'UNHEALTHY'}, v{etcd['version']}, "
        f"leader {etcd['leader'] or '-'}, members: {members or '-'}",
        f"slot map version {report['slot_map']['version']} ({report['slot_map']['slot_count']} slots)",
        "",
        table(SHARD_HEADER, [_shard_row(s) for s in report["shards"]]),
    ]
    lines += [f"  {s['shard_id']}: {s['error']}" for s in report["shards"] if s.get("error")]
    coordinators = report["coordinators"]
    lines += ["", f"coordinator leader {coordinators['leader'] or 'NONE'} (epoch {coordinators['epoch']})"]
    members_rows = [
        [c["coordinator_id"], c["address"], c["role"], _state(c.get("state")), _cell(c["metrics_address"])]
        for c in coordinators["members"]
    ]
    lines.append(table(["COORDINATOR", "ADDRESS", "ROLE", "STATE", "METRICS"], members_rows))
    gateway_rows = [
        [g["gateway_id"], g["address"], _state(g.get("state")), _cell(g["http_address"]),
         _cell(g["metrics_address"])]
        for g in report["gateways"]
    ]  # fmt: skip
    lines.append("")
    lines.append(
        table(["GATEWAY", "ADDRESS", "STATE", "HTTP", "METRICS"], gateway_rows)
        if gateway_rows
        else "gateways: none"
    )
    lines += ["", moves(report["moves"])]
    if report.get("unreadable_move_keys"):
        lines.append(f"  not move records (skipped): {', '.join(report['unreadable_move_keys'])}")
    return "\n".join(lines)


def moves(found: Sequence[dict[str, Any]]) -> str:
    """Unfinished moves with a progress bar; finished ones only counted."""
    active = [m for m in found if not m["terminal"]]
    finished = len(found) - len(active)
    if not active:
        return f"moves: none in progress ({finished} finished)"
    rows = [
        [
            m["move_id"], m["phase"], f"{m['source']} -> {m['target']}",
            f"{m['slots']} ({m['first_slot']}..{m['last_slot']})" if m["slots"] else "0",
            f"{m['accounts_copied']}/{m['accounts_total']}", progress_bar(m["progress"]), _cell(m["error"]),
        ]
        for m in active
    ]  # fmt: skip
    return f"moves in progress ({finished} finished):\n" + table(MOVE_HEADER, rows)


def progress_bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"
