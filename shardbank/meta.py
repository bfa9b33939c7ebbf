"""Cluster metadata in etcd: shard registry (leased), slot map, coordinator
leadership, gateways.

Layout (all under /shardbank):
  /shards/<shard_id>        JSON {shard_id, address, pid}   leased: gone when the node dies
  /slotmap                  SlotMap JSON                    versioned; changed only by txn
  /coordinator/leader       JSON {coordinator_id, address}  leased; its create_revision is the epoch
  /coordinators/<id>        JSON {coordinator_id, address, pid}  leased
  /gateways/<id>            JSON {gateway_id, address, pid}      leased

The etcd client is synchronous (python3-etcd3); long-lived users run it in
threads so an event loop never blocks on etcd.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import etcd3
import structlog

from shardbank.slots import SlotMap

PREFIX = "/shardbank"
SHARDS = f"{PREFIX}/shards/"
SLOTMAP = f"{PREFIX}/slotmap"
LEADER = f"{PREFIX}/coordinator/leader"
COORDINATORS = f"{PREFIX}/coordinators/"
GATEWAYS = f"{PREFIX}/gateways/"

# A registration's lease: short enough that a dead process disappears fast
# (and a standby coordinator takes over within LEASE_TTL_S + one poll).
LEASE_TTL_S = 3
POLL_INTERVAL_S = 0.5
ETCD_TIMEOUT_S = 5

log = structlog.get_logger("meta")


def connect(endpoint: str) -> etcd3.Etcd3Client:
    host, _, port = endpoint.rpartition(":")
    return etcd3.client(host=host or "127.0.0.1", port=int(port), timeout=ETCD_TIMEOUT_S)


def init_slot_map(client: etcd3.Etcd3Client, shard_ids: list[str]) -> SlotMap:
    """Create the slot map if there is none; return the one in force."""
    fresh = SlotMap.even(shard_ids)
    client.transaction(
        compare=[client.transactions.create(SLOTMAP) == 0],
        success=[client.transactions.put(SLOTMAP, fresh.to_json())],
        failure=[],
    )
    current = read_slot_map(client)
    if current is None:
        raise RuntimeError("slot map vanished right after creation")
    return current


def read_slot_map(client: etcd3.Etcd3Client) -> SlotMap | None:
    value, _ = client.get(SLOTMAP)
    return None if value is None else SlotMap.from_json(value)


def read_json_prefix(client: etcd3.Etcd3Client, prefix: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for value, meta in client.get_prefix(prefix):
        key = meta.key.decode()[len(prefix) :]
        found[key] = json.loads(value)
    return found


def list_shards(client: etcd3.Etcd3Client) -> dict[str, dict[str, Any]]:
    return read_json_prefix(client, SHARDS)


@dataclass(frozen=True)
class Leader:
    coordinator_id: str
    address: str
    epoch: int


def read_leader(client: etcd3.Etcd3Client) -> Leader | None:
    value, meta = client.get(LEADER)
    if value is None:
        return None
    data = json.loads(value)
    return Leader(data["coordinator_id"], data["address"], int(meta.create_revision))


class Registration:
    """Keeps `key = value` alive under a lease from a daemon thread.

    If the lease is lost (etcd restarted, a long pause), a new one is granted
    and the key written again, so the process reappears by itself.
    """

    def __init__(self, endpoint: str, key: str, value: dict[str, Any], ttl_s: int = LEASE_TTL_S) -> None:
        self._endpoint = endpoint
        self._key = key
        self._value = json.dumps(value)
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease:{key}", daemon=True)

    def start(self) -> Registration:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client: etcd3.Etcd3Client | None = None
        lease: Any = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = connect(self._endpoint)
                if lease is None:
                    lease = client.lease(self._ttl_s)
                    client.put(self._key, self._value, lease=lease)
                    log.info("registered", key=self._key)
                else:
                    responses = list(lease.refresh())
                    if not responses or responses[0].TTL <= 0:
                        lease = None
                        continue
            except Exception as exc:  # etcd down or restarting: retry, never die
                log.warning("registration_retry", key=self._key, error=type(exc).__name__)
                client, lease = None, None
            self._stop.wait(self._ttl_s / 3)
        if client is not None and lease is not None:
            with contextlib.suppress(Exception):
                lease.revoke()


class SlotMapWatcher:
    """Polls the slot map from a daemon thread and holds the newest copy.

    Polling one small key twice a second is cheaper to reason about than a
    watch stream that must be re-established after etcd restarts; callers that
    see SLOT_MOVED call refresh() to catch up at once.
    """

    def __init__(self, endpoint: str, on_change: Callable[[SlotMap], None] | None = None) -> None:
        self._endpoint = endpoint
        self._on_change = on_change
        self._lock = threading.Lock()
        self._map: SlotMap | None = None
        self._client: etcd3.Etcd3Client | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slotmap", daemon=True)

    def start(self, wait_s: float = 30.0) -> SlotMapWatcher:
        """Start polling; wait until a first map was read (or wait_s passed)."""
        deadline = time.monotonic() + wait_s
        while self.refresh() is None and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def current(self) -> SlotMap | None:
        with self._lock:
            return self._map

    def refresh(self) -> SlotMap | None:
        try:
            if self._client is None:
                self._client = connect(self._endpoint)
            fresh = read_slot_map(self._client)
        except Exception as exc:
            log.warning("slotmap_read_failed", error=type(exc).__name__)
            self._client = None
            return self.current
        if fresh is None:
            return self.current
        changed = False
        with self._lock:
            if self._map is None or fresh.version > self._map.version:
                self._map = fresh
                changed = True
        if changed and self._on_change is not None:
            self._on_change(fresh)
        return self.current

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self.refresh()
