"""python -m gateway.http --listen 127.0.0.1:8080 --bank 127.0.0.1:50051

The HTTP/JSON edge on its own, in front of a running gateway: for
development. In production the gateway process starts it itself
(`--http-listen`), with `--bank` being its own gRPC port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import structlog

from gateway.http import limits
from gateway.http.app import create_app, start_http
from shardbank import logs

log = structlog.get_logger("gateway.http")


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.http", description="shardbank HTTP/JSON edge")
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", type=split_host_port, help="host:port to serve on"
    )
    parser.add_argument("--bank", default="127.0.0.1:50051", help="the gateway's gRPC host:port")
    parser.add_argument(
        "--call-deadline-s", type=float, default=limits.CALL_DEADLINE_S, help="deadline of each gRPC call"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    runner = await start_http(create_app(args.bank, call_deadline_s=args.call_deadline_s), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("http_stopped")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure("gateway-http")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
