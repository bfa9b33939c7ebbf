"""Real processes on 127.0.0.1: etcd, ledger nodes, coordinators, a gateway.

One cluster per module that asks for `cluster` (starting one costs seconds);
tests that kill processes start their own. Every process is stopped by PID
when the fixture ends, whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.client import BankClient
from clients.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir: Path = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(data_dir, shards=2, coordinators=2)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[BankClient]:
    bank = BankClient(cluster.gateway_address, token=cluster.admin_token)
    try:
        yield bank
    finally:
        bank.close_channel()
