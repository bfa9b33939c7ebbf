"""Shared steps of the slot-move tests: a transfer load that remembers every
outcome, and the checks that no transfer was lost or applied twice."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from clients import messages, shard_ops
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import errors, meta, move_records
from shardbank.moves import Move
from shardbank.slots import slot_of
from shardbank.v1 import types_pb2

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
OPENING_BALANCE = 1_000_000
# A resend of an unknown outcome: the same id until the cluster answers.
RESEND_ATTEMPTS_MAX = 20
# Bound on waiting for recovery to end legs left prepared (liveness, not speed).
SETTLE_WAIT_S = 30.0


@dataclass
class Ledger:
    """What the clients saw: each transfer's body and its final outcome."""

    bodies: dict[str, types_pb2.Transfer] = field(default_factory=dict)
    outcomes: dict[str, types_pb2.Transfer] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    # Longest time one transfer took from first send to a final answer.
    stall_s_max: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def settle(client: BankClient, transfer: types_pb2.Transfer) -> types_pb2.Transfer | None:
    """Send until a final outcome (COMMITTED/ABORTED/REJECTED), same id; None if never."""
    for _ in range(RESEND_ATTEMPTS_MAX):
        try:
            (outcome,) = client.submit_transfers([transfer])
        except Exception:
            time.sleep(0.1)
            continue
        if outcome.code == UNAVAILABLE or outcome.status == types_pb2.TRANSFER_STATUS_PENDING:
            time.sleep(0.1)
            continue
        if outcome.reason == errors.SLOT_MOVED and outcome.status == types_pb2.TRANSFER_STATUS_REJECTED:
            # Nothing recorded; the slot map was changing (ABORTED: retry higher up).
            time.sleep(0.1)
            continue
        return outcome
    return None


def run_load(
    client: BankClient, accounts: list[int], ledger: Ledger, stop: threading.Event, seed: int
) -> None:
    """Random transfers among `accounts` until `stop`; every outcome recorded."""
    rng = random.Random(seed)
    while not stop.is_set():
        debit, credit = rng.sample(accounts, 2)
        transfer = messages.transfer(
            "transfer", debit, credit, rng.randint(1, 5_000), "CNY", str(uuid.uuid4()), ""
        )
        started = time.monotonic()
        outcome = settle(client, transfer)
        took = time.monotonic() - started
        with ledger.lock:
            ledger.bodies[transfer.id] = transfer
            ledger.stall_s_max = max(ledger.stall_s_max, took)
            if outcome is None:
                ledger.unknown.add(transfer.id)
            else:
                ledger.outcomes[transfer.id] = outcome


@contextmanager
def load(cluster: LocalCluster, accounts: list[int], ledger: Ledger, clients: int = 3) -> Iterator[None]:
    """Run `clients` load threads while the block runs."""
    stop = threading.Event()
    banks = [BankClient(cluster.gateway_address, token=cluster.admin_token) for _ in range(clients)]
    threads = [
        threading.Thread(target=run_load, args=(bank, accounts, ledger, stop, seed), daemon=True)
        for seed, bank in enumerate(banks)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        for bank in banks:
            bank.close_channel()


def expected_balances(ledger: Ledger, accounts: list[int], client: BankClient) -> dict[int, int]:
    """Opening balance + committed transfers, after asking about unknown ones."""
    for transfer_id in sorted(ledger.unknown):
        found = client.get_transfer(transfer_id)
        if found.status in (COMMITTED, ABORTED):
            ledger.outcomes[transfer_id] = found
    balances = dict.fromkeys(accounts, OPENING_BALANCE)
    for transfer_id, outcome in ledger.outcomes.items():
        if outcome.status == COMMITTED:
            body = ledger.bodies[transfer_id]
            balances[body.debit_account_id] -= body.amount
            balances[body.credit_account_id] += body.amount
    return balances


def check_no_loss_no_double(client: BankClient, ledger: Ledger, accounts: list[int]) -> None:
    """Balances = opening + committed; every outcome is what GetTransfer and a
    replay of the same id say; nothing held or pending."""
    expected = expected_balances(ledger, accounts, client)
    # Legs a client gave up on mid-move end by recovery (prepare timeout + a sweep).
    deadline = time.monotonic() + SETTLE_WAIT_S
    for account_id in accounts:
        account = client.get_account(account_id)
        while (account.held or account.pending_credit) and time.monotonic() < deadline:
            time.sleep(0.2)
            account = client.get_account(account_id)
        assert account.held == 0 and account.pending_credit == 0, f"account {account_id} holds money"
        assert account.balance == expected[account_id], f"account {account_id}"
    for transfer_id, outcome in ledger.outcomes.items():
        try:
            found = client.get_transfer(transfer_id)
        except Exception as exc:
            raise AssertionError(f"{transfer_id}: {outcome} not found ({exc})") from None
        assert found.status == outcome.status, (transfer_id, outcome, found)
        (replayed,) = client.submit_transfers([ledger.bodies[transfer_id]])
        assert replayed.status == outcome.status, (transfer_id, outcome, replayed)
        assert replayed.reason == outcome.reason, transfer_id


def move_and_wait(cluster: LocalCluster, slots: list[int], target: str, timeout_s: float = 90.0) -> Move:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        move = shard_ops.request_move(client, slots, target, actor="test")
        return shard_ops.wait(client, move.move_id, timeout_s)
    finally:
        client.close()


def read_move(cluster: LocalCluster, move_id: str) -> Move | None:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        return move_records.read_move(client, move_id)
    finally:
        client.close()


def slots_of(accounts: list[int]) -> list[int]:
    return sorted({slot_of(a) for a in accounts})


@contextmanager
def own_cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """A cluster of a test's own (2 shards, 2 coordinators), stopped at the
    end. The risk check is off: the load loops pay the same few accounts
    hundreds of times a minute, which the velocity rules would hold for
    review (moving review holds is tested in test_review.py)."""
    local = LocalCluster(data_dir, shards=2, coordinators=2, risk_config="")
    try:
        local.start()
        yield local
    finally:
        local.stop()
