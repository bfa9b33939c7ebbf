"""The audit log of privileged actions: append-only and hash-chained, in etcd.

Each record is `/shardbank/audit/<seq, 20 digits>` = JSON {seq, at_unix_ms,
actor_key_id, actor_role, action, target, peer, code, reason, request_id,
prev_hash, hash}; `hash` is the SHA-256 of the record's canonical JSON
without `hash`, `prev_hash` the previous record's hash (64 zeros for seq 1),
so changing, removing or reordering any record breaks every later link
(`verify_audit_chain`). `/shardbank/audit/head` = {seq, hash} of the newest.

Appending is one etcd transaction: compare the head's mod_revision with the
one read, then put the records and the new head. A gateway that lost the
race reads the head again and retries (APPEND_ATTEMPTS_MAX), so any number of
gateways share one chain without a lock.

Why etcd: it is durable through raft, every gateway already talks to it, and
the volume is small — privileged actions only (account opening and status
changes, contact updates, cash deposits and withdrawals, key changes), not
transfers. The limit: one chain means one etcd write per privileged call,
serialised cluster-wide, and etcd keeps everything in its (bounded) backend;
a bank-wide teller network at scale outgrows it. The next step is an audit
journal hosted by the ledger shards (the same hash-chained, group-committed
journal the money already uses), with etcd keeping only each chain's head.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3
import structlog

from shardbank import meta

log = structlog.get_logger("gateway.audit")

AUDIT = f"{meta.PREFIX}/audit/"
HEAD = f"{AUDIT}head"
SEQ_DIGITS = 20
GENESIS_HASH = "0" * 64
# Compare-and-swap rounds before an append gives up (gateways racing for the head).
APPEND_ATTEMPTS_MAX = 20
# Records per etcd transaction: two puts each would pass etcd's default
# --max-txn-ops (128) above 63; bigger appends are split.
RECORDS_PER_TXN_MAX = 60
# Records one ListAudit call reads from etcd while filtering.
SCAN_RECORDS_MAX = 5000
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 1000

FIELDS = (
    "seq", "at_unix_ms", "actor_key_id", "actor_role", "action", "target", "peer",
    "code", "reason", "request_id", "prev_hash", "hash",
)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """What a privileged action appends; seq and hashes are the log's."""

    actor_key_id: str
    actor_role: str
    action: str
    target: str
    code: int
    reason: str
    peer: str = ""
    request_id: str = ""


class AuditChainBroken(Exception):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(f"audit record {seq}: {problem}")
        self.seq = seq
        self.problem = problem


def record_key(seq: int) -> str:
    return f"{AUDIT}{seq:0{SEQ_DIGITS}d}"


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def chain(entries: Sequence[Entry], after_seq: int, after_hash: str, at_unix_ms: int) -> list[dict[str, Any]]:
    """The records for `entries`, linked after (after_seq, after_hash). Pure."""
    records: list[dict[str, Any]] = []
    prev_hash = after_hash
    for offset, entry in enumerate(entries, start=1):
        record: dict[str, Any] = {
            "seq": after_seq + offset,
            "at_unix_ms": at_unix_ms,
            "actor_key_id": entry.actor_key_id,
            "actor_role": entry.actor_role,
            "action": entry.action,
            "target": entry.target,
            "peer": entry.peer,
            "code": entry.code,
            "reason": entry.reason,
            "request_id": entry.request_id,
            "prev_hash": prev_hash,
        }
        record["hash"] = record_hash(record)
        prev_hash = record["hash"]
        records.append(record)
    return records


def verify_records(records: Iterable[dict[str, Any]], head: dict[str, Any] | None = None) -> int:
    """Check seq order from 1, each hash and each link; the head when given.
    Returns the number of records; raises AuditChainBroken at the first fault."""
    expected_seq, prev_hash = 1, GENESIS_HASH
    for record in records:
        seq = int(record.get("seq", -1))
        if seq != expected_seq:
            raise AuditChainBroken(seq, f"expected seq {expected_seq}")
        if record.get("prev_hash") != prev_hash:
            raise AuditChainBroken(seq, "prev_hash does not match the previous record")
        if record.get("hash") != record_hash(record):
            raise AuditChainBroken(seq, "hash does not match the record")
        prev_hash = str(record["hash"])
        expected_seq += 1
    count = expected_seq - 1
    if head is not None and (int(head.get("seq", -1)) != count or head.get("hash") != prev_hash):
        raise AuditChainBroken(count, "the head does not name the last record")
    return count


