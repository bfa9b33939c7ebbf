"""Standard gRPC services on every component: health answers SERVING and
server reflection lists the services, so grpcurl can list and call the API."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.local_cluster import LocalCluster
from shardbank import meta

pytestmark = pytest.mark.integration

TIMEOUT_S = 5.0


def _services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT_S)
        return {s.name for r in responses for s in r.list_services_response.service}


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S).status)


def test_every_component_has_health_and_reflection(cluster: LocalCluster) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    gateway = _services(cluster.gateway_address)
    assert {"shardbank.v1.Bank", "shardbank.v1.Risk", "grpc.health.v1.Health"} <= gateway
    assert _health(cluster.gateway_address) == serving
    for address in cluster.node_addresses.values():
        assert {"shardbank.v1.LedgerNode", "grpc.health.v1.Health"} <= _services(address)
        assert _health(address) == serving
    client = meta.connect(cluster.etcd_endpoint)
    try:
        leader = meta.read_leader(client)
    finally:
        client.close()
    assert leader is not None
    for name, address in cluster.coordinator_addresses.items():
        assert {"shardbank.v1.Coordinator", "grpc.health.v1.Health"} <= _services(address)
        expected = serving if name == leader.coordinator_id else health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(address) == expected, name
