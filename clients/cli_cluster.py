"""CLI commands about the cluster itself: `up`, `down`, `status`, `verify`, `chaos`, `bench`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from clients import cluster_status, cluster_stop, render
from clients.cluster_state import ClusterState, read_state, running, state_path
from clients.errors import ShardbankError
from clients.local_cluster import COMPONENT_FAILED, ClusterError, LocalCluster
from loadtest import bench
from shardbank import errors as bank_errors
from shardbank.service_auth import SECRET_FILE_NAME, read_secret

# How often `shardbank up` looks for children that died.
WATCH_INTERVAL_S = 1.0
# Each etcd read or node call of `status` answers fast or counts as down.
STATUS_DEADLINE_S = 3.0
DEFAULT_ETCD = "127.0.0.1:2379"
# `down` on a directory no `up` ever recorded a cluster in.
NO_CLUSTER = "NO_CLUSTER"


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    up = commands.add_parser("up", parents=[common], help="run a local cluster in the foreground")
    up.add_argument("--data-dir", default="./var")
    up.add_argument("--shards", type=int, default=2)
    up.add_argument("--coordinators", type=int, default=2)
    up.add_argument(
        "--gateway-port",
        type=int,
        default=50051,
        help="nodes use +10.., coordinators +20.., node frame lanes +80..",
    )
    up.add_argument("--etcd-port", type=int, default=2379, help="peers use the next port")
    up.add_argument("--http-port", type=int, default=8080, help="the gateway's HTTP/JSON API")
    up.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra gateway flag, repeatable, e.g. --gateway-arg=--review-test-rule=amount>=100000",
    )
    up.set_defaults(handler=cmd_up)
    down = commands.add_parser(
        "down", parents=[common], help="stop a local cluster by its recorded PIDs (also one whose `up` died)"
    )
    down.add_argument("--data-dir", default="./var", help="where `shardbank up` keeps cluster.json")
    down.add_argument(
        "--grace-s",
        type=float,
        default=cluster_stop.GRACE_S_DEFAULT,
        help="seconds each kind of process gets after SIGTERM before SIGKILL",
    )
    down.set_defaults(handler=cmd_down)
    status = commands.add_parser(
        "status", parents=[common], help="etcd, shards, coordinators, gateways and slot moves, from etcd"
    )
    status.add_argument("--data-dir", default="./var", help="where `shardbank up` keeps cluster.json")
    status.add_argument(
        "--etcd",
        default="",
        help="etcd host:port (default: the one in DATA/cluster.json, else 127.0.0.1:2379)",
    )
    status.add_argument(
        "--cluster-secret-file",
        default="",
        help="signs the calls to the nodes (default: DATA/cluster.secret when it exists)",
    )
    status.add_argument(
        "--sample-s",
        type=float,
        default=cluster_status.SAMPLE_S_DEFAULT,
        help="seconds between the two node samples that give transfers/s (0: no rate)",
    )
    status.set_defaults(handler=cmd_status)
    verify = commands.add_parser("verify", parents=[common], help="check the journals of stopped shards")
    verify.add_argument("--data-dir", required=True)
    verify.set_defaults(handler=cmd_verify)
    chaos = commands.add_parser(
        "chaos", parents=[common], help="bank-invariant fault run: random transfers under kill -9"
    )
    chaos.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults")
    chaos.add_argument("--shards", type=int, default=3)
    chaos.add_argument("--coordinators", type=int, default=2)
    chaos.add_argument("--accounts", type=int, default=60)
    chaos.add_argument("--clients", type=int, default=8)
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--data-dir", default="", help="default: a fresh temporary directory")
    chaos.add_argument(
        "--moves", action="store_true", help="also move slots back and forth, killing sources and targets"
    )
    chaos.set_defaults(handler=cmd_chaos)
    bench.add_arguments(
        commands.add_parser("bench", parents=[common], help="transfers/s and latency vs PostgreSQL")
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def endpoints(cluster: LocalCluster) -> dict[str, Any]:
    return {
        "gateway": cluster.gateway_address,
        "http": f"http://{cluster.http_address}",
        "nodes": cluster.node_addresses,
        "coordinators": cluster.coordinator_addresses,
        "etcd": cluster.etcd_endpoint,
        "metrics": cluster.metrics_addresses,
        "prometheus_targets": str(cluster.prometheus_targets_path) if cluster.metrics else "",
        "data_dir": str(cluster.data_dir),
        "log_dir": str(cluster.log_dir),
    }


def _print_endpoints(cluster: LocalCluster, as_json: bool) -> None:
    found = endpoints(cluster)
    if as_json:
        print(json.dumps(found, indent=2), flush=True)
        return
    rows = [("gateway", found["gateway"]), ("http", found["http"])]
    rows += [(name, address) for name, address in found["nodes"].items()]
    rows += [(name, address) for name, address in found["coordinators"].items()]
    rows += [("etcd", found["etcd"]), ("data dir", found["data_dir"]), ("logs", found["log_dir"])]
    if found["prometheus_targets"]:
        rows.append(("metrics", f"{len(found['metrics'])} /metrics endpoints; file_sd targets: "
                                f"{found['prometheus_targets']}"))  # fmt: skip
    print(render.fields(rows), flush=True)
    print(f"shardbank is up; export SHARDBANK_GATEWAY={found['gateway']}; Ctrl-C stops it", flush=True)


def _watch(cluster: LocalCluster) -> None:
    """Until interrupted: report (once) each component that exits."""
    reported: set[str] = set()
    while True:
        time.sleep(WATCH_INTERVAL_S)
        for component in cluster.components():
            if not component.alive and component.name not in reported:
                reported.add(component.name)
                print(f"{component.name} exited; see {component.log}", file=sys.stderr, flush=True)
            elif component.alive:
                reported.discard(component.name)


def cmd_up(args: argparse.Namespace) -> int:
    if args.shards < 1 or args.coordinators < 1:
        raise ShardbankError(
            grpc.StatusCode.INVALID_ARGUMENT, bank_errors.INVALID_ARGUMENT, "need >= 1 of each"
        )
    cluster = LocalCluster(
        args.data_dir,
        shards=args.shards,
        coordinators=args.coordinators,
        base_port=args.gateway_port,
        etcd_port=args.etcd_port,
        gateway_port=args.gateway_port,
        http_port=args.http_port,
        gateway_args=args.gateway_arg,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        cluster.start()
        _print_endpoints(cluster, args.json)
        _watch(cluster)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
    finally:
        # A second Ctrl-C must not cut the bounded stop short and leave orphans.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    state = read_state(data_dir)
    if state is None:
        raise ClusterError(NO_CLUSTER, f"no cluster recorded in {data_dir} (no {state_path(data_dir)})")
    if args.grace_s < 0:
        raise ShardbankError(grpc.StatusCode.INVALID_ARGUMENT, bank_errors.INVALID_ARGUMENT, "--grace-s >= 0")
    stopped = cluster_stop.stop_cluster(state, data_dir, args.grace_s)
    left = cluster_stop.still_running(state, data_dir)
    if args.json:
        print(json.dumps({"stopped": [vars(s) for s in stopped], "still_running": left}, indent=2))
    else:
        print(render.table(["NAME", "PID", "STOPPED"], [[s.name, str(s.pid or "-"), s.how] for s in stopped]))
    if left:
        raise ClusterError(COMPONENT_FAILED, f"still running: {', '.join(left)}")
    return 0


def _components(state: ClusterState | None, data_dir: Path) -> list[dict[str, Any]]:
    """Each process `up` or `shard add` recorded, and whether it runs."""
    if state is None:
        return []
    return [
        {
            "name": c.name,
            "kind": c.kind,
            "address": c.address,
            "pid": c.pid,
            "state": "running" if running(c.pid, c.argv) else "stopped",
            "log": c.log,
        }
        for c in cluster_stop.recorded_components(state, data_dir)
    ]


def status_sources(args: argparse.Namespace) -> tuple[str, bytes]:
    """The etcd endpoint and cluster secret `status` uses: flags first, then
    what `shardbank up` left in the data dir, then etcd's default port."""
    data_dir = Path(args.data_dir)
    state = read_state(data_dir)
    endpoint = args.etcd or (state.etcd if state is not None else "") or DEFAULT_ETCD
    secret_path = Path(args.cluster_secret_file) if args.cluster_secret_file else data_dir / SECRET_FILE_NAME
    secret = b""
    if args.cluster_secret_file or secret_path.exists():
        try:
            secret = read_secret(secret_path)
        except (OSError, ValueError) as exc:
            raise ShardbankError(
                grpc.StatusCode.INVALID_ARGUMENT, bank_errors.INVALID_ARGUMENT, f"cluster secret: {exc}"
            ) from None
    return endpoint, secret


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when etcd answered (down shards or coordinators are shown, not
    raised), 1 when etcd could not be read."""
    if not 0 <= args.sample_s <= cluster_status.SAMPLE_S_MAX:
        raise ShardbankError(
            grpc.StatusCode.INVALID_ARGUMENT,
            bank_errors.INVALID_ARGUMENT,
            f"--sample-s must be 0..{cluster_status.SAMPLE_S_MAX:g}",
        )
    endpoint, secret = status_sources(args)
    report = cluster_status.collect(endpoint, secret, args.sample_s, min(args.deadline, STATUS_DEADLINE_S))
    report["components"] = _components(read_state(Path(args.data_dir)), Path(args.data_dir))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render.status(report))
        if report["components"]:
            print()
            rows = [
                [c["name"], c["kind"], c["address"], str(c["pid"] or "-"), c["state"]]
                for c in report["components"]
            ]
            print(render.table(["PROCESS", "KIND", "ADDRESS", "PID", "STATE"], rows))
    return 0 if report["ok"] else 1


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        from ledger_node import verify  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise ShardbankError(grpc.StatusCode.UNIMPLEMENTED, "VERIFY_UNAVAILABLE", str(exc)) from None
    return int(verify.main(["--data-dir", args.data_dir]))


def cmd_chaos(args: argparse.Namespace) -> int:
    """Run the fault runner on a fresh local cluster; exit 1 on any violation."""
    import tempfile
    from pathlib import Path

    from loadtest.chaos import ChaosConfig, run

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="shardbank-chaos-"))
    report = run(
        ChaosConfig(
            data_dir=data_dir,
            duration_s=args.duration,
            shards=args.shards,
            coordinators=args.coordinators,
            accounts=args.accounts,
            clients=args.clients,
            seed=args.seed,
            moves=args.moves,
        )
    )
    print(report.summary(), flush=True)
    print(f"report: {data_dir / 'chaos-report.json'}; logs: {data_dir / 'logs'}", flush=True)
    return 0 if report.ok else 1
