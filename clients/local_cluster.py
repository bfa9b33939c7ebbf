"""Start and stop a whole shardbank cluster as local processes on 127.0.0.1.

Used by `shardbank up`, the integration tests and the fault runner:

    cluster = LocalCluster("./var", shards=2, coordinators=2)
    cluster.start()                     # etcd -> slot map -> nodes -> coordinators -> gateway
    cluster.kill("shard-1")             # SIGKILL by PID
    cluster.start_component("shard-1")  # same command line, waits until healthy
    cluster.stop()                      # SIGTERM every child, SIGKILL after a bound

Components are named `etcd`, `shard-1..N`, `coord-1..M`, `gw-1`. Each
child's stdout and stderr go to `DATA/logs/<name>.log` (appended, so a
restart keeps the history). Every wait is bounded; a child that exits while
being waited for fails the start with the tail of its log. `DATA/cluster.json`
records what runs (see `clients.cluster_state`), for `shardbank status`.

Calls between the components are signed (`shardbank.service_auth`): the first
`start()` writes a cluster secret to `DATA/cluster.secret` (mode 0600, reused
on restart) and every node, coordinator and gateway gets
`--cluster-secret-file` (`authenticate_services=False`: none, auth off). Tests
that call a node directly sign with `cluster.cluster_secret`. Beside it goes
`DATA/reader.secret`, the read-only key the reports use (mode 0600).

`start()` also makes sure an admin API key exists — written straight into
etcd, not through the gateway (nothing could authenticate the first call) —
and keeps its token in `DATA/admin.token` (mode 0600), reused on restart
while the key is valid: `cluster.admin_token`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from clients import added_shards, health, processes
from clients.cluster_state import ClusterState, ComponentRecord, own_argv, read_state, running, write_state
from clients.errors import ShardbankError
from shardbank import meta, service_auth

ETCD = "etcd"
LEDGER_NODE = "ledger_node"
COORDINATOR = "coordinator"
GATEWAY = "gateway"
KIND_ORDER = (ETCD, LEDGER_NODE, COORDINATOR, GATEWAY)

# Reasons of ClusterError (local to the launcher, never on the wire).
ETCD_NOT_FOUND = "ETCD_NOT_FOUND"
COMPONENT_FAILED = "COMPONENT_FAILED"
CLUSTER_RUNNING = "CLUSTER_RUNNING"
UNKNOWN_COMPONENT = "UNKNOWN_COMPONENT"
COMPONENT_RUNNING = "COMPONENT_RUNNING"

# The repository's risk rules, passed to the gateway unless a cluster names its own.
RISK_CONFIG_DEFAULT = str(Path(__file__).resolve().parents[1] / "config" / "risk.toml")
# Ports of `shardbank up` relative to base_port (the gateway's): nodes +10.., coordinators +20..
NODE_PORT_OFFSET = 10
COORDINATOR_PORT_OFFSET = 20
# Prometheus /metrics ports with a base port: gateway +30, nodes +40.., coordinators +50..
GATEWAY_METRICS_PORT_OFFSET = 30
NODE_METRICS_PORT_OFFSET = 40
COORDINATOR_METRICS_PORT_OFFSET = 50
# A node's frame lane (ledger_node/frame_server.py): a fixed port, so a
# restarted node comes back where its callers' firewall rules expect it.
NODE_FRAME_PORT_OFFSET = 80
# Prometheus file_sd targets, under the data dir (see `prometheus_targets`).
PROMETHEUS_TARGETS_FILE = "prometheus/targets.json"
# Each health probe's own deadline.
PROBE_TIMEOUT_S = 1.0
ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN_FILE = "admin.token"
NO_ADMIN_TOKEN = "NO_ADMIN_TOKEN"


class ClusterError(ShardbankError):
    """The local cluster could not do what was asked (the reason says why)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, reason, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason, self.message))


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    kind: str
    # host:port it serves (etcd: its client endpoint).
    address: str
    argv: tuple[str, ...]
    # host:port of its Prometheus /metrics ("" for etcd or when metrics are off).
    metrics_address: str = ""


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    kind: str
    address: str
    pid: int | None
    alive: bool
    log: Path


