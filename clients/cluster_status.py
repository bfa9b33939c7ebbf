"""What `shardbank status` shows, gathered straight from etcd and the ledger nodes.

It needs no gateway and no API key: etcd holds the registry (shards,
coordinators, gateways, each leased, so a dead process has no key), the slot
map, the coordinator leader (its create_revision is the epoch) and the slot
move records; each registered node answers `GetNodeInfo` (signed with the
cluster secret when the cluster has one). Every source may be down: a failure
becomes a field saying so (`"state": "down"`, `"error": ...`), never an
exception out of `collect`.

Transfers/s per shard is measured, not estimated: `GetNodeInfo` is asked
twice, `sample_s` apart, and the difference of `transfers_applied` (posted
transfers and committed 2PC legs) divided by the time between the answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import etcd3
import grpc

from clients import health
from shardbank import meta, metrics, service_auth, slots
from shardbank.moves import Move
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc

# One etcd read or one node call of a status run: an operator waits for it.
CALL_TIMEOUT_S = 2.0
# Between the two GetNodeInfo samples that give transfers/s.
SAMPLE_S_DEFAULT = 1.0
SAMPLE_S_MAX = 60.0
# Nodes asked at once.
NODE_CALLS_IN_FLIGHT = 16
UP = "up"
DOWN = "down"
UNREACHABLE = "unreachable"

NodeInfoCall = Callable[[str], ledger_pb2.NodeInfo]


def node_info_call(secret: bytes, timeout_s: float) -> NodeInfoCall:
    """GetNodeInfo at an address, signed when there is a secret; raises grpc.RpcError."""

    def call(address: str) -> ledger_pb2.NodeInfo:
        with service_auth.signed_channel(address, secret, "status") as channel:
            reply: ledger_pb2.NodeInfo = ledger_pb2_grpc.LedgerNodeStub(channel).GetNodeInfo(
                ledger_pb2.GetNodeInfoRequest(), timeout=timeout_s
            )
            return reply

    return call


def etcd_section(client: Any, endpoint: str, timeout_s: float) -> dict[str, Any]:
    """etcd health, version, leader and members."""
    section: dict[str, Any] = {"endpoint": endpoint, "healthy": health.etcd_healthy(endpoint, timeout_s)}
    status = client.status()
    section["version"] = status.version
    section["db_size_bytes"] = int(status.db_size)
    section["leader"] = status.leader.name if status.leader is not None else ""
    section["members"] = [
        {
            "name": m.name,
            "id": f"{m.id:x}",
            "client_urls": list(m.client_urls),
            "peer_urls": list(m.peer_urls),
        }
        for m in client.members
    ]
    return section


def _sample(call: NodeInfoCall, addresses: dict[str, str]) -> dict[str, tuple[float, Any]]:
    """shard -> (monotonic time of the answer, NodeInfo or the error), all nodes at once."""

    def one(address: str) -> tuple[float, Any]:
        try:
            info = call(address)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            return time.monotonic(), f"{code.name if code else 'UNKNOWN'}"
        return time.monotonic(), info

    if not addresses:
        return {}
    with ThreadPoolExecutor(min(NODE_CALLS_IN_FLIGHT, len(addresses))) as pool:
        answers = list(pool.map(one, addresses.values()))
    return dict(zip(addresses, answers, strict=True))


def shard_rows(
    slot_map: slots.SlotMap | None,
    registered: dict[str, dict[str, Any]],
    first: dict[str, tuple[float, Any]],
    second: dict[str, tuple[float, Any]],
) -> list[dict[str, Any]]:
    """One row per shard that owns slots or is registered (pure: unit-tested)."""
    owners = set(slot_map.owners) if slot_map is not None else set()
    rows = []
    for shard_id in sorted(owners | set(registered), key=_shard_order):
        entry = registered.get(shard_id, {})
        row: dict[str, Any] = {
            "shard_id": shard_id,
            "address": entry.get("address", ""),
            "frame_address": entry.get("frame_address", ""),
            "metrics_address": entry.get("metrics_address", ""),
            "slots": len(slot_map.slots_of(shard_id)) if slot_map is not None else 0,
            "slot_ranges": slot_ranges(slot_map, shard_id),
            "state": DOWN,
        }
        if not entry:
            row["error"] = "not registered in etcd (process down)"
            rows.append(row)
            continue
        latest = second.get(shard_id) or first.get(shard_id)
        if latest is None or not isinstance(latest[1], ledger_pb2.NodeInfo):
            row["state"] = UNREACHABLE
            row["error"] = f"GetNodeInfo failed: {latest[1] if latest else 'not asked'}"
            rows.append(row)
            continue
        info: ledger_pb2.NodeInfo = latest[1]
        row.update(
            state=UP,
            pid=info.pid,
            accounts=info.accounts,
            journal_seq=info.journal_seq,
            transfers_applied=info.transfers_applied,
            in_doubt_legs=info.in_doubt_legs,
            review_holds=info.review_holds,
            writer_queue_items=info.writer_queue_items,
            max_epoch_seen=info.max_epoch_seen,
            slot_map_version=info.slot_map_version,
            transfers_per_s=transfer_rate(first.get(shard_id), second.get(shard_id)),
        )
        rows.append(row)
    return rows


def slot_ranges(slot_map: slots.SlotMap | None, shard_id: str) -> list[str]:
    """The shard's slots as runs, "first-last" (a single slot: "n")."""
    if slot_map is None:
        return []
    return [
        f"{first}-{last}" if first != last else str(first)
        for first, last, owner in slot_map.ranges()
        if owner == shard_id
    ]


