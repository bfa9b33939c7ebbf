"""Leader election through etcd.

One daemon thread per coordinator owns an etcd lease (TTL `meta.LEASE_TTL_S`)
and, every `poll_interval_s`, refreshes it and campaigns with

    txn(create(LEADER) == 0 -> put(LEADER, {coordinator_id, address}, lease)) ; get(LEADER)

The leader key's create_revision is the term's **epoch**: etcd revisions only
grow, so a later term always has a higher epoch, which is what lets ledger
nodes fence a deposed leader (STALE_EPOCH).

Why poll instead of watch: a poll survives etcd restarts with no stream to
re-establish, and one small txn per half second per coordinator is nothing.
A standby sees the key vanish at most one poll after the lease expires, so a
dead leader is replaced within TTL + poll (< 5 s).

Why `is_leader` also checks a local deadline: if the thread stalls or etcd is
unreachable, the lease may expire without this process hearing about it. The
deadline (time the last keep-alive was *sent* + granted TTL − margin) makes
leadership lapse on its own, before another coordinator can be elected.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import etcd3
import structlog

from shardbank import meta

log = structlog.get_logger("election")

# Leadership ends locally this long before the lease could have expired in
# etcd, so two leaders never act in the same instant (clock drift, GC pauses).
LEASE_SAFETY_MARGIN_S = 0.5
# One etcd call of the election thread; short so a hung etcd does not keep a
# stale leader believing in itself past its deadline.
ETCD_CALL_TIMEOUT_S = 1.0
# How often the thread refreshes the lease and campaigns.
POLL_INTERVAL_S = 0.25
# Bound on waiting for the thread at stop().
STOP_JOIN_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class LeaderView:
    """What this coordinator knows about leadership at one instant."""

    is_leader: bool
    # Our term's epoch when leader; else the known leader's epoch (0: none).
    epoch: int
    leader_id: str
    leader_address: str


@dataclass(frozen=True)
class _Term:
    epoch: int
    lease_id: int


def _connect(endpoint: str) -> etcd3.Etcd3Client:
    host, _, port = endpoint.rpartition(":")
    return etcd3.client(host=host or "127.0.0.1", port=int(port), timeout=ETCD_CALL_TIMEOUT_S)


class Election:
    """Campaigns for the leader key; exposes `is_leader`, `epoch`, `view()`."""

    def __init__(
        self,
        endpoint: str,
        coordinator_id: str,
        address: str,
        ttl_s: int = meta.LEASE_TTL_S,
        poll_interval_s: float = POLL_INTERVAL_S,
        registration_extra: dict[str, str] | None = None,
    ) -> None:
        """`registration_extra`: more fields for /coordinators/<id> (e.g. metrics_address)."""
        self._endpoint = endpoint
        self._id = coordinator_id
        self._address = address
        self._ttl_s = ttl_s
        self._poll_interval_s = poll_interval_s
        self._leader_value = json.dumps({"coordinator_id": coordinator_id, "address": address})
        self._registration_value = json.dumps(
            {"coordinator_id": coordinator_id, "address": address, "pid": os.getpid()}
            | (registration_extra or {})
        )
        self._lock = threading.Lock()
        self._term: _Term | None = None
        self._lease_deadline = 0.0  # monotonic
        self._known: meta.Leader | None = None
        self._resign = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"election:{coordinator_id}", daemon=True)

    # --- read side (any thread) -------------------------------------------------

    @property
    def coordinator_id(self) -> str:
        return self._id

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._term is not None and time.monotonic() < self._lease_deadline

    @property
    def epoch(self) -> int:
        """This term's epoch, or 0 when not leader."""
        with self._lock:
            if self._term is None or time.monotonic() >= self._lease_deadline:
                return 0
            return self._term.epoch

    def view(self) -> LeaderView:
        with self._lock:
            leading = self._term is not None and time.monotonic() < self._lease_deadline
            if leading and self._term is not None:
                return LeaderView(True, self._term.epoch, self._id, self._address)
            known = self._known
        if known is None or known.coordinator_id == self._id:
            return LeaderView(False, 0, "", "")
        return LeaderView(False, known.epoch, known.coordinator_id, known.address)

    # --- control ---------------------------------------------------------------

    def start(self) -> Election:
        self._thread.start()
        return self

    def step_down(self, why: str) -> None:
        """Stop leading now (e.g. a node said STALE_EPOCH: a newer term exists).

        Leadership ends immediately for callers; the thread then revokes the
        lease (deleting our leader key if it is still ours) and campaigns
        again with a fresh one.
        """
        with self._lock:
            term, self._term = self._term, None
        if term is not None:
            log.warning("stepped_down", epoch=term.epoch, why=why)
        self._resign.set()

    def stop(self) -> None:
        """Stop campaigning and revoke the lease so a standby takes over at once."""
        with self._lock:
            self._term = None
        self._stop.set()
        self._resign.set()
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_TIMEOUT_S)

    # --- the thread ------------------------------------------------------------

    def _run(self) -> None:
        client: etcd3.Etcd3Client | None = None
        lease_id: int | None = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = _connect(self._endpoint)
                if self._resign.is_set():
                    self._resign.clear()
                    if lease_id is not None:
                        self._revoke(client, lease_id)
                        lease_id = None
                lease_id = self._keep_lease(client, lease_id)
                if lease_id is not None:
                    self._campaign(client, lease_id)
            except Exception as exc:  # etcd down or slow: keep trying, never die
                log.warning("election_retry", error=type(exc).__name__)
                client = None  # the lease stays; the local deadline bounds leadership
            self._resign.wait(self._poll_interval_s)
        with self._lock:
            self._term = None
        if lease_id is not None:
            try:
                self._revoke(client or _connect(self._endpoint), lease_id)
            except Exception as exc:
                log.warning("lease_revoke_failed", error=type(exc).__name__)

    def _keep_lease(self, client: etcd3.Etcd3Client, lease_id: int | None) -> int | None:
        """Grant or refresh the lease; move the local leadership deadline."""
        sent = time.monotonic()
        if lease_id is not None:
            responses = list(client.refresh_lease(lease_id))
            ttl = int(responses[0].TTL) if responses else 0
            if ttl <= 0:
                self._lose("lease_lost")
                lease_id = None
            else:
                self._extend(sent + ttl)
                return lease_id
        lease = client.lease(self._ttl_s)
        client.put(meta.COORDINATORS + self._id, self._registration_value, lease=lease.id)
        log.info("lease_granted", lease_id=lease.id, ttl_s=lease.ttl)
        self._extend(sent + int(lease.ttl))
        return int(lease.id)

    def _campaign(self, client: etcd3.Etcd3Client, lease_id: int) -> None:
        tx = client.transactions
        _, responses = client.transaction(
            compare=[tx.create(meta.LEADER) == 0],
            success=[tx.put(meta.LEADER, self._leader_value, lease=lease_id), tx.get(meta.LEADER)],
            failure=[tx.get(meta.LEADER)],
        )
        found: list[tuple[bytes, Any]] = responses[-1] if responses else []
        if not found:
            self._observe(None, None)
            return
        value, kv = found[0]
        data = json.loads(value)
        known = meta.Leader(str(data["coordinator_id"]), str(data["address"]), int(kv.create_revision))
        mine = int(kv.lease_id) == lease_id and known.coordinator_id == self._id
        self._observe(known, _Term(known.epoch, lease_id) if mine else None)

    def _observe(self, known: meta.Leader | None, term: _Term | None) -> None:
        with self._lock:
            before, self._term, self._known = self._term, term, known
        if term is not None and (before is None or before.epoch != term.epoch):
            log.info("elected", epoch=term.epoch, coordinator_id=self._id)
        if term is None and before is not None:
            log.warning("deposed", epoch=before.epoch, leader=known.coordinator_id if known else None)

    def _extend(self, lease_expiry: float) -> None:
        with self._lock:
            self._lease_deadline = lease_expiry - LEASE_SAFETY_MARGIN_S

    def _lose(self, why: str) -> None:
        with self._lock:
            term, self._term = self._term, None
        if term is not None:
            log.warning("stepped_down", epoch=term.epoch, why=why)

    @staticmethod
    def _revoke(client: etcd3.Etcd3Client, lease_id: int) -> None:
        client.revoke_lease(lease_id)
        log.info("lease_revoked", lease_id=lease_id)
