"""The gateway's view of the cluster: node stubs are kept per registered
address (a stub builds a callable per method) and rebuilt when it moves."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest

from gateway.upstream import Cluster
from shardbank import errors
from shardbank.directory import UnknownShard


@dataclass
class FakeDirectory:
    addresses: dict[str, str]
    built: list[str] = field(default_factory=list)

    def address(self, shard_id: str) -> str | None:
        return self.addresses.get(shard_id)

    def stub(self, shard_id: str) -> object:
        if shard_id not in self.addresses:
            raise UnknownShard(shard_id)
        self.built.append(self.addresses[shard_id])
        return object()


def cluster_with(directory: FakeDirectory) -> Cluster:
    cluster = Cluster("127.0.0.1:1")  # nothing connects until start()
    cluster.directory = directory  # type: ignore[assignment]
    return cluster


def test_a_node_stub_is_kept_while_the_address_stays_and_rebuilt_when_it_moves() -> None:
    directory = FakeDirectory({"shard-1": "127.0.0.1:7001"})
    cluster = cluster_with(directory)
    first = cluster.node("shard-1")
    assert cluster.node("shard-1") is first
    assert directory.built == ["127.0.0.1:7001"]
    directory.addresses["shard-1"] = "127.0.0.1:7002"  # restarted elsewhere
    moved = cluster.node("shard-1")
    assert moved is not first
    assert cluster.node("shard-1") is moved
    assert directory.built == ["127.0.0.1:7001", "127.0.0.1:7002"]


def test_an_unregistered_shard_is_unavailable_even_after_a_stub_was_kept() -> None:
    directory = FakeDirectory({"shard-1": "127.0.0.1:7001"})
    cluster = cluster_with(directory)
    cluster.node("shard-1")
    del directory.addresses["shard-1"]  # its registration lapsed
    with pytest.raises(errors.BankError) as caught:
        cluster.node("shard-1")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == errors.SHARD_UNAVAILABLE