class LocalCluster:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        shards: int = 2,
        coordinators: int = 2,
        base_port: int | None = None,
        etcd_port: int | None = None,
        gateway_port: int | None = None,
        http_port: int | None = None,
        python: str = sys.executable,
        gateway: bool = True,
        etcd_binary: str = "etcd",
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        authenticate_services: bool = True,
        metrics: bool = True,
        gateway_args: Sequence[str] = (),
        risk_config: str | None = None,
    ) -> None:
        """`base_port=None`: every port not given is a free one (tests). With a
        base port: gateway base, nodes base+10+i, coordinators base+20+i, and
        their /metrics at base+30 (gateway), base+40+i, base+50+i (`metrics=False`: none).
        `shards=0`, `coordinators=0`, `gateway=False` leave those out (etcd alone).
        `risk_config`: the gateway's risk rules file (None: the repository's
        config/risk.toml; "": risk check off)."""
        if shards < 0 or coordinators < 0:
            raise ValueError("shards and coordinators must be >= 0")
        if base_port is not None and shards > COORDINATOR_PORT_OFFSET - NODE_PORT_OFFSET:
            raise ValueError(f"with a base port at most {COORDINATOR_PORT_OFFSET - NODE_PORT_OFFSET} shards")
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = self.data_dir / "logs"
        self.shards = shards
        self.coordinators = coordinators
        self.python = python
        self.etcd_binary = shutil.which(etcd_binary) or etcd_binary
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.authenticate_services = authenticate_services
        # Extra flags for the gateway (e.g. --review-test-rule in tests).
        self.gateway_args = tuple(gateway_args)
        self.risk_config = risk_config
        self.secret_file = self.data_dir / service_auth.SECRET_FILE_NAME
        self.reader_file = self.data_dir / service_auth.READER_SECRET_FILE_NAME
        self.metrics = metrics
        spare = iter(processes.free_ports(4 + 2 * (shards + coordinators + 1) + shards))
        # An explicit etcd port takes the next one for peers (2379/2380), as etcd's defaults do.
        peer_port = etcd_port + 1 if etcd_port is not None else next(spare)
        etcd_port = etcd_port if etcd_port is not None else next(spare)
        if gateway_port is None:
            gateway_port = base_port if base_port is not None else next(spare)
        self.etcd_endpoint = f"127.0.0.1:{etcd_port}"
        self.gateway_address = f"127.0.0.1:{gateway_port}" if gateway else ""
        http_port = http_port if http_port is not None else next(spare)
        self.http_address = f"127.0.0.1:{http_port}" if gateway else ""

        def port(offset: int, index: int) -> int:
            return base_port + offset + index if base_port is not None else next(spare)

        def metrics_port(offset: int, index: int) -> int:
            return port(offset, index) if metrics else 0

        self._specs: dict[str, ComponentSpec] = {}
        self._add(ETCD, ETCD, self.etcd_endpoint, self._etcd_argv(etcd_port, peer_port))
        for i in range(1, shards + 1):
            self._add_python(
                f"shard-{i}", LEDGER_NODE, port(NODE_PORT_OFFSET, i - 1), "--shard-id",
                metrics_port(NODE_METRICS_PORT_OFFSET, i - 1), port(NODE_FRAME_PORT_OFFSET, i - 1),
            )  # fmt: skip
        # Shards added later (`shardbank shard add`) come back with the cluster.
        for added in added_shards.read(self.data_dir):
            if added.name not in self._specs:
                self._add(added.name, LEDGER_NODE, added.address, list(added.argv))
        for i in range(1, coordinators + 1):
            self._add_python(
                f"coord-{i}", COORDINATOR, port(COORDINATOR_PORT_OFFSET, i - 1), "--id",
                metrics_port(COORDINATOR_METRICS_PORT_OFFSET, i - 1),
            )  # fmt: skip
        if gateway:
            gateway_metrics_port = metrics_port(GATEWAY_METRICS_PORT_OFFSET, 0)
            self._add_python("gw-1", GATEWAY, gateway_port, "--id", gateway_metrics_port)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._admin_token: str | None = None
        self._atexit_registered = False
        # Guards launching, signalling and the state file: the fault runner kills
        # from its event loop while a restart runs in a worker thread. Never held
        # while waiting for a component to become healthy.
        self._lock = threading.RLock()

    # Specs.

    def _add(self, name: str, kind: str, address: str, argv: list[str], metrics_address: str = "") -> None:
        self._specs[name] = ComponentSpec(name, kind, address, tuple(argv), metrics_address)

    def _add_python(
        self, name: str, kind: str, port: int, id_flag: str, metrics_port: int = 0, frame_port: int = 0
    ) -> None:
        """`metrics_port` 0: no /metrics. `frame_port`: a node's frame lane."""
        address = f"127.0.0.1:{port}"
        argv = [self.python, "-m", kind, id_flag, name, "--listen", address]
        if kind == LEDGER_NODE:
            argv += ["--data-dir", str(self.data_dir / name)]
            if frame_port:
                argv += ["--frame-listen", f"127.0.0.1:{frame_port}"]
        argv += ["--etcd", self.etcd_endpoint]
        argv += ["--cluster-secret-file", str(self.secret_file) if self.authenticate_services else ""]
        if kind == GATEWAY:
            argv += ["--http-listen", self.http_address, *self.gateway_args]
            if self.risk_config == "":
                argv += ["--risk", "off"]
            else:
                argv += ["--risk-config", self.risk_config or RISK_CONFIG_DEFAULT]
        metrics_address = f"127.0.0.1:{metrics_port}" if metrics_port else ""
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port)]
        self._add(name, kind, address, argv, metrics_address)

    def _etcd_argv(self, client_port: int, peer_port: int) -> list[str]:
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        return [
            self.etcd_binary,
            "--name", "sb",
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"sb={peer_url}",
        ]  # fmt: skip

    # Introspection.

    def names(self, kind: str | None = None) -> list[str]:
        """Component names in start order, optionally of one kind."""
        return [spec.name for spec in self._ordered() if kind is None or spec.kind == kind]

    def spec(self, name: str) -> ComponentSpec:
        found = self._specs.get(name)
        if found is None:
            raise ClusterError(UNKNOWN_COMPONENT, f"no component {name!r}; known: {', '.join(self._specs)}")
        return found

    def address(self, name: str) -> str:
        return self.spec(name).address

    def frame_address(self, name: str) -> str:
        """A node's frame lane, as its command line asks for ("" if none given)."""
        argv = self.spec(name).argv
        return argv[argv.index("--frame-listen") + 1] if "--frame-listen" in argv else ""

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.spec(name).name}.log"

    def pid(self, name: str) -> int | None:
        process = self._processes.get(self.spec(name).name)
        return process.pid if process is not None and process.poll() is None else None

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def components(self) -> list[ComponentInfo]:
        return [
            ComponentInfo(spec.name, spec.kind, spec.address, self.pid(spec.name), self.alive(spec.name),
                          self.log_path(spec.name))
            for spec in self._ordered()
        ]  # fmt: skip

    @property
    def cluster_secret(self) -> bytes:
        """What signs calls to nodes and coordinators (b"": auth off). Made by `start()`."""
        if not self.authenticate_services:
            return b""
        return service_auth.read_secret(self.secret_file)

    @property
    def node_addresses(self) -> dict[str, str]:
        return {name: self.address(name) for name in self.names(LEDGER_NODE)}

    @property
    def coordinator_addresses(self) -> dict[str, str]:
        return {name: self.address(name) for name in self.names(COORDINATOR)}

    @property
    def metrics_addresses(self) -> dict[str, str]:
        """Component name -> host:port of its /metrics (components that serve one)."""
        return {spec.name: spec.metrics_address for spec in self._ordered() if spec.metrics_address}

    @property
    def prometheus_targets_path(self) -> Path:
        return self.data_dir / PROMETHEUS_TARGETS_FILE

    def prometheus_targets(self) -> list[dict[str, object]]:
        """Prometheus file_sd target groups: one per component, labelled with
        its kind (`job`) and name (`shard` for nodes too), so dashboards can
        group by them. Not `component`: the metrics carry that label
        themselves, and a target label of the same name would rename theirs."""
        groups: list[dict[str, object]] = []
        for spec in self._ordered():
            if not spec.metrics_address:
                continue
            labels = {"job": f"shardbank_{spec.kind}", "name": spec.name}
            if spec.kind == LEDGER_NODE:
                labels["shard"] = spec.name
            groups.append({"targets": [spec.metrics_address], "labels": labels})
        return groups

    def write_prometheus_targets(self) -> Path:
        """Write the file_sd targets JSON (atomically: Prometheus re-reads it on change)."""
        path = self.prometheus_targets_path
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.prometheus_targets(), indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)
        return path

    def _ordered(self) -> list[ComponentSpec]:
        return sorted(self._specs.values(), key=lambda spec: KIND_ORDER.index(spec.kind))

    # Lifecycle.

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start every component in order, each waited on; on any failure stop
        whatever was started and raise."""
        if shutil.which(self.etcd_binary) is None:
            raise ClusterError(
                ETCD_NOT_FOUND, f"{self.etcd_binary!r} is not on PATH; install etcd (./run does)"
            )
        self._check_not_running()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.authenticate_services:
            secret = service_auth.ensure_secret_file(self.secret_file)
            service_auth.ensure_reader_file(self.reader_file, secret)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._launch_group([ETCD])
            if self.metrics:
                self.write_prometheus_targets()
            self._init_slot_map()
            self._ensure_admin_token()
            for kind in (LEDGER_NODE, COORDINATOR, GATEWAY):
                self._launch_group(self.names(kind))
            self._wait_for_leader()
        except BaseException:
            self.stop()
            raise
        return self

    def start_component(self, name: str, wait: bool = True) -> int:
        """Start a stopped component again with the same command line; its PID."""
        spec = self.spec(name)
        self._launch(spec)
        self._write_state()
        if wait:
            self._wait_ready(spec)
        pid = self.pid(name)
        if pid is None:
            raise ClusterError(COMPONENT_FAILED, f"{name} exited at once; see {self.log_path(name)}")
        return pid

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Send `sig` to the component's PID; for SIGKILL/SIGTERM (with wait)
        wait until it has exited (bounded by stop_timeout_s)."""
        self.spec(name)
        with self._lock:
            process = self._processes.get(name)
            if process is None or process.poll() is not None:
                return
            process.send_signal(sig)
        if wait and sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(self.stop_timeout_s)
        self._write_state()

    def stop(self) -> None:
        """SIGTERM every child, gateway first and etcd last; SIGKILL what is
        still running after stop_timeout_s per group. Safe to call twice.
        Nodes that `shardbank shard add` started from another shell stop too."""
        try:
            for kind in reversed(KIND_ORDER):
                if kind == LEDGER_NODE:
                    added_shards.stop_recorded(self.data_dir)
                self._stop_group([n for n in self.names(kind) if n in self._processes])
        finally:
            if self._processes:
                self._write_state()
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False

    # Processes.

    def _launch(self, spec: ComponentSpec) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        with self._lock:
            if self.alive(spec.name):
                raise ClusterError(COMPONENT_RUNNING, f"{spec.name} is running (pid {self.pid(spec.name)})")
            self._processes[spec.name] = processes.spawn(spec.argv, self.log_path(spec.name), env)

    def _launch_group(self, names: list[str]) -> None:
        for name in names:
            self._launch(self.spec(name))
        self._write_state()
        for name in names:
            self._wait_ready(self.spec(name))

    def _stop_group(self, names: list[str]) -> None:
        processes.stop_all([self._processes[name] for name in names], self.stop_timeout_s)

    # Waiting.

    def _wait_ready(self, spec: ComponentSpec) -> None:
        """etcd: /health; gateway and nodes: SERVING; a coordinator: any answer
        (only the leader is SERVING)."""
        if spec.kind == ETCD:
            self._wait_until(spec, lambda: health.etcd_healthy(spec.address, PROBE_TIMEOUT_S), "healthy")
        elif spec.kind == COORDINATOR:
            self._wait_until(
                spec, lambda: health.grpc_health(spec.address, PROBE_TIMEOUT_S) is not None, "up"
            )
        else:
            self._wait_until(
                spec, lambda: health.grpc_health(spec.address, PROBE_TIMEOUT_S) == health.SERVING, "SERVING"
            )

    def _wait_until(self, spec: ComponentSpec, probe: Callable[[], bool], what: str) -> None:
        try:
            processes.wait_until(self._processes[spec.name], probe, self.start_timeout_s)
        except processes.ProcessExited as exc:
            tail = processes.log_tail(self.log_path(spec.name))
            raise ClusterError(COMPONENT_FAILED, f"{spec.name} {exc} {tail}") from None
        except processes.WaitTimedOut as exc:
            tail = processes.log_tail(self.log_path(spec.name))
            raise ClusterError(
                COMPONENT_FAILED, f"{spec.name} not {what} at {spec.address}: {exc} {tail}"
            ) from None

    def _wait_for_leader(self) -> None:
        """With coordinators, one of them must become leader (SERVING)."""
        names = self.names(COORDINATOR)
        if not names:
            return
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() <= deadline:
            if any(health.grpc_health(self.address(n), PROBE_TIMEOUT_S) == health.SERVING for n in names):
                return
            if not any(self.alive(n) for n in names):
                break
            time.sleep(processes.PROBE_INTERVAL_S)
        raise ClusterError(COMPONENT_FAILED, f"no coordinator became leader; logs in {self.log_dir}")

    # etcd and state.

    @property
    def admin_token(self) -> str:
        """The bootstrap admin API key's token (after `start()`)."""
        if self._admin_token is None:
            raise ClusterError(NO_ADMIN_TOKEN, "start the cluster first: the admin token is made by start()")
        return self._admin_token

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / ADMIN_TOKEN_FILE

    def _ensure_admin_token(self) -> None:
        """Reuse DATA/admin.token while its key is a valid admin key; else create one in etcd."""
        from gateway.auth import audit, keys, permissions

        client = meta.connect(self.etcd_endpoint)
        try:
            path = self.admin_token_path
            if path.exists():
                text = path.read_text().strip()
                key = keys.verify_token(client, text)
                if key is not None and key.role == permissions.ADMIN:
                    self._admin_token = text
                    return
            key, token = keys.create_key(client, permissions.ADMIN)
            audit.append(
                client, [audit.Entry("bootstrap", "local_cluster", "key.create", key.key_id, 0, "", "", "")]
            )
        finally:
            client.close()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token + "\n")
        os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
        self._admin_token = token

    def _init_slot_map(self) -> None:
        shard_ids = self.names(LEDGER_NODE)
        if not shard_ids:
            return
        client = meta.connect(self.etcd_endpoint)
        try:
            meta.init_slot_map(client, shard_ids)
        finally:
            client.close()

    def _check_not_running(self) -> None:
        state = read_state(self.data_dir)
        if state is None:
            return
        live = [c.name for c in state.components if running(c.pid, c.argv)]
        if live:
            raise ClusterError(
                CLUSTER_RUNNING,
                f"{', '.join(live)} of {self.data_dir} still running (started by pid "
                f"{state.supervisor_pid}; `shardbank down --data-dir {self.data_dir}` stops them)",
            )

    def _write_state(self) -> None:
        records = tuple(
            ComponentRecord(spec.name, spec.kind, spec.address, self.pid(spec.name), spec.argv,
                            str(self.log_path(spec.name)))
            for spec in self._ordered()
        )  # fmt: skip
        state = ClusterState(
            str(self.data_dir), os.getpid(), self.etcd_endpoint, self.gateway_address, records, own_argv()
        )
        with self._lock:
            write_state(self.data_dir, state)
