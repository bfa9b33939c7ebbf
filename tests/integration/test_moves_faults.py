"""Slot moves survive kill -9 of the mover (the coordinator leader), of the
source and of the target, while transfers flow: every move ends COMPLETED or
rolled back, no transfer is lost or applied twice, every journal verifies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import shard_ops
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from coordinator import mover
from ledger_node import verify
from shardbank import meta, moves
from tests.integration import moves_support
from tests.integration.helpers import leader_id, open_on_shard
from tests.integration.moves_support import OPENING_BALANCE, Ledger

pytestmark = pytest.mark.integration

# A pause after each move step, so that a kill lands inside the move.
STEP_PAUSE_MS = 400
PHASE_WAIT_S = 30.0
MOVE_WAIT_S = 120.0
RESTART_AFTER_S = 1.0


@pytest.fixture
def slow_mover_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv(mover.STEP_PAUSE_ENV, str(STEP_PAUSE_MS))
    with moves_support.own_cluster(tmp_path / "cluster") as local:
        yield local


def _wait_phase(etcd: object, move_id: str, phases: set[str]) -> moves.Move:
    deadline = time.monotonic() + PHASE_WAIT_S
    while time.monotonic() < deadline:
        move = shard_ops.move_records.read_move(etcd, move_id)  # type: ignore[arg-type]
        assert move is not None
        if move.phase in phases or move.terminal:
            return move
        time.sleep(0.02)
    raise AssertionError(f"move {move_id} never reached {phases}")


def _kill_during(
    cluster: LocalCluster, slots: list[int], target: str, victim: str, phases: set[str]
) -> moves.Move:
    """Request a move, kill -9 `victim` ('leader' or a component) once the
    move reaches one of `phases`, restart it, and wait for the move's end."""
    etcd = meta.connect(cluster.etcd_endpoint)
    try:
        move = shard_ops.request_move(etcd, slots, target, actor="test")
        seen = _wait_phase(etcd, move.move_id, phases)
        assert not seen.terminal, seen
        name = leader_id(cluster) if victim == "leader" else victim
        cluster.kill(name)
        time.sleep(RESTART_AFTER_S)
        cluster.start_component(name)
        return shard_ops.wait(etcd, move.move_id, MOVE_WAIT_S)
    finally:
        etcd.close()


def test_moves_survive_kills_of_mover_source_and_target(slow_mover_cluster: LocalCluster) -> None:
    cluster = slow_mover_cluster
    bank = BankClient(cluster.gateway_address, token=cluster.admin_token)
    try:
        movers = [open_on_shard(bank, cluster, "shard-1").id for _ in range(3)]
        others = [open_on_shard(bank, cluster, "shard-2").id for _ in range(3)]
        accounts = movers + others
        for account_id in accounts:
            bank.deposit(account_id, OPENING_BALANCE, "CNY")
        slots = moves_support.slots_of(movers)
        ledger = Ledger()
        with moves_support.load(cluster, accounts, ledger):
            # The mover dies mid-copy: the new leader resumes from the target's checkpoint.
            first = _kill_during(cluster, slots, "shard-2", "leader", {moves.COPYING, moves.CATCHING_UP})
            assert first.phase == moves.COMPLETED, first
            # The source (now shard-2) dies while the slots are fenced or verified.
            second = _kill_during(cluster, slots, "shard-1", "shard-2", {moves.FENCED, moves.VERIFYING})
            assert second.phase in (moves.COMPLETED, moves.ROLLED_BACK, moves.FAILED), second
            # The target dies mid-copy.
            owner = "shard-1" if second.phase == moves.COMPLETED else "shard-2"
            target = "shard-2" if owner == "shard-1" else "shard-1"
            third = _kill_during(cluster, slots, target, target, {moves.COPYING, moves.CATCHING_UP})
            assert third.phase in (moves.COMPLETED, moves.ROLLED_BACK, moves.FAILED), third
        assert len(ledger.outcomes) > 10, "the load ran"
        moves_support.check_no_loss_no_double(bank, ledger, accounts)
    finally:
        bank.close_channel()
    cluster.stop()
    assert verify.main(["--data-dir", str(cluster.data_dir)]) == 0
