"""`python -m ledger_node --shard-id shard-1 --listen 127.0.0.1:50061 --data-dir DIR --etcd 127.0.0.1:2379`

Runs one shard until SIGTERM/SIGINT, then stops gracefully and exits 0.
`--etcd ""` runs standalone: no registration, every slot owned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Iterator

import structlog

from ledger_node.server import create_server
from shardbank import logs, metrics, service_auth

log = structlog.get_logger("ledger_node")


@contextlib.contextmanager
def start_up_collector() -> Iterator[None]:
    """The cyclic garbage collector around a node's start-up: paused, then
    everything start-up made frozen (moved to the permanent generation).

    Loading keeps every object it makes (two tracked ones an account: the
    AccountState and its status-history list), so the collections its
    allocations trigger find nothing, yet each older-generation one walks
    every account loaded so far: a third of the load of 200k accounts. The
    accounts then live as long as the process, and every later full
    collection would walk them all (~0.4 s at 1M accounts, a pause of the
    event loop). Here, not in `Store.load`: `verify` and tests load shards
    too, and a library call must leave process-wide GC state as it found it.
    On a failed start-up nothing is frozen; the collector is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


# --frame-listen's default: the host of --listen, any free port.
FRAME_LISTEN_AUTO = "auto"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ledger_node", description="Run one shardbank ledger node."
    )
    parser.add_argument("--shard-id", default="shard-1", help="shard-N (default shard-1)")
    parser.add_argument("--listen", default="127.0.0.1:50061", help="host:port (default 127.0.0.1:50061)")
    parser.add_argument("--data-dir", default="var/shard-1", help="RocksDB directory (default var/shard-1)")
    parser.add_argument("--etcd", default="127.0.0.1:2379", help='etcd host:port; "" = standalone')
    parser.add_argument(
        "--frame-listen",
        default=FRAME_LISTEN_AUTO,
        help="host:port of the frame lane, the fast write path callers find in etcd "
        '(default: --listen\'s host, a free port; "" = off, callers use the gRPC stream)',
    )
    service_auth.add_secret_argument(parser)
    metrics.add_port_argument(parser)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    secret = service_auth.load_cluster_secret(args.cluster_secret_file, args.shard_id)
    with start_up_collector():
        node = await create_server(
            args.shard_id, args.listen, args.data_dir, args.etcd, cluster_secret=secret
        )
    if args.frame_listen == FRAME_LISTEN_AUTO:
        await node.bind_frames(f"{node.address.rpartition(':')[0]}:0")  # the gRPC host, as bound
    elif args.frame_listen:
        await node.bind_frames(args.frame_listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    node.metrics_address = metrics.start_for(args.listen, args.metrics_port)
    await node.start()
    await stop.wait()
    log.info("stopping", reason="signal")
    await node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("ledger_node", shard_id=args.shard_id)
    try:
        return asyncio.run(serve(args))
    except service_auth.SecretError as exc:
        log.error("cluster_secret_unusable", detail=str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
