"""The operator's flow on a running cluster: `shard add`, `rebalance` while
transfers flow, `shard moves`, `shard drain`, then every journal verifies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import added_shards, cli
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from ledger_node import verify
from shardbank import slots
from tests.integration import moves_support
from tests.integration.helpers import open_on_shard, slot_map
from tests.integration.moves_support import OPENING_BALANCE, Ledger

pytestmark = pytest.mark.integration


@pytest.fixture
def growing_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with moves_support.own_cluster(tmp_path / "cluster") as local:
        yield local


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit code and stdout (stderr appended after a NUL when there is any)."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + (f"\0{captured.err}" if captured.err else "")


def test_add_a_shard_rebalance_under_load_then_drain(
    growing_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = growing_cluster
    where = ("--data-dir", str(cluster.data_dir))
    bank = BankClient(cluster.gateway_address, token=cluster.admin_token)
    try:
        accounts = [open_on_shard(bank, cluster, s).id for s in ("shard-1", "shard-2") for _ in range(3)]
        for account_id in accounts:
            bank.deposit(account_id, OPENING_BALANCE, "CNY")
        code, out = _cli(capsys, "shard", "add", "--json", *where)
        assert code == 0, out
        added = json.loads(out)
        assert added["shard_id"] == "shard-3"
        assert [s.name for s in added_shards.read(cluster.data_dir)] == ["shard-3"]

        ledger = Ledger()
        with moves_support.load(cluster, accounts, ledger):
            code, out = _cli(capsys, "rebalance", "--json", *where)
        assert code == 0, out
        counts = {s: len(slot_map(cluster).slots_of(s)) for s in ("shard-1", "shard-2", "shard-3")}
        assert sorted(counts.values()) == [1365, 1365, 1366], counts
        assert sum(counts.values()) == slots.SLOT_COUNT
        moves_support.check_no_loss_no_double(bank, ledger, accounts)

        code, out = _cli(capsys, "shard", "moves", "--json", *where)
        assert code == 0
        assert {m["phase"] for m in json.loads(out)} == {"COMPLETED"}
        # A plain move may not empty a shard; a drain may.
        every = ",".join(str(s) for s in slot_map(cluster).slots_of("shard-3"))
        code, out = _cli(capsys, "shard", "move", "--slots", every, "--to", "shard-1", *where)
        assert code == 1
        assert "SHARD_WOULD_BE_EMPTY" in out
        code, out = _cli(capsys, "shard", "drain", "shard-3", "--json", *where)
        assert code == 0, out
        assert slot_map(cluster).slots_of("shard-3") == []
        moves_support.check_no_loss_no_double(bank, ledger, accounts)
    finally:
        bank.close_channel()
    cluster.stop()
    assert verify.main(["--data-dir", str(cluster.data_dir)]) == 0
