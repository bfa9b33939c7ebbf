"""python -m gateway --id gw-1 --listen 127.0.0.1:50051 --etcd 127.0.0.1:2379"""

from __future__ import annotations

import argparse
import asyncio

from gateway.review.desk import REVIEW_DEADLINE_MS_DEFAULT, ReviewConfig
from gateway.review.testhook import parse_rule
from gateway.risk.config import DEFAULT_PATH as DEFAULT_RISK_CONFIG
from gateway.server import GatewayConfig, serve
from shardbank import logs, metrics, service_auth


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="shardbank public gRPC gateway")
    parser.add_argument("--id", default="gw-1", help="gateway id, registered at /shardbank/gateways/<id>")
    parser.add_argument(
        "--listen", default="127.0.0.1:50051", help="host:port to serve Bank on (port 0: any)"
    )
    parser.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client endpoint host:port")
    parser.add_argument(
        "--http-listen", default="", help="host:port for the HTTP/JSON API (e.g. 127.0.0.1:8080); empty: none"
    )
    parser.add_argument(
        "--review-deadline-ms",
        type=int,
        default=REVIEW_DEADLINE_MS_DEFAULT,
        help="how long a transfer held for review waits for an officer before it is rejected automatically",
    )
    parser.add_argument(
        "--freeze-on-severe",
        action="store_true",
        help="let the risk engine freeze an account when a severe rule fires (audited as risk-engine)",
    )
    parser.add_argument(
        "--review-test-rule",
        default="",
        help="TEST HOOK, staff only, default off: 'amount>=N' holds every transfer/payment of at "
        "least N minor units for review (without the risk engine)",
    )
    parser.add_argument(
        "--risk-config",
        default=DEFAULT_RISK_CONFIG,
        help="risk rules, TOML (reloaded on change and on SIGHUP); default: the repo's config/risk.toml",
    )
    parser.add_argument(
        "--risk", choices=("on", "off"), default="on", help="off: no risk check (benchmarks of the bare path)"
    )
    service_auth.add_secret_argument(parser)
    metrics.add_port_argument(parser)
    args = parser.parse_args(argv)
    try:
        review = ReviewConfig(args.review_deadline_ms, args.freeze_on_severe)
        test_rule = parse_rule(args.review_test_rule)
    except ValueError as exc:
        parser.error(str(exc))
    logs.configure("gateway", gateway_id=args.id)
    try:
        secret = service_auth.load_cluster_secret(args.cluster_secret_file, args.id)
    except service_auth.SecretError as exc:
        parser.error(str(exc))
    return GatewayConfig(
        gateway_id=args.id,
        listen=args.listen,
        etcd_endpoint=args.etcd,
        http_listen=args.http_listen,
        cluster_secret=secret,
        metrics_port=args.metrics_port,
        review=review,
        review_test_rule=test_rule,
        risk_config=args.risk_config if args.risk == "on" else "",
    )


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
