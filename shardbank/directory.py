"""Where shards are: slot map + shard registry (both from etcd) -> stubs.

Used by the gateway and the coordinator. Two daemon threads keep a fresh copy
of the slot map and of the registry; callers on an event loop read the copies
without blocking, and call `refresh()` (run in a thread) after a SLOT_MOVED or
a failed connection to catch up at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from shardbank import frame_lane, limits, meta
from shardbank.node_stream import NodeStream, unary_calls
from shardbank.slots import SlotMap
from shardbank.v1 import ledger_pb2_grpc

log = structlog.get_logger("directory")

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
    # Reconnect fast after a node restarts: the default backoff grows to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 100),
]


class UnknownShard(Exception):
    """The slot map names a shard that has no live registration."""


@dataclass(eq=False)
class _Node:
    """What is kept per shard while its registered address stays the same: a
    stub builds a callable per method and a stream is costly to open, so
    neither is built per call."""

    address: str
    frame_address: str
    channel: grpc.aio.Channel
    stub: ledger_pb2_grpc.LedgerNodeStub
    stream: NodeStream

    async def close(self) -> None:
        await self.stream.close()
        await self.channel.close()


class ShardDirectory:
    def __init__(
        self,
        etcd_endpoint: str,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        frames: frame_lane.Credentials | None = None,
    ) -> None:
        """`interceptors` go on every channel to a node (service tokens:
        `shardbank.service_auth.channel_interceptors`). With `frames`, writes
        go on a node's frame lane (`shardbank.frame_lane`) when it announces
        one, signed with those credentials; else on its gRPC stream."""
        self._etcd_endpoint = etcd_endpoint
        self._interceptors = list(interceptors)
        if os.environ.get(frame_lane.TRANSPORT_ENV, "") == "grpc":
            frames = None
        self._frames = frames
        self._slot_maps = meta.SlotMapWatcher(etcd_endpoint)
        self._lock = threading.Lock()
        self._registry: dict[str, dict[str, Any]] = {}
        self._nodes: dict[str, _Node] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._etcd: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_registry, name="registry", daemon=True)

    async def start(self) -> ShardDirectory:
        await asyncio.to_thread(self._slot_maps.start)
        await asyncio.to_thread(self._read_registry)
        self._thread.start()
        return self

    async def close(self) -> None:
        self._stop.set()
        self._slot_maps.stop()
        for node in list(self._nodes.values()):
            await node.close()
        self._nodes.clear()

    @property
    def slot_map(self) -> SlotMap:
        current = self._slot_maps.current
        if current is None:
            raise UnknownShard("no slot map in etcd yet")
        return current

    def owner(self, account_id: int) -> str:
        return self.slot_map.owner(account_id)

    def shard_ids(self) -> list[str]:
        """Every shard that owns slots or is registered."""
        with self._lock:
            registered = set(self._registry)
        current = self._slot_maps.current
        owners = set(current.owners) if current else set()
        return sorted(registered | owners)

    def address(self, shard_id: str) -> str | None:
        with self._lock:
            entry = self._registry.get(shard_id)
        return None if entry is None else str(entry["address"])

    def stub(self, shard_id: str) -> ledger_pb2_grpc.LedgerNodeStub:
        """The stub on the shard's cached channel; raises UnknownShard if not registered."""
        return self._node(shard_id).stub

    def stream(self, shard_id: str) -> NodeStream:
        """The shard's write stream (`shardbank.node_stream`): on its frame
        lane if it has one, else on the same channel as `stub`; raises
        UnknownShard if not registered."""
        return self._node(shard_id).stream

    def _node(self, shard_id: str) -> _Node:
        """The shard's channel, stub and stream, kept while its registered
        addresses stay the same (a new one closes the old ones)."""
        with self._lock:  # one read of the registration for both addresses (every write comes here)
            entry = self._registry.get(shard_id)
        if entry is None:
            raise UnknownShard(shard_id)
        address = str(entry["address"])
        # The announced frame lane; "" when it has none or we do not use it.
        frame_address = str(entry.get("frame_address", "")) if self._frames is not None else ""
        cached = self._nodes.get(shard_id)
        if cached is None or cached.address != address or cached.frame_address != frame_address:
            if cached is not None:
                closing = asyncio.ensure_future(cached.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            channel = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self._interceptors
            )
            stub = ledger_pb2_grpc.LedgerNodeStub(channel)
            if frame_address and self._frames is not None:  # (the second test is for mypy)
                stream = NodeStream(frame_lane.opener(frame_address, self._frames, shard_id), shard_id)
            else:
                stream = NodeStream(stub.WriteStream, shard_id, unary=unary_calls(stub))
            cached = self._nodes[shard_id] = _Node(address, frame_address, channel, stub, stream)
        return cached

    async def refresh(self) -> None:
        await asyncio.to_thread(self._slot_maps.refresh)
        await asyncio.to_thread(self._read_registry)

    def _read_registry(self) -> None:
        try:
            if self._etcd is None:
                self._etcd = meta.connect(self._etcd_endpoint)
            fresh = meta.list_shards(self._etcd)
        except Exception as exc:
            log.warning("registry_read_failed", error=type(exc).__name__)
            self._etcd = None
            return
        with self._lock:
            self._registry = fresh

    def _poll_registry(self) -> None:
        while not self._stop.wait(meta.POLL_INTERVAL_S):
            self._read_registry()
