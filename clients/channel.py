"""Where and how the client connects: target, channel options, per-call deadline."""

from __future__ import annotations

import os

from shardbank import limits

DEFAULT_TARGET = "127.0.0.1:50051"
# Environment variable the CLI (and tools) read for the gateway address.
GATEWAY_ENV = "SHARDBANK_GATEWAY"

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
    # Reconnect fast after a gateway restart: gRPC's default backoff grows to 2 min,
    # far beyond a retry budget.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def default_target() -> str:
    return os.environ.get(GATEWAY_ENV) or DEFAULT_TARGET


# Environment variable holding the API key token (`sbk_...`) clients send.
TOKEN_ENV = "SHARDBANK_TOKEN"


def default_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the token (`authorization: Bearer <token>`); none without one."""
    return (("authorization", f"Bearer {token}"),) if token else ()
