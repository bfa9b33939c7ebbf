"""`python -m coordinator --id coord-1 --listen 127.0.0.1:50071 --etcd 127.0.0.1:2379`"""

from __future__ import annotations

import argparse
import asyncio

from coordinator.recovery import PREPARE_TIMEOUT_MS_DEFAULT
from coordinator.server import Config, serve
from shardbank import logs, metrics, service_auth


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="coordinator", description="shardbank 2PC coordinator")
    parser.add_argument("--id", default="coord-1", help="coordinator id (unique in the cluster)")
    parser.add_argument("--listen", default="127.0.0.1:50071", help="host:port to serve on (port 0: any)")
    parser.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client endpoint host:port")
    parser.add_argument(
        "--prepare-timeout-ms",
        type=int,
        default=PREPARE_TIMEOUT_MS_DEFAULT,
        help="recovery presumes a transfer prepared this long ago abandoned and aborts it",
    )
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default: info)")
    service_auth.add_secret_argument(parser)
    metrics.add_port_argument(parser)
    args = parser.parse_args(argv)
    if args.prepare_timeout_ms < 1:
        parser.error("--prepare-timeout-ms must be positive")
    logs.configure("coordinator", args.log_level, coordinator_id=args.id)
    try:
        secret = service_auth.load_cluster_secret(args.cluster_secret_file, args.id)
    except service_auth.SecretError as exc:
        parser.error(str(exc))
    return Config(
        args.id,
        args.listen,
        args.etcd,
        args.prepare_timeout_ms,
        cluster_secret=secret,
        metrics_port=args.metrics_port,
    )


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
