"""The gateway's view of the cluster: node stubs are kept per registered
address with their channel (a stub builds a callable per method) and rebuilt
when the node moves; a lapsed registration is UNAVAILABLE."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.upstream import Cluster
from shardbank import errors


def register(cluster: Cluster, shard_id: str, address: str | None) -> None:
    """What the directory's registry poll would have read from etcd (nothing connects)."""
    registry = cluster.directory._registry
    if address is None:
        registry.pop(shard_id, None)
    else:
        registry[shard_id] = {"address": address}


def test_a_node_stub_is_kept_while_the_address_stays_and_rebuilt_when_it_moves() -> None:
    async def main() -> None:
        cluster = Cluster("127.0.0.1:1")  # nothing connects until start()
        register(cluster, "shard-1", "127.0.0.1:7001")
        first = cluster.node("shard-1")
        assert cluster.node("shard-1") is first
        register(cluster, "shard-1", "127.0.0.1:7002")  # restarted elsewhere
        moved = cluster.node("shard-1")
        assert moved is not first
        assert cluster.node("shard-1") is moved
        await cluster.close()

    asyncio.run(main())


def test_an_unregistered_shard_is_unavailable_even_after_a_stub_was_kept() -> None:
    async def main() -> None:
        cluster = Cluster("127.0.0.1:1")
        register(cluster, "shard-1", "127.0.0.1:7001")
        cluster.node("shard-1")
        register(cluster, "shard-1", None)  # its registration lapsed
        with pytest.raises(errors.BankError) as caught:
            cluster.node("shard-1")
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert caught.value.reason == errors.SHARD_UNAVAILABLE
        await cluster.close()

    asyncio.run(main())
