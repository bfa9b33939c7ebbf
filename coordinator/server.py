"""The coordinator process: gRPC `Coordinator` service, health, reflection,
and the tasks that run while it lives (2PC rounds, recovery, leadership watch).

The servicer is thin (Flower's lesson): it checks the request, asks
`TwoPhaseCommit`, and turns a `BankError` into a rich status in one place.
Unexpected errors become INTERNAL with a request id that is also logged, so a
caller never sees a stack trace and an operator can still find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator import decisions, validate
from coordinator.election import Election, LeaderView
from coordinator.mover import Mover
from coordinator.recovery import PREPARE_TIMEOUT_MS_DEFAULT, Recovery
from coordinator.review import Review
from coordinator.shards import Deadlines, Shards
from coordinator.twopc import TwoPhaseCommit
from shardbank import errors, frame_lane, limits, meta, metrics, service_auth
from shardbank.directory import CHANNEL_OPTIONS, ShardDirectory
from shardbank.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2

log = structlog.get_logger("coordinator")

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
# How often leadership changes are noticed (health status, recovery kick).
LEADERSHIP_CHECK_INTERVAL_S = 0.1
# In-flight rounds get this long to finish at SIGTERM before the lease goes.
SHUTDOWN_GRACE_S = 5.0


@dataclass(frozen=True)
class Config:
    coordinator_id: str
    listen: str
    etcd: str
    prepare_timeout_ms: int = PREPARE_TIMEOUT_MS_DEFAULT
    # Signs calls to nodes and is required of callers (service_auth); b"": off.
    cluster_secret: bytes = field(default=b"", repr=False)
    # Prometheus /metrics on this port, same host as `listen`; 0: off.
    metrics_port: int = 0


@dataclass(frozen=True)
class _Status(grpc.Status):  # type: ignore[misc]
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def not_leader_status(view: LeaderView) -> grpc.Status:
    """UNAVAILABLE NOT_LEADER; the leader's address both in ErrorInfo metadata
    (`leader_address`) and as trailing metadata (`leader-address`)."""
    error = errors.BankError(
        grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "this coordinator is not the leader"
    )
    trailing: tuple[tuple[str, str | bytes], ...] = ()
    if view.leader_address:
        error.metadata = {"leader_address": view.leader_address, "leader_id": view.leader_id}
        trailing = (("leader-address", view.leader_address),)
    base = error.to_status()
    return _Status(base.code, base.details, tuple(base.trailing_metadata) + trailing)


def _with_review(clean: types_pb2.Transfer, given: types_pb2.Transfer) -> types_pb2.Transfer:
    """The gateway's risk fields survive validation (which keeps client input only)."""
    if given.review_deadline_unix_ms < 0:
        raise errors.invalid(errors.INVALID_REVIEW_DEADLINE, "review deadline is negative")
    clean.review_deadline_unix_ms = given.review_deadline_unix_ms
    if given.HasField("risk"):
        clean.risk.CopyFrom(given.risk)
    return clean


