"""CLI commands about the cluster itself: `up`, `status`, `verify`."""

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
from google.protobuf import json_format

from clients import render
from clients.client import BankClient
from clients.cluster_state import ClusterState, read_state, running
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from loadtest import bench
from shardbank import errors as bank_errors

# How often `shardbank up` looks for children that died.
WATCH_INTERVAL_S = 1.0
# A status call should answer fast or say the gateway is down.
STATUS_DEADLINE_S = 3.0


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    up = commands.add_parser("up", parents=[common], help="run a local cluster in the foreground")
    up.add_argument("--data-dir", default="./var")
    up.add_argument("--shards", type=int, default=2)
    up.add_argument("--coordinators", type=int, default=2)
    up.add_argument("--gateway-port", type=int, default=50051, help="nodes use +10.., coordinators +20..")
    up.add_argument("--etcd-port", type=int, default=2379, help="peers use the next port")
    up.add_argument("--http-port", type=int, default=8080, help="the gateway's HTTP/JSON API")
    up.set_defaults(handler=cmd_up)
    status = commands.add_parser("status", parents=[common], help="shards, slot map, coordinator leader")
    status.add_argument("--data-dir", default="./var", help="where `shardbank up` keeps cluster.json")
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


def _components(state: ClusterState | None) -> list[dict[str, Any]]:
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
        for c in state.components
    ]


def cmd_status(args: argparse.Namespace) -> int:
    state = read_state(Path(args.data_dir))
    components = _components(state)
    error: ShardbankError | None = None
    info = None
    try:
        from clients.cli_auth import resolve_token

        token = resolve_token(args)
        with BankClient(args.gateway, deadline_s=min(args.deadline, STATUS_DEADLINE_S), token=token) as bank:
            info = bank.cluster_info()
    except ShardbankError as exc:
        error = exc
    if args.json:
        cluster = None if info is None else json_format.MessageToDict(info, preserving_proto_field_name=True)
        print(json.dumps({"gateway": args.gateway, "cluster": cluster, "components": components}, indent=2))
    else:
        if info is not None:
            print(render.cluster(info))
        if components:
            print()
            rows = [
                [c["name"], c["kind"], c["address"], str(c["pid"] or "-"), c["state"]] for c in components
            ]
            print(render.table(["COMPONENT", "KIND", "ADDRESS", "PID", "STATE"], rows))
    if error is not None:
        raise error
    return 0


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