def transfer_rate(first: tuple[float, Any] | None, second: tuple[float, Any] | None) -> float | None:
    """Transfers/s between two NodeInfo samples; None without two good ones."""
    if first is None or second is None:
        return None
    (t1, a), (t2, b) = first, second
    if not isinstance(a, ledger_pb2.NodeInfo) or not isinstance(b, ledger_pb2.NodeInfo) or t2 <= t1:
        return None
    if b.pid != a.pid:  # restarted in between: the counter is durable, but the interval is not clean
        return None
    return round(max(0, b.transfers_applied - a.transfers_applied) / (t2 - t1), 1)


def _shard_order(shard_id: str) -> tuple[str, int]:
    prefix, _, number = shard_id.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (shard_id, 0)


def health_state(serving: int | None, idle: str = "not_serving") -> str:
    """up (SERVING), `idle` (answers NOT_SERVING: a standby coordinator, a
    gateway without a slot map), or unreachable (no answer: dead, its lease
    not yet expired)."""
    if serving is None:
        return UNREACHABLE
    return UP if serving == health.SERVING else idle


def coordinator_section(
    leader: meta.Leader | None,
    registered: dict[str, dict[str, Any]],
    probed: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """Leader, epoch and standbys (pure); `probed`: coordinator id -> gRPC health."""
    members = []
    for coordinator_id in sorted(registered):
        entry = registered[coordinator_id]
        is_leader = leader is not None and leader.coordinator_id == coordinator_id
        member = {
            "coordinator_id": coordinator_id,
            "address": entry.get("address", ""),
            "metrics_address": entry.get("metrics_address", ""),
            "role": "leader" if is_leader else "standby",
        }
        if probed is not None:
            member["state"] = health_state(probed.get(coordinator_id), idle="standby")
        members.append(member)
    return {
        "leader": leader.coordinator_id if leader else "",
        "leader_address": leader.address if leader else "",
        "epoch": leader.epoch if leader else 0,
        "members": members,
    }


def probe_health(addresses: dict[str, str], timeout_s: float) -> dict[str, int | None]:
    """name -> gRPC health status (None: no answer), all at once. Health is
    open on every component, so this needs no credentials."""
    if not addresses:
        return {}
    with ThreadPoolExecutor(min(NODE_CALLS_IN_FLIGHT, len(addresses))) as pool:
        answers = list(pool.map(lambda a: health.grpc_health(a, timeout_s), addresses.values()))
    return dict(zip(addresses, answers, strict=True))


def move_rows(moves: list[Move]) -> list[dict[str, Any]]:
    return [
        {
            "move_id": m.move_id,
            "phase": m.phase,
            "source": m.source,
            "target": m.target,
            "slots": len(m.slots),
            "first_slot": min(m.slots) if m.slots else None,
            "last_slot": max(m.slots) if m.slots else None,
            "accounts_copied": m.accounts_copied,
            "accounts_total": m.accounts_total,
            "records_copied": m.records_copied,
            "progress": round(m.progress, 4),
            "started_at_unix_ms": m.started_at_unix_ms,
            "updated_at_unix_ms": m.updated_at_unix_ms,
            "error": m.error,
            "terminal": m.terminal,
        }
        for m in moves
    ]


def collect(
    etcd_endpoint: str,
    secret: bytes,
    sample_s: float = SAMPLE_S_DEFAULT,
    timeout_s: float = CALL_TIMEOUT_S,
    call: NodeInfoCall | None = None,
) -> dict[str, Any]:
    """The whole status as a JSON-able dict. `ok` is False when etcd could not be read
    (then nothing else is known); down components are reported, not raised."""
    host, _, port = etcd_endpoint.rpartition(":")
    try:
        client = etcd3.client(host=host or "127.0.0.1", port=int(port), timeout=timeout_s)
    except ValueError:
        return {"ok": False, "etcd": {"endpoint": etcd_endpoint, "healthy": False, "error": "bad endpoint"}}
    try:
        try:
            section = etcd_section(client, etcd_endpoint, timeout_s)
            slot_map = meta.read_slot_map(client)
            shards = meta.list_shards(client)
            leader = meta.read_leader(client)
            coordinators = meta.read_json_prefix(client, meta.COORDINATORS)
            gateways = meta.read_json_prefix(client, meta.GATEWAYS)
            moves, unreadable_moves = metrics.read_moves(client)
        except Exception as exc:  # etcd down or not an etcd: say so, never a trace
            return {
                "ok": False,
                "etcd": {"endpoint": etcd_endpoint, "healthy": False, "error": type(exc).__name__},
            }
    finally:
        client.close()
    call = call or node_info_call(secret, timeout_s)
    addresses = {s: str(e["address"]) for s, e in shards.items() if e.get("address")}
    probed = probe_health(
        {f"c/{k}": str(e.get("address", "")) for k, e in coordinators.items()}
        | {f"g/{k}": str(e.get("address", "")) for k, e in gateways.items()},
        timeout_s,
    )
    first = _sample(call, addresses)
    second: dict[str, tuple[float, Any]] = {}
    if sample_s > 0:
        time.sleep(min(sample_s, SAMPLE_S_MAX))
        second = _sample(call, addresses)
    return {
        "ok": True,
        "etcd": section,
        "slot_map": {
            "version": slot_map.version if slot_map else 0,
            "slot_count": slots.SLOT_COUNT,
            "shards": slot_map.shard_ids() if slot_map else [],
        },
        "shards": shard_rows(slot_map, shards, first, second),
        "coordinators": coordinator_section(
            leader, coordinators, {k[2:]: v for k, v in probed.items() if k.startswith("c/")}
        ),
        "gateways": [
            {
                "gateway_id": gateway_id,
                "address": entry.get("address", ""),
                "http_address": entry.get("http_address", ""),
                "metrics_address": entry.get("metrics_address", ""),
                "state": health_state(probed.get(f"g/{gateway_id}")),
            }
            for gateway_id, entry in sorted(gateways.items())
        ],
        "moves": move_rows(moves),
        "unreadable_move_keys": unreadable_moves,
        "sample_s": sample_s,
    }
