"""Human output of the CLI: short aligned lines and tables. Amounts go
through `money.format_amount`; ID numbers and phones are shown masked (the
`--json` form prints the messages as the gateway sent them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from shardbank import identity, ids
from shardbank.money import format_amount
from shardbank.v1 import bank_pb2, ledger_pb2, types_pb2


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


def cluster(info: bank_pb2.ClusterInfo) -> str:
    leader = info.coordinator_leader or "none"
    head = (
        f"slot map version {info.slot_map_version} ({info.slot_count} slots); "
        f"coordinator leader {leader} (epoch {info.coordinator_epoch})"
    )
    rows = [
        [
            shard.shard_id,
            shard.address or "-",
            "up" if shard.up else "DOWN",
            str(shard.slots),
            str(shard.info.accounts) if shard.up else "-",
            str(shard.info.journal_seq) if shard.up else "-",
            str(shard.info.in_doubt_legs) if shard.up else "-",
            str(shard.info.review_holds) if shard.up else "-",
        ]
        for shard in info.shards
    ]
    header = ["SHARD", "ADDRESS", "STATE", "SLOTS", "ACCOUNTS", "JOURNAL", "IN-DOUBT", "REVIEW HOLDS"]
    return head + "\n" + table(header, rows)