Reply = TypeVar("Reply")


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, election: Election, twopc: TwoPhaseCommit, review: Review) -> None:
        self._election = election
        self._twopc = twopc
        self._review = review

    async def _serve(
        self, method: str, work: Callable[[], Awaitable[Reply]], context: grpc.aio.ServicerContext
    ) -> Reply:
        """Run one RPC; every refusal becomes a status here (NOT_LEADER with the leader's address)."""
        request_id = uuid.uuid4().hex[:16]
        failure: errors.BankError | None = None
        began = time.perf_counter()
        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                return await work()
        except errors.BankError as error:
            failure = error
        except Exception:
            log.exception("internal_error", request_id=request_id, method=method)
            failure = errors.BankError(
                grpc.StatusCode.INTERNAL, errors.INTERNAL, f"internal error; request_id={request_id}"
            )
        finally:
            metrics.RPC_DURATION.labels(metrics.COORDINATOR, method).observe(time.perf_counter() - began)
        metrics.RPC_FAILURES.labels(metrics.COORDINATOR, method, failure.code.name).inc()
        if failure.reason == errors.NOT_LEADER:
            await context.abort_with_status(not_leader_status(self._election.view()))
        await errors.abort(context, failure)

    async def SubmitTransfers(
        self, request: coordinator_pb2.CoordinatorSubmitRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.CoordinatorSubmitResponse:
        metrics.BATCH_ITEMS.labels(metrics.COORDINATOR, "SubmitTransfers").observe(len(request.transfers))
        return await self._serve("SubmitTransfers", lambda: self._submit(request), context)

    async def ReviewTransfer(
        self, request: coordinator_pb2.CoordinatorReviewRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.Transfer:
        return await self._serve("ReviewTransfer", lambda: self._reviewed(request), context)

    async def _reviewed(self, request: coordinator_pb2.CoordinatorReviewRequest) -> types_pb2.Transfer:
        if len(request.actor) > limits.ACTOR_LENGTH_MAX:
            raise errors.invalid(errors.INVALID_ARGUMENT, f"actor is longer than {limits.ACTOR_LENGTH_MAX}")
        if not self._election.is_leader:
            raise errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "not the leader")
        return await self._review.review(request.transfer_id, request.approve, request.actor)

    async def _submit(
        self, request: coordinator_pb2.CoordinatorSubmitRequest
    ) -> coordinator_pb2.CoordinatorSubmitResponse:
        if not request.transfers:
            raise errors.invalid(errors.BATCH_EMPTY, "no transfers in the request")
        if len(request.transfers) > limits.BATCH_ITEMS_MAX:
            raise errors.BankError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors.BATCH_TOO_LARGE,
                f"at most {limits.BATCH_ITEMS_MAX} transfers per request",
            )
        if not self._election.is_leader:
            raise errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "not the leader")
        results: list[types_pb2.Transfer | None] = []
        valid: list[types_pb2.Transfer] = []
        for transfer in request.transfers:
            try:
                valid.append(_with_review(validate.check_transfer(transfer), transfer))
                results.append(None)
            except errors.BankError as error:
                results.append(decisions.rejected(transfer, error.code_value, error.reason, error.message))
        outcomes = iter(await self._twopc.submit(valid) if valid else [])
        merged = [r if r is not None else next(outcomes) for r in results]
        if valid and all(t.reason == errors.NOT_LEADER for t in merged):
            raise errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "deposed")
        return coordinator_pb2.CoordinatorSubmitResponse(transfers=merged)

    async def GetLeader(
        self, request: coordinator_pb2.GetLeaderRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.LeaderInfo:
        view = self._election.view()
        return coordinator_pb2.LeaderInfo(
            coordinator_id=self._election.coordinator_id,
            leader_id=view.leader_id,
            leader_address=view.leader_address,
            epoch=view.epoch,
            is_leader=view.is_leader,
        )


class CoordinatorApp:
    """Everything one coordinator process runs, started and stopped together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = grpc.aio.server(
            options=CHANNEL_OPTIONS,
            maximum_concurrent_rpcs=limits.CONCURRENT_RPCS_MAX,
            interceptors=service_auth.server_interceptors(config.cluster_secret),
        )
        port = self.server.add_insecure_port(config.listen)
        host = config.listen.rpartition(":")[0] or "127.0.0.1"
        self.address = f"{host}:{port}"
        self.metrics_address = metrics.start_for(config.listen, config.metrics_port)
        self._unregister_metrics: list[Callable[[], None]] = []
        self.directory = ShardDirectory(
            config.etcd,
            service_auth.channel_interceptors(config.cluster_secret, config.coordinator_id),
            frame_lane.Credentials(config.cluster_secret, config.coordinator_id),
        )
        extra = {"metrics_address": self.metrics_address} if self.metrics_address else None
        self.election = Election(config.etcd, config.coordinator_id, self.address, registration_extra=extra)
        self.shards = Shards(self.directory, self.election, Deadlines())
        self.twopc = TwoPhaseCommit(self.shards, self.election)
        self.recovery = Recovery(self.shards, self.election, config.prepare_timeout_ms)
        self.review = Review(self.shards, self.election)
        self.mover = Mover(config.etcd, self.directory, self.election, config.coordinator_id)
        self.health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> CoordinatorApp:
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            CoordinatorServicer(self.election, self.twopc, self.review), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        await self._set_health(False)
        if self.metrics_address:
            collector = metrics.MoveCollector(
                lambda: meta.connect(self.config.etcd),
                lambda: self.election.is_leader,
                lambda: time.time_ns() // 1_000_000,
            )
            self._unregister_metrics.append(metrics.register(collector))
        await self.server.start()
        self._tasks = [
            asyncio.create_task(self._start_directory(), name="directory"),
            asyncio.create_task(self.twopc.run(), name="twopc"),
            asyncio.create_task(self.recovery.run(), name="recovery"),
            asyncio.create_task(self._run_mover(), name="mover"),
            asyncio.create_task(self._watch_leadership(), name="leadership"),
        ]
        await asyncio.to_thread(self.election.start)
        log.info(
            "started",
            coordinator_id=self.config.coordinator_id,
            address=self.address,
            prepare_timeout_ms=self.config.prepare_timeout_ms,
        )
        return self

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop taking calls, let in-flight rounds end, then give up the lease
        (revoked, so a standby takes over at once instead of after the TTL)."""
        log.info("stopping", coordinator_id=self.config.coordinator_id)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self.twopc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self.election.stop)
        await self.directory.close()
        for unregister in self._unregister_metrics:
            unregister()
        log.info("stopped", coordinator_id=self.config.coordinator_id)

    async def _start_directory(self) -> None:
        """In the background: the slot map may not exist yet (the directory
        waits for it), and standing for election must not wait on that.

        We poll for the map ourselves first, in short cancellable steps: the
        directory's own wait is one long blocking call in a worker thread
        that would hold up a SIGTERM exit."""
        while not await asyncio.to_thread(self._slot_map_exists):
            await asyncio.sleep(meta.POLL_INTERVAL_S)
        await self.directory.start()
        log.info("directory_ready", shards=self.directory.shard_ids())

    async def _run_mover(self) -> None:
        """Moves need the directory (stubs to the nodes): wait until it is up."""
        while not self.directory.shard_ids():
            await asyncio.sleep(meta.POLL_INTERVAL_S)
        await self.mover.run()

    def _slot_map_exists(self) -> bool:
        try:
            client = meta.connect(self.config.etcd)
            try:
                return meta.read_slot_map(client) is not None
            finally:
                client.close()
        except Exception as exc:  # etcd not up yet: try again
            log.warning("slotmap_probe_failed", error=type(exc).__name__)
            return False

    async def _watch_leadership(self) -> None:
        leading = False
        while True:
            view = self.election.view()
            metrics.EPOCH.set(view.epoch)
            if view.is_leader != leading:
                leading = view.is_leader
                metrics.IS_LEADER.set(1 if leading else 0)
                metrics.LEADER_CHANGES.inc()
                log.info(
                    "leadership_changed",
                    is_leader=leading,
                    epoch=view.epoch,
                    leader_id=view.leader_id or None,
                )
                await self._set_health(leading)
                if leading:
                    self.recovery.kick()
            await asyncio.sleep(LEADERSHIP_CHECK_INTERVAL_S)

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    app = await CoordinatorApp(config).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await app.stop()
