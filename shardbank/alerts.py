"""Risk alerts in etcd: the shared store the risk engine writes, officers
work through, and the AML report reads.

Key `/shardbank/risk/alerts/<alert_id>`, `alert_id =
f"{created_at_unix_ms:013d}-{uuid4().hex[:12]}"` (keys sort by time); value
JSON with exactly the fields of `FIELDS` (the schema three components share;
see docs/risk-review.md).

Why etcd: every gateway already talks to it, it is durable through raft and
survives any gateway's death, and alerts are rare (a few per thousand
transfers), so one etcd write per alert costs nothing a transfer notices.
Money state stays in the ledger; an alert only points at a transfer.

Changes of status are compare-and-swap on the key's mod_revision: two
officers resolving one alert at once cannot overwrite each other — the
second re-reads, sees RESOLVED, and is refused with who resolved it.

Limits (each enforced here, whatever the caller): page size 1..PAGE_SIZE_MAX,
a list call reads at most SCAN_ALERTS_MAX alerts from etcd while filtering
(a short page then carries a token to go on), notes NOTE_LENGTH_MAX
characters, RULES_MAX rule names of RULE_LENGTH_MAX. Retention: `purge`
deletes RESOLVED alerts older than RETENTION_DAYS (run by an operator job;
regulators ask for five years of records, which the AML report files keep,
not etcd).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import etcd3
import grpc

from shardbank import errors, meta

ALERTS = f"{meta.PREFIX}/risk/alerts/"
# Everything after the last key under ALERTS ("/" + 1).
_ALERTS_END = f"{meta.PREFIX}/risk/alerts0"

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
SCAN_ALERTS_MAX = 5000
NOTE_LENGTH_MAX = 500
ACTOR_LENGTH_MAX = 64
RULES_MAX = 32
RULE_LENGTH_MAX = 64
FILTER_LENGTH_MAX = 64
TEXT_LENGTH_MAX = 64
# Compare-and-swap rounds before a status change gives up (officers racing).
UPDATE_ATTEMPTS_MAX = 10
RETENTION_DAYS = 180

KINDS = ("TRANSFER", "PAYMENT", "DEPOSIT", "WITHDRAWAL")
DECISIONS = ("ALLOW", "REVIEW", "BLOCK")
SEVERITIES = ("LOW", "MEDIUM", "HIGH")
OPEN, ACKNOWLEDGED, RESOLVED = "OPEN", "ACKNOWLEDGED", "RESOLVED"
STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED)
REVIEW_STATES = ("", "PENDING", "APPROVED", "REJECTED", "EXPIRED")

# Reasons (shardbank.errors style).
INVALID_ALERT_ID = "INVALID_ALERT_ID"
INVALID_ALERT = "INVALID_ALERT"
INVALID_NOTE = "INVALID_NOTE"
INVALID_FILTER = "INVALID_FILTER"
ALERT_NOT_FOUND = "ALERT_NOT_FOUND"
ALERT_EXISTS = "ALERT_EXISTS"
ALERT_RESOLVED = "ALERT_RESOLVED"
ALERT_CONFLICT = "ALERT_CONFLICT"

ALERT_ID_RE = re.compile(r"[0-9]{13}-[0-9a-f]{12}")
_RULE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

FIELDS: Mapping[str, type] = {
    "alert_id": str,
    "created_at_unix_ms": int,
    "updated_at_unix_ms": int,
    "transfer_id": str,
    "transfer_kind": str,
    "debit_account_id": int,
    "credit_account_id": int,
    "customer_id": str,
    "account_id": int,
    "amount": int,
    "currency": str,
    "decision": str,
    "score": int,
    "rules": list,
    "aml_typologies": list,
    "severity": str,
    "status": str,
    "actor": str,
    "note": str,
    "review_state": str,
    "review_deadline_unix_ms": int,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_alert_id(created_at_unix_ms: int) -> str:
    return f"{created_at_unix_ms:013d}-{uuid.uuid4().hex[:12]}"


def key_of(alert_id: str) -> str:
    return ALERTS + check_alert_id(alert_id)


def check_alert_id(alert_id: str) -> str:
    if not ALERT_ID_RE.fullmatch(alert_id):
        raise errors.invalid(INVALID_ALERT_ID, "an alert id is <13 digits>-<12 hex>")
    return alert_id


def check_note(note: str, required: bool = False) -> str:
    if len(note) > NOTE_LENGTH_MAX or not note.isprintable():
        raise errors.invalid(INVALID_NOTE, f"note must be at most {NOTE_LENGTH_MAX} printable characters")
    if required and not note.strip():
        raise errors.invalid(INVALID_NOTE, "a note is required")
    return note


def _check_choice(alert: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if alert[name] not in allowed:
        choices = ", ".join(a or "(empty)" for a in allowed)
        raise errors.invalid(INVALID_ALERT, f"{name} must be one of {choices}")


def check_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with exactly the schema's fields, or INVALID_ARGUMENT INVALID_ALERT."""
    missing = set(FIELDS) - set(alert)
    extra = set(alert) - set(FIELDS)
    if missing or extra:
        raise errors.invalid(INVALID_ALERT, f"fields missing {sorted(missing)}, unknown {sorted(extra)}")
    for name, kind in FIELDS.items():
        value = alert[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise errors.invalid(INVALID_ALERT, f"{name} must be {kind.__name__}")
        if isinstance(value, str) and len(value) > (NOTE_LENGTH_MAX if name == "note" else TEXT_LENGTH_MAX):
            raise errors.invalid(INVALID_ALERT, f"{name} is too long")
    check_alert_id(alert["alert_id"])
    for name in ("rules", "aml_typologies"):
        names: list[Any] = alert[name]
        if len(names) > RULES_MAX or not all(isinstance(r, str) and _RULE_RE.fullmatch(r) for r in names):
            raise errors.invalid(INVALID_ALERT, f"{name}: at most {RULES_MAX} names like large_amount")
    _check_choice(alert, "transfer_kind", KINDS)
    _check_choice(alert, "decision", DECISIONS)
    _check_choice(alert, "severity", SEVERITIES)
    _check_choice(alert, "status", STATUSES)
    _check_choice(alert, "review_state", REVIEW_STATES)
    if alert["amount"] <= 0:
        raise errors.invalid(INVALID_ALERT, "amount must be positive (minor units)")
    return {name: alert[name] for name in FIELDS}


def _decode(value: bytes) -> dict[str, Any]:
    alert: dict[str, Any] = json.loads(value)
    return alert


def create(client: etcd3.Etcd3Client, alert: Mapping[str, Any]) -> dict[str, Any]:
    """Store a new alert (its id must be free); the stored copy."""
    clean = check_alert(alert)
    key = key_of(clean["alert_id"])
    done, _ = client.transaction(
        compare=[client.transactions.create(key) == 0],
        success=[client.transactions.put(key, json.dumps(clean, sort_keys=True))],
        failure=[],
    )
    if not done:
        raise errors.BankError(grpc.StatusCode.ALREADY_EXISTS, ALERT_EXISTS, "an alert with this id exists")
    return clean


def get(client: etcd3.Etcd3Client, alert_id: str) -> tuple[dict[str, Any], int]:
    """(alert, mod_revision), or NOT_FOUND ALERT_NOT_FOUND."""
    value, found = client.get(key_of(alert_id))
    if value is None:
        raise errors.not_found(ALERT_NOT_FOUND, f"no alert {alert_id}")
    return _decode(value), int(found.mod_revision)


@dataclass(frozen=True)
class Filter:
    """Empty / 0 fields match everything."""

    status: str = ""
    rule: str = ""
    account_id: int = 0
    decision: str = ""
    created_since_unix_ms: int = 0
    created_until_unix_ms: int = 0

    def check(self) -> Filter:
        if self.status and self.status not in STATUSES:
            raise errors.invalid(INVALID_FILTER, f"status must be one of {', '.join(STATUSES)}")
        if self.decision and self.decision not in DECISIONS:
            raise errors.invalid(INVALID_FILTER, f"decision must be one of {', '.join(DECISIONS)}")
        if self.rule and not _RULE_RE.fullmatch(self.rule):
            raise errors.invalid(INVALID_FILTER, "rule is a rule name like large_amount")
        since, until = self.created_since_unix_ms, self.created_until_unix_ms
        if since < 0 or until < 0 or since >= 10**13 or until >= 10**13 or (until and since > until):
            raise errors.invalid(INVALID_FILTER, "created_since/until are unix ms, since <= until")
        return self

    def matches(self, alert: Mapping[str, Any]) -> bool:
        return (
            (not self.status or alert.get("status") == self.status)
            and (not self.decision or alert.get("decision") == self.decision)
            and (not self.rule or self.rule in alert.get("rules", ()))
            and (
                not self.account_id
                or self.account_id
                in (alert.get("account_id"), alert.get("debit_account_id"), alert.get("credit_account_id"))
            )
        )


def encode_page_token(before_alert_id: str) -> str:
    return base64.urlsafe_b64encode(before_alert_id.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not ALERT_ID_RE.fullmatch(text):
        raise errors.invalid(errors.INVALID_PAGE_TOKEN, "page_token is not one this service issued")
    return text


def check_page_size(page_size: int) -> int:
    size = page_size or PAGE_SIZE_DEFAULT
    if not 1 <= size <= PAGE_SIZE_MAX:
        raise errors.invalid(errors.INVALID_PAGE_SIZE, f"page_size must be 1..{PAGE_SIZE_MAX}")
    return size


def _newest_first(
    client: etcd3.Etcd3Client, start: str, end: str, limit: int
) -> Iterator[tuple[dict[str, Any], str]]:
    for value, found in client.get_range(start, end, sort_order="descend", sort_target="key", limit=limit):
        key = found.key.decode()
        yield _decode(value), key[len(ALERTS) :]


def page(
    client: etcd3.Etcd3Client, where: Filter, page_size: int, page_token: str = ""
) -> tuple[list[dict[str, Any]], str]:
    """One page, newest first, and the token of the next ("" when done)."""
    where.check()
    size = check_page_size(page_size)
    start = ALERTS + (f"{where.created_since_unix_ms:013d}" if where.created_since_unix_ms else "")
    end = ALERTS + f"{where.created_until_unix_ms + 1:013d}" if where.created_until_unix_ms else _ALERTS_END
    if page_token:
        end = min(end, ALERTS + decode_page_token(page_token))
    found: list[dict[str, Any]] = []
    last_id = ""
    for scanned, (alert, alert_id) in enumerate(_newest_first(client, start, end, SCAN_ALERTS_MAX + 1)):
        if scanned == SCAN_ALERTS_MAX:
            return found, encode_page_token(last_id)  # read enough: a short page, go on later
        last_id = alert_id
        if where.matches(alert):
            found.append(alert)
            if len(found) == size:
                return found, _next_token(client, start, alert_id)
    return found, ""


def _next_token(client: etcd3.Etcd3Client, start: str, last_id: str) -> str:
    """A token only when something older is left, so the last page says so."""
    older = list(client.get_range(start, ALERTS + last_id, keys_only=True, limit=1))
    return encode_page_token(last_id) if older else ""


def change(
    client: etcd3.Etcd3Client,
    alert_id: str,
    change_to: Mapping[str, Any],
    allowed_from: tuple[str, ...] = STATUSES,
    if_mod_revision: int = 0,
) -> dict[str, Any]:
    """Apply `change_to` by compare-and-swap on the key's mod_revision.

    `allowed_from`: statuses the alert may be in (else FAILED_PRECONDITION
    ALERT_RESOLVED naming who resolved it). `if_mod_revision`: the caller's
    read; a change since then is ABORTED ALERT_CONFLICT (no retry)."""
    key = key_of(alert_id)
    for _ in range(UPDATE_ATTEMPTS_MAX):
        alert, mod_revision = get(client, alert_id)
        if if_mod_revision and mod_revision != if_mod_revision:
            raise errors.BankError(
                grpc.StatusCode.ABORTED, ALERT_CONFLICT, "the alert changed since it was read"
            )
        if alert["status"] not in allowed_from:
            raise errors.precondition(
                ALERT_RESOLVED, f"the alert is {alert['status']} (by {alert.get('actor') or 'unknown'})"
            )
        updated = dict(alert)
        updated.update(change_to)
        updated["updated_at_unix_ms"] = max(now_ms(), int(alert["updated_at_unix_ms"]))
        clean = check_alert(updated)
        done, _ = client.transaction(
            compare=[client.transactions.mod(key) == mod_revision],
            success=[client.transactions.put(key, json.dumps(clean, sort_keys=True))],
            failure=[],
        )
        if done:
            return clean
        if if_mod_revision:
            raise errors.BankError(
                grpc.StatusCode.ABORTED, ALERT_CONFLICT, "the alert changed since it was read"
            )
    raise errors.BankError(grpc.StatusCode.ABORTED, ALERT_CONFLICT, "the alert keeps changing; retry")


def acknowledge(client: etcd3.Etcd3Client, alert_id: str, actor: str, note: str = "") -> dict[str, Any]:
    """OPEN -> ACKNOWLEDGED (an ACKNOWLEDGED one keeps its first acknowledger)."""
    alert, _ = get(client, alert_id)
    if alert["status"] == ACKNOWLEDGED:
        return alert
    update = {"status": ACKNOWLEDGED, "actor": actor, "note": check_note(note)}
    return change(client, alert_id, update, allowed_from=(OPEN,))


def resolve(
    client: etcd3.Etcd3Client, alert_id: str, actor: str, note: str, if_mod_revision: int = 0
) -> dict[str, Any]:
    """OPEN/ACKNOWLEDGED -> RESOLVED, with a note; never twice."""
    update = {"status": RESOLVED, "actor": actor, "note": check_note(note, required=True)}
    return change(
        client, alert_id, update, allowed_from=(OPEN, ACKNOWLEDGED), if_mod_revision=if_mod_revision
    )


def set_review_state(
    client: etcd3.Etcd3Client,
    alert_id: str,
    review_state: str,
    actor: str,
    note: str = "",
    review_deadline_unix_ms: int = 0,
) -> dict[str, Any]:
    """Record a review's state on its alert (whatever the alert's status)."""
    if review_state not in REVIEW_STATES:
        raise errors.invalid(INVALID_ALERT, "unknown review state")
    alert, _ = get(client, alert_id)
    if review_state != "PENDING" and alert["review_state"] == review_state:
        return alert  # a repeated decision keeps the first decider's note
    update: dict[str, Any] = {"review_state": review_state, "actor": actor, "note": check_note(note)}
    if review_deadline_unix_ms:
        update["review_deadline_unix_ms"] = review_deadline_unix_ms
    return change(client, alert_id, update)


def shown_review_state(alert: Mapping[str, Any], at_unix_ms: int) -> str:
    """PENDING past its deadline reads as EXPIRED: the coordinator released
    the hold (recovery), which writes nothing to etcd."""
    state = str(alert.get("review_state", ""))
    deadline = int(alert.get("review_deadline_unix_ms", 0))
    if state == "PENDING" and deadline and at_unix_ms >= deadline:
        return "EXPIRED"
    return state


def purge(client: etcd3.Etcd3Client, older_than_unix_ms: int) -> int:
    """Delete RESOLVED alerts created before the cutoff; how many."""
    deleted = 0
    end = ALERTS + f"{older_than_unix_ms:013d}"
    for value, found in client.get_range(ALERTS, end, limit=SCAN_ALERTS_MAX):
        if _decode(value).get("status") == RESOLVED:
            client.delete(found.key)
            deleted += 1
    return deleted


def retention_cutoff_ms(at_unix_ms: int | None = None) -> int:
    return (at_unix_ms if at_unix_ms is not None else now_ms()) - RETENTION_DAYS * 24 * 3600 * 1000
