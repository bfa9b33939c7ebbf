"""What the gateway talks to: ledger nodes (through `ShardDirectory`) and the
coordinator leader (address from etcd, cached). Every downstream failure
leaves here as a `BankError`, UNAVAILABLE when resending may help.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog

from gateway.routing import Target
from shardbank import errors, frame_lane, meta
from shardbank.directory import CHANNEL_OPTIONS, ShardDirectory, UnknownShard
from shardbank.node_stream import NodeStream
from shardbank.slots import SlotMap
from shardbank.v1 import coordinator_pb2_grpc, ledger_pb2_grpc

log = structlog.get_logger("gateway.upstream")

# Trailing metadata key of a NOT_LEADER answer naming the leader.
LEADER_ADDRESS_KEY = "leader-address"


class SingleFlight:
    """Concurrent callers of a refresh share one run of it."""

    def __init__(self, run: Callable[[], Awaitable[None]]) -> None:
        self._run = run
        self._task: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        await asyncio.shield(self._task)


def unavailable(reason: str, message: str) -> errors.BankError:
    return errors.BankError(grpc.StatusCode.UNAVAILABLE, reason, message)


def downstream_error(exc: grpc.RpcError, target: Target) -> errors.BankError:
    """A failed downstream call as a BankError; UNAVAILABLE means 'resend may help'."""
    error = errors.from_rpc_error(exc)
    return downstream_refusal(
        error, target, error.metadata.get(LEADER_ADDRESS_KEY) or _trailing(exc, LEADER_ADDRESS_KEY)
    )


def downstream_refusal(error: errors.BankError, target: Target, hint: str = "") -> errors.BankError:
    """`downstream_error` for a refusal already read (a stream message's error)."""
    lost_reason = errors.NOT_LEADER if target.is_coordinator else errors.SHARD_UNAVAILABLE
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = error.reason if error.reason in (errors.NOT_LEADER, errors.OVERLOADED) else lost_reason
        result = unavailable(reason, f"{target} did not answer ({error.code.name})")
    elif error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason != errors.BATCH_TOO_LARGE:
        # The server's concurrent-RPC limit: nothing was done, try again shortly.
        result = unavailable(errors.OVERLOADED, f"{target} is overloaded")
    else:
        return error
    if hint:
        result.metadata[LEADER_ADDRESS_KEY] = hint
    return result


def _trailing(exc: grpc.RpcError, key: str) -> str:
    try:
        pairs = exc.trailing_metadata() or ()
    except Exception:  # not a call error (e.g. a channel that never connected)
        return ""
    for name, value in pairs:
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


class LeaderCache:
    """The coordinator leader's address: read from etcd on first use and after
    a NOT_LEADER (or taken from the refusal's `leader-address` hint)."""

    def __init__(self, etcd_endpoint: str, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self._etcd_endpoint = etcd_endpoint
        self._interceptors = list(interceptors)
        self._address = ""
        # address -> (channel, stub): a stub builds a callable per method,
        # so it is kept with its channel rather than built per call.
        self._channels: dict[str, tuple[grpc.aio.Channel, coordinator_pb2_grpc.CoordinatorStub]] = {}
        self._refresh = SingleFlight(self._read)

    async def read(self) -> meta.Leader | None:
        """The leader as etcd has it now (None: no leader, or etcd unreachable)."""
        try:
            return await asyncio.to_thread(self._read_sync)
        except Exception as exc:
            log.warning("leader_read_failed", error=type(exc).__name__)
            return None

    def _read_sync(self) -> meta.Leader | None:
        client = meta.connect(self._etcd_endpoint)
        try:
            return meta.read_leader(client)
        finally:
            client.close()

    async def _read(self) -> None:
        leader = await self.read()
        fresh = leader.address if leader else ""
        if fresh != self._address:
            log.info("coordinator_leader", address=fresh or None)
        self._address = fresh

    async def refresh(self, hint: str = "") -> None:
        if hint and hint != self._address:
            log.info("coordinator_leader", address=hint, source="hint")
            self._address = hint
            return
        await self._refresh()

    async def stub(self) -> coordinator_pb2_grpc.CoordinatorStub:
        if not self._address:
            await self._refresh()
        address = self._address
        if not address:
            raise unavailable(errors.NOT_LEADER, "no coordinator leader is elected")
        cached = self._channels.get(address)
        if cached is None:
            channel = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self._interceptors
            )
            cached = self._channels[address] = (channel, coordinator_pb2_grpc.CoordinatorStub(channel))
        return cached[1]

    async def close(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()


class Cluster:
    """Shards and the coordinator, as the handlers see them. `interceptors`
    go on every channel to them (service tokens)."""

    def __init__(
        self,
        etcd_endpoint: str,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        frames: frame_lane.Credentials | None = None,
    ) -> None:
        """`frames`: write to nodes on their frame lanes (`ShardDirectory`)."""
        self.directory = ShardDirectory(etcd_endpoint, interceptors, frames)
        self.leader = LeaderCache(etcd_endpoint, interceptors)
        self._refresh_map = SingleFlight(self.directory.refresh)

    async def start(self) -> None:
        await self.directory.start()

    async def close(self) -> None:
        await self.directory.close()
        await self.leader.close()

    def has_slot_map(self) -> bool:
        try:
            self.directory.slot_map  # noqa: B018 (raises when there is none)
        except UnknownShard:
            return False
        return True

    @property
    def slot_map(self) -> SlotMap:
        try:
            return self.directory.slot_map
        except UnknownShard:
            raise unavailable(errors.SHARD_UNAVAILABLE, "no slot map yet") from None

    def owner(self, account_id: int) -> str:
        return self.slot_map.owner(account_id)

    def node(self, shard_id: str) -> ledger_pb2_grpc.LedgerNodeStub:
        try:
            return self.directory.stub(shard_id)
        except UnknownShard:
            raise unavailable(errors.SHARD_UNAVAILABLE, f"{shard_id} is not registered") from None

    def node_stream(self, shard_id: str) -> NodeStream:
        """The shard's write stream (`shardbank.node_stream`)."""
        try:
            return self.directory.stream(shard_id)
        except UnknownShard:
            raise unavailable(errors.SHARD_UNAVAILABLE, f"{shard_id} is not registered") from None

    async def refresh_map(self) -> None:
        await self._refresh_map()

    async def unreachable(self, target: Target, error: errors.BankError) -> None:
        if target.is_coordinator:
            await self.leader.refresh(error.metadata.get(LEADER_ADDRESS_KEY, ""))
        elif error.reason != errors.OVERLOADED:
            # The node may have restarted on a new address, or lost its slots.
            await self._refresh_map()