def _read_head(client: etcd3.Etcd3Client) -> tuple[dict[str, Any] | None, int]:
    value, found = client.get(HEAD)
    if value is None:
        return None, 0
    return json.loads(value), int(found.mod_revision)


def append(client: etcd3.Etcd3Client, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Append entries (any number) to the shared chain; the stored records."""
    stored: list[dict[str, Any]] = []
    for start in range(0, len(entries), RECORDS_PER_TXN_MAX):
        stored.extend(_append_chunk(client, entries[start : start + RECORDS_PER_TXN_MAX]))
    return stored


def _append_chunk(client: etcd3.Etcd3Client, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    for _ in range(APPEND_ATTEMPTS_MAX):
        head, mod_revision = _read_head(client)
        after_seq = int(head["seq"]) if head else 0
        after_hash = str(head["hash"]) if head else GENESIS_HASH
        records = chain(entries, after_seq, after_hash, int(time.time() * 1000))
        new_head = {"seq": records[-1]["seq"], "hash": records[-1]["hash"]}
        compare = (
            client.transactions.mod(HEAD) == mod_revision
            if head is not None
            else client.transactions.create(HEAD) == 0
        )
        puts = [client.transactions.put(record_key(r["seq"]), json.dumps(r, sort_keys=True)) for r in records]
        done, _ = client.transaction(
            compare=[compare],
            success=[*puts, client.transactions.put(HEAD, json.dumps(new_head))],
            failure=[],
        )
        if done:
            return records
    raise RuntimeError(f"audit append lost {APPEND_ATTEMPTS_MAX} races for the head")


def read_all(client: etcd3.Etcd3Client) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every record in seq order, and the head."""
    head, _ = _read_head(client)
    records = [
        json.loads(value)
        for value, found in client.get_prefix(AUDIT, sort_order="ascend", sort_target="key")
        if found.key.decode() != HEAD
    ]
    return records, head


def verify_audit_chain(client: etcd3.Etcd3Client) -> int:
    """Read and check the whole chain in etcd; the record count, or AuditChainBroken."""
    records, head = read_all(client)
    return verify_records(records, head)


def _matches(record: dict[str, Any], actor_key_id: str, action: str, target: str) -> bool:
    return (
        (not actor_key_id or record.get("actor_key_id") == actor_key_id)
        and (not action or record.get("action") == action)
        and (not target or record.get("target") == target)
    )


def page(
    client: etcd3.Etcd3Client,
    page_size: int,
    before_seq: int | None,
    actor_key_id: str = "",
    action: str = "",
    target: str = "",
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first, records with seq < before_seq (None: from the newest);
    returns the page and the seq to continue before (None: no more)."""
    head, _ = _read_head(client)
    if head is None:
        return [], None
    top = int(head["seq"]) if before_seq is None else min(before_seq - 1, int(head["seq"]))
    if top < 1:
        return [], None
    bottom = max(1, top - SCAN_RECORDS_MAX + 1)
    found: list[dict[str, Any]] = []
    scanned = top + 1
    for value, _ in client.get_range(
        record_key(bottom), record_key(top + 1), sort_order="descend", sort_target="key"
    ):
        record = json.loads(value)
        scanned = int(record["seq"])
        if _matches(record, actor_key_id, action, target):
            found.append(record)
            if len(found) == page_size:
                break
    if len(found) == page_size:
        return found, scanned if scanned > 1 else None
    return found, bottom if bottom > 1 else None


class AuditLog:
    """The gateway's async handle on the chain (etcd calls run in a thread)."""

    def __init__(self, etcd_endpoint: str) -> None:
        self._endpoint = etcd_endpoint
        self._client: etcd3.Etcd3Client | None = None
        self._lock = asyncio.Lock()

    def _etcd(self) -> etcd3.Etcd3Client:
        if self._client is None:
            self._client = meta.connect(self._endpoint)
        return self._client

    async def append(self, entries: Sequence[Entry]) -> None:
        """Append; a failure is logged with the entries (never raised: the
        action it records has already happened)."""
        if not entries:
            return
        try:
            # One append at a time per gateway: racing ourselves only costs retries.
            async with self._lock:
                await asyncio.to_thread(append, self._etcd(), list(entries))
        except Exception as exc:
            self._client = None
            log.error(
                "audit_append_failed",
                error=type(exc).__name__,
                entries=[(e.actor_key_id, e.action, e.target, e.code, e.reason) for e in entries],
            )

    async def page(
        self, page_size: int, before_seq: int | None, actor_key_id: str, action: str, target: str
    ) -> tuple[list[dict[str, Any]], int | None]:
        return await asyncio.to_thread(
            page, self._etcd(), page_size, before_seq, actor_key_id, action, target
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
