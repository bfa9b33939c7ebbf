"""The gateway process: a grpc.aio server of `Bank` + health + reflection,
registered in etcd under a lease. Every `Bank` call passes the
authentication interceptor (`gateway.auth`); health and reflection do not.
With `http_listen`, the HTTP/JSON edge serves in the same process and calls
the same servicers through the same interceptor in process
(`gateway.http.local.LocalChannel`), not over the gRPC port.

`create_gateway()` builds everything and binds the port (port 0 picks a free
one: tests use that); `Gateway.start()` serves, `Gateway.stop()` shuts down
cleanly; `serve()` is the process's main loop (SIGTERM/SIGINT -> graceful stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from gateway.auth.admin import AdminHandlers, AuthBankServicer
from gateway.auth.audit import AuditLog
from gateway.auth.guard import Auth
from gateway.auth.interceptor import AuthInterceptor
from gateway.auth.keys import KeyCache
from gateway.handlers import BankHandlers
from gateway.review.desk import ReviewConfig, ReviewDesk
from gateway.review.service import RiskHandlers, RiskServicer
from gateway.review.store import AlertStore
from gateway.review.testhook import ReviewTestRule
from gateway.risk.alerts import EtcdAlerts
from gateway.risk.gate import RiskGate
from gateway.risk.reload import ConfigHolder
from gateway.risk.review import DeskReview
from gateway.risk.state import ShardActivity
from gateway.upstream import Cluster
from shardbank import frame_lane, limits, meta, metrics, service_auth
from shardbank.v1 import bank_pb2, bank_pb2_grpc, risk_pb2, risk_pb2_grpc

if TYPE_CHECKING:
    from gateway.http.local import LocalChannel

log = structlog.get_logger("gateway.server")

SERVER_OPTIONS = [
    # A full batch (limits.BATCH_ITEMS_MAX transfers) fits with room to spare.
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
]
BANK_SERVICE = bank_pb2.DESCRIPTOR.services_by_name["Bank"].full_name
RISK_SERVICE = risk_pb2.DESCRIPTOR.services_by_name["Risk"].full_name
# Calls in flight get this long to finish at shutdown.
SHUTDOWN_GRACE_S = 5.0
# How often health follows the slot map (SERVING once there is one).
HEALTH_POLL_S = 0.5
# Net allocations of tracked objects between young-generation collections
# (CPython's default: 700). Each call allocates hundreds (coroutines, futures,
# dicts, grpc call objects), so the default collected every few calls: ~5% of
# the event loop under S3 (py-spy --native, gc_collect_main). Cycles are rare
# here; the older generations' ratios are left as they are.
GC_YOUNG_ALLOCATIONS = 20_000


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    listen: str
    etcd_endpoint: str
    # host:port of the HTTP/JSON API; empty: no HTTP.
    http_listen: str = ""
    # Signs calls to nodes and the coordinator (service_auth); b"": unsigned.
    cluster_secret: bytes = field(default=b"", repr=False)
    # Prometheus /metrics on this port, same host as `listen`; 0: off.
    metrics_port: int = 0
    # Review holds: deadline, automatic freeze (gateway.review.desk).
    review: ReviewConfig = field(default_factory=ReviewConfig)
    # Test/staff hook: hold transfers at or above an amount for review
    # without the risk engine (gateway.review.testhook); None: off.
    review_test_rule: ReviewTestRule | None = None
    # The risk rules (gateway/risk, TOML); empty: no risk check.
    risk_config: str = ""


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        server: grpc.aio.Server,
        port: int,
        cluster: Cluster,
        auth: Auth,
        desk: ReviewDesk,
        local: LocalChannel | None = None,
    ) -> None:
        """`local`: the HTTP edge's in-process channel (None without HTTP)."""
        self.config = config
        self._auth = auth
        self.desk = desk
        self.port = port
        host = config.listen.rpartition(":")[0] or "127.0.0.1"
        self.address = f"{host}:{port}"
        self._server = server
        self._cluster = cluster
        self._health = health_aio.HealthServicer()
        self._local = local
        for target in (server, local) if local is not None else (server,):
            health_pb2_grpc.add_HealthServicer_to_server(self._health, target)
        self._registration: meta.Registration | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._http: Any = None
        self.http_port = 0
        self.metrics_address = ""
        self.risk: RiskGate | None = None
        self._alerts: EtcdAlerts | None = None

    async def start(self) -> None:
        await self._set_health(self._cluster.has_slot_map())
        await self._server.start()
        if self.risk is not None:
            self.risk.holder.start()
        self._health_task = asyncio.create_task(self._follow_health())
        value = {"gateway_id": self.config.gateway_id, "address": self.address, "pid": os.getpid()}
        self.metrics_address = metrics.start_for(self.config.listen, self.config.metrics_port)
        if self.metrics_address:
            value["metrics_address"] = self.metrics_address
        key = meta.GATEWAYS + self.config.gateway_id
        if self._local is not None:
            from gateway.http import bound_port, create_app, start_http

            http_host, _, http_port = self.config.http_listen.rpartition(":")
            self._http = await start_http(create_app(self._local), http_host or "127.0.0.1", int(http_port))
            self.http_port = bound_port(self._http)
            value["http_address"] = f"{http_host or '127.0.0.1'}:{self.http_port}"
        self._registration = meta.Registration(self.config.etcd_endpoint, key, value).start()
        log.info(
            "gateway_started", gateway_id=self.config.gateway_id, address=self.address, http=self.http_port
        )

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        if self._registration is not None:
            self._registration.stop()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self._health.enter_graceful_shutdown()
        if self._http is not None:
            await self._http.cleanup()
        await self._server.stop(grace_s)
        if self.risk is not None:
            await self.risk.holder.stop()
        if self._alerts is not None:
            self._alerts.close()
        await self._auth.keys.close()
        self._auth.audit.close()
        self.desk.store.close()
        await self._cluster.close()
        log.info("gateway_stopped", gateway_id=self.config.gateway_id)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", BANK_SERVICE, RISK_SERVICE):
            await self._health.set(service, status)

    async def _follow_health(self) -> None:
        serving: bool | None = None
        while True:
            now = self._cluster.has_slot_map()
            if now != serving:
                await self._set_health(now)
                serving = now
            await asyncio.sleep(HEALTH_POLL_S)


