"""Probes used to wait for processes: etcd's /health, gRPC's grpc.health.v1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def etcd_healthy(endpoint: str, timeout_s: float) -> bool:
    """True when etcd at host:port answers {"health": "true"}."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=timeout_s) as response:
            body = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return str(body.get("health")) == "true"


def grpc_health(address: str, timeout_s: float) -> int | None:
    """The server's overall ServingStatus, or None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return None
    status: int = response.status
    return status
