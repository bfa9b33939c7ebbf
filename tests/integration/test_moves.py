"""Online slot moves (docs/moves.md) on real processes: a move while single-
and cross-shard transfers flow, a rollback, a refused request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from clients import messages, shard_ops
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from ledger_node import verify
from shardbank import errors, meta, moves
from shardbank.slots import slot_of
from tests.integration import moves_support
from tests.integration.helpers import open_on_shard, slot_map
from tests.integration.moves_support import COMMITTED, OPENING_BALANCE, Ledger

pytestmark = pytest.mark.integration

# Seconds of load before and after a move starts: enough for transfers to
# cross the move's every phase, short enough for CI.
LOAD_BEFORE_S = 1.0
MOVE_WAIT_S = 90.0


@pytest.fixture(scope="module")
def moving_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with moves_support.own_cluster(tmp_path_factory.mktemp("moving")) as local:
        yield local


@pytest.fixture(scope="module")
def bank(moving_cluster: LocalCluster) -> Iterator[BankClient]:
    client = BankClient(moving_cluster.gateway_address, token=moving_cluster.admin_token)
    try:
        yield client
    finally:
        client.close_channel()


def _funded(bank: BankClient, cluster: LocalCluster, shard_id: str, count: int) -> list[int]:
    opened = [open_on_shard(bank, cluster, shard_id).id for _ in range(count)]
    for account_id in opened:
        bank.deposit(account_id, OPENING_BALANCE, "CNY")
    return opened


def test_move_under_load_loses_and_doubles_nothing(bank: BankClient, moving_cluster: LocalCluster) -> None:
    movers = _funded(bank, moving_cluster, "shard-1", 4)
    stayers = _funded(bank, moving_cluster, "shard-1", 2)
    others = _funded(bank, moving_cluster, "shard-2", 3)
    moving_slots = moves_support.slots_of(movers)
    stayers = [a for a in stayers if slot_of(a) not in moving_slots]
    accounts = movers + stayers + others
    # An old transfer whose record moves: its replay after the move must give
    # its original outcome, not run again.
    old_id = str(uuid.uuid4())
    old_body = messages.transfer("transfer", movers[0], others[0], 700, "CNY", old_id, "")
    ledger = Ledger()
    (old,) = bank.submit_transfers([old_body])
    assert old.status == COMMITTED
    ledger.bodies[old_id], ledger.outcomes[old_id] = old_body, old
    history_before = len(bank.history(movers[0], page_size=1000).entries)

    with moves_support.load(moving_cluster, accounts, ledger):
        time.sleep(LOAD_BEFORE_S)
        move = moves_support.move_and_wait(moving_cluster, moving_slots, "shard-2", MOVE_WAIT_S)
        time.sleep(LOAD_BEFORE_S)
    assert move.phase == moves.COMPLETED, move
    assert move.accounts_copied >= len(movers)
    assert all(slot_map(moving_cluster).owners[s] == "shard-2" for s in moving_slots)
    assert len(ledger.outcomes) > 10, "the load ran"

    # The old transfer: found, and its replay is its first outcome (no second debit).
    before = bank.get_account(movers[0]).balance
    again = bank.transfer(movers[0], others[0], 700, "CNY", transfer_id=old_id)
    assert again.status == COMMITTED
    assert bank.get_account(movers[0]).balance == before
    assert bank.get_transfer(old_id).status == COMMITTED
    # History moved with the account, in order, newest first.
    entries = bank.history(movers[0], page_size=1000).entries
    assert len(entries) >= history_before
    seqs = [e.journal_seq for e in entries]
    assert seqs == sorted(seqs, reverse=True)
    moves_support.check_no_loss_no_double(bank, ledger, accounts)
    # Deposits keep working on the moved account (now against shard-2's cash).
    assert bank.deposit(movers[1], 5, "CNY").status == COMMITTED


def test_rollback_before_flip_restores_everything(bank: BankClient, moving_cluster: LocalCluster) -> None:
    accounts = _funded(bank, moving_cluster, "shard-1", 3)
    slots = moves_support.slots_of(accounts)
    before = {a: bank.get_account(a).balance for a in accounts}
    client = meta.connect(moving_cluster.etcd_endpoint)
    try:
        move = shard_ops.request_move(client, slots, "shard-2", actor="test")
        shard_ops.request_rollback(client, move.move_id, actor="test")
        done = shard_ops.wait(client, move.move_id, MOVE_WAIT_S)
    finally:
        client.close()
    assert done.phase == moves.ROLLED_BACK, done
    assert all(slot_map(moving_cluster).owners[s] == "shard-1" for s in slots)
    for account_id in accounts:
        assert bank.get_account(account_id).balance == before[account_id]
        assert bank.deposit(account_id, 1, "CNY").status == COMMITTED


def test_unsafe_requests_are_refused(moving_cluster: LocalCluster) -> None:
    client = meta.connect(moving_cluster.etcd_endpoint)
    try:
        owned = slot_map(moving_cluster).slots_of("shard-1")
        cases = [
            (owned[:2], "shard-9", moves.TARGET_DOWN),
            (owned[:2], "shard-1", moves.SAME_SHARD),
            (owned, "shard-2", moves.SHARD_WOULD_BE_EMPTY),
            ([owned[0], slot_map(moving_cluster).slots_of("shard-2")[0]], "shard-2", moves.SLOTS_NOT_OWNED),
        ]
        for slots, target, reason in cases:
            with pytest.raises(errors.BankError) as refused:
                shard_ops.request_move(client, slots, target, actor="test")
            assert refused.value.reason == reason
        # Nothing was stored for a refused request.
        assert shard_ops.cluster_view(client).active == ()
    finally:
        client.close()


def test_every_journal_verifies_after_the_moves(moving_cluster: LocalCluster) -> None:
    moving_cluster.stop()
    assert verify.main(["--data-dir", str(moving_cluster.data_dir)]) == 0
    moving_cluster.start()