async def create_gateway(config: GatewayConfig) -> Gateway:
    """Everything built and the port bound; nothing served until `start()`."""
    cluster = Cluster(
        config.etcd_endpoint,
        service_auth.channel_interceptors(config.cluster_secret, config.gateway_id),
        frame_lane.Credentials(config.cluster_secret, config.gateway_id),
    )
    await cluster.start()
    auth = Auth(KeyCache(config.etcd_endpoint), AuditLog(config.etcd_endpoint))
    await auth.keys.start()
    interceptor = AuthInterceptor(auth.keys)
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=limits.CONCURRENT_RPCS_MAX,
        interceptors=[interceptor],
    )
    # The HTTP edge's channel: the same interceptor object (so one rate-limit
    # bucket per key whichever way a caller comes) and the same servicers.
    local = _local_channel(interceptor) if config.http_listen else None
    desk = ReviewDesk(cluster, AlertStore(config.etcd_endpoint), config.review, auth.audit)
    risk, alert_sink = None, None
    if config.risk_config:
        alert_sink = EtcdAlerts(config.etcd_endpoint)
        holder = ConfigHolder(config.risk_config)
        freeze = desk.freeze_on_severe if config.review.freeze_on_severe else None
        risk = RiskGate(holder, ShardActivity(cluster), alert_sink, DeskReview(desk), freeze=freeze)
    else:
        log.warning("risk_check_off", gateway_id=config.gateway_id)
    handlers = BankHandlers(cluster, config.gateway_id, auth, desk, config.review_test_rule, risk)
    servicer = AuthBankServicer(handlers, AdminHandlers(config.etcd_endpoint, auth))
    risk_servicer = RiskServicer(RiskHandlers(desk, auth))
    for target in (server, local) if local is not None else (server,):
        bank_pb2_grpc.add_BankServicer_to_server(servicer, target)
        risk_pb2_grpc.add_RiskServicer_to_server(risk_servicer, target)
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (BANK_SERVICE, RISK_SERVICE, health_service, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(config.listen)
    if port == 0:
        await auth.keys.close()
        await cluster.close()
        raise OSError(f"cannot listen on {config.listen}")
    if config.review_test_rule is not None:
        log.warning("review_test_rule_on", amount_min=config.review_test_rule.amount_min)
    gateway = Gateway(config, server, port, cluster, auth, desk, local)
    gateway.risk, gateway._alerts = risk, alert_sink
    return gateway


def _local_channel(interceptor: AuthInterceptor) -> LocalChannel:
    """Imported here: aiohttp and the edge load only when HTTP is on."""
    from gateway.http.local import LocalChannel

    return LocalChannel([interceptor])


def tune_gc() -> None:
    """Fewer collections for a process that allocates per call, and what
    start-up built (grpc, protobuf, etcd clients: alive until exit) moved out
    of the collector's view so full collections no longer walk it."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_ALLOCATIONS, middle, old)
    gc.freeze()


async def serve(config: GatewayConfig) -> None:
    gateway = await create_gateway(config)
    await gateway.start()
    tune_gc()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("gateway_stopping", gateway_id=config.gateway_id)
    await gateway.stop()
