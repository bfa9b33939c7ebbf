"""Service tokens on a real cluster: nodes and coordinators refuse calls that
are not signed with the cluster secret, health stays open, and the cluster
(gateway -> node, gateway -> coordinator -> nodes) works with tokens on."""

from __future__ import annotations

import os
import stat
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import errors, service_auth
from shardbank.v1 import coordinator_pb2, coordinator_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2
from tests.integration.helpers import balance, open_on_shard

pytestmark = pytest.mark.integration

WRONG_SECRET = bytes(32)
CALL_TIMEOUT_S = 5.0


def _channels(address: str, cluster: LocalCluster) -> dict[str, grpc.Channel]:
    return {
        "plain": grpc.insecure_channel(address),
        "wrong secret": service_auth.signed_channel(address, WRONG_SECRET, "test"),
        "cluster secret": service_auth.signed_channel(address, cluster.cluster_secret, "test"),
    }


def _refused(call: grpc.UnaryUnaryMultiCallable, request: object) -> errors.BankError:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=CALL_TIMEOUT_S)
    return errors.from_rpc_error(refused.value)


def _healthy(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    status: int = answer.status
    return status


def test_the_secret_file_is_private(cluster: LocalCluster) -> None:
    assert stat.S_IMODE(os.stat(cluster.secret_file).st_mode) == 0o600
    assert len(cluster.cluster_secret) == service_auth.SECRET_BYTES


def test_a_node_needs_a_token_but_health_does_not(cluster: LocalCluster) -> None:
    channels = _channels(cluster.address("shard-1"), cluster)
    try:
        for name in ("plain", "wrong secret"):
            stub = ledger_pb2_grpc.LedgerNodeStub(channels[name])
            error = _refused(stub.GetNodeInfo, ledger_pb2.GetNodeInfoRequest())
            assert (error.code, error.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                errors.SERVICE_UNAUTHENTICATED,
            ), name
            # A write refused before it reaches the writer.
            error = _refused(stub.ListInDoubt, ledger_pb2.ListInDoubtRequest(older_than_ms=0, limit=1))
            assert error.code == grpc.StatusCode.UNAUTHENTICATED, name
            assert _healthy(channels[name]) == health_pb2.HealthCheckResponse.SERVING
        info = ledger_pb2_grpc.LedgerNodeStub(channels["cluster secret"]).GetNodeInfo(
            ledger_pb2.GetNodeInfoRequest(), timeout=CALL_TIMEOUT_S
        )
        assert info.shard_id == "shard-1"
    finally:
        for channel in channels.values():
            channel.close()


def test_the_reader_key_reads_a_node_but_cannot_write(cluster: LocalCluster) -> None:
    """DATA/reader.secret (what the reports use) opens the node's reads and
    nothing that writes, nor the coordinators."""
    assert stat.S_IMODE(os.stat(cluster.reader_file).st_mode) == 0o600
    reader = service_auth.read_secret(cluster.reader_file)
    assert reader == service_auth.reader_secret(cluster.cluster_secret) != cluster.cluster_secret
    with service_auth.signed_channel(cluster.address("shard-1"), reader, "report") as channel:
        stub = ledger_pb2_grpc.LedgerNodeStub(channel)
        info = stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=CALL_TIMEOUT_S)
        page = stub.ReadJournal(ledger_pb2.ReadJournalRequest(from_seq=1, limit=1), timeout=CALL_TIMEOUT_S)
        assert info.shard_id == "shard-1" and page.head_seq == info.journal_seq
        deposit = types_pb2.Transfer(id=str(uuid.uuid4()), kind=types_pb2.TRANSFER_KIND_DEPOSIT, amount=1)
        error = _refused(stub.ApplyTransfers, ledger_pb2.ApplyTransfersRequest(transfers=[deposit]))
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, errors.SERVICE_READ_ONLY)
        assert info.journal_seq == stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=5).journal_seq
    coordinator = cluster.names("coordinator")[0]
    with service_auth.signed_channel(cluster.address(coordinator), reader, "report") as channel:
        error = _refused(
            coordinator_pb2_grpc.CoordinatorStub(channel).GetLeader, coordinator_pb2.GetLeaderRequest()
        )
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, errors.SERVICE_READ_ONLY)


def test_a_coordinator_needs_a_token_but_health_does_not(cluster: LocalCluster) -> None:
    transfer = types_pb2.Transfer(id=str(uuid.uuid4()))
    for name in cluster.names("coordinator"):
        channels = _channels(cluster.address(name), cluster)
        try:
            for kind in ("plain", "wrong secret"):
                stub = coordinator_pb2_grpc.CoordinatorStub(channels[kind])
                error = _refused(stub.GetLeader, coordinator_pb2.GetLeaderRequest())
                assert (error.code, error.reason) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    errors.SERVICE_UNAUTHENTICATED,
                ), (name, kind)
                submit = coordinator_pb2.CoordinatorSubmitRequest(transfers=[transfer])
                assert _refused(stub.SubmitTransfers, submit).code == grpc.StatusCode.UNAUTHENTICATED
                assert _healthy(channels[kind]) in (
                    health_pb2.HealthCheckResponse.SERVING,
                    health_pb2.HealthCheckResponse.NOT_SERVING,  # a standby
                )
            leader = coordinator_pb2_grpc.CoordinatorStub(channels["cluster secret"]).GetLeader(
                coordinator_pb2.GetLeaderRequest(), timeout=CALL_TIMEOUT_S
            )
            assert leader.coordinator_id == name
        finally:
            for channel in channels.values():
                channel.close()


def test_the_cluster_works_with_tokens_on(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-2")
    client.deposit(alice.id, 5_000, "CNY")  # gateway -> node
    result = client.transfer(alice.id, bob.id, 1_200, "CNY")  # gateway -> coordinator -> nodes
    assert result.status == types_pb2.TRANSFER_STATUS_COMMITTED
    assert (balance(client, alice.id), balance(client, bob.id)) == (3_800, 1_200)
