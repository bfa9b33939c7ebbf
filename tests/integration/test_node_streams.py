"""kill -9 of a ledger node while the gateway's and the coordinator's write
streams to it carry transfers (`shardbank.node_stream`).

Callers whose message was on the broken stream learn nothing settled (never a
claim that it happened); they resend with the same transfer id until the
outcome is final. Afterwards every transfer moved money exactly once and the
books balance.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import messages
from clients.client import BankClient
from clients.cluster_state import running
from clients.local_cluster import LocalCluster
from shardbank.v1 import types_pb2
from tests.integration.helpers import open_on_shard

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SENDERS = 4
# Each sender sends until stopped (at most this many transfers).
TRANSFERS_PER_SENDER_MAX = 2000
KILL_AFTER_S = 1.5
DOWN_FOR_S = 1.0
RUN_AFTER_RESTART_S = 2.0
SETTLE_S_MAX = 20.0
FUNDING_MINOR = 1_000_000
FINAL = (types_pb2.TRANSFER_STATUS_COMMITTED, types_pb2.TRANSFER_STATUS_ABORTED)


@pytest.fixture()
def small_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # Risk check off: one payer sending fast would be held for review.
    with LocalCluster(tmp_path / "cluster", shards=2, coordinators=1, risk_config="") as local:
        yield local


def test_node_killed_mid_stream_resends_move_money_once(small_cluster: LocalCluster) -> None:
    setup = BankClient(small_cluster.gateway_address, token=small_cluster.admin_token)
    payer = open_on_shard(setup, small_cluster, "shard-1")
    local_payee = open_on_shard(setup, small_cluster, "shard-1")
    remote_payee = open_on_shard(setup, small_cluster, "shard-2")
    setup.deposit(payer.id, FUNDING_MINOR, "CNY")
    # Every other transfer crosses shards: both the gateway's stream and the
    # coordinator's (2PC legs) to shard-1 are cut by the kill.
    every: list[tuple[str, int, int]] = []
    outcomes: dict[str, types_pb2.Transfer] = {}
    settled_at: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def send_until_stopped(sender: int) -> None:
        bank = BankClient(small_cluster.gateway_address, deadline_s=2.0, token=small_cluster.admin_token)
        try:
            for n in range(TRANSFERS_PER_SENDER_MAX):
                if stop.is_set():
                    return
                step = (
                    str(uuid.uuid4()),
                    local_payee.id if n % 2 else remote_payee.id,
                    sender * 1000 + n + 1,
                )
                with lock:
                    every.append(step)
                item = messages.transfer("transfer", payer.id, step[1], step[2], "CNY", step[0], "")
                give_up_at = time.monotonic() + SETTLE_S_MAX
                while time.monotonic() < give_up_at:  # the same id until the outcome is final
                    try:
                        result = bank.submit_transfers([item])[0]
                    except Exception:
                        result = None
                    if result is not None and result.status in FINAL:
                        with lock:
                            outcomes[step[0]] = result
                            settled_at.append(time.monotonic())
                        break
                    time.sleep(0.05)
        finally:
            bank.close_channel()

    threads = [threading.Thread(target=send_until_stopped, args=(i,)) for i in range(SENDERS)]
    for thread in threads:
        thread.start()
    time.sleep(KILL_AFTER_S)
    killed_at = time.monotonic()
    small_cluster.kill("shard-1")
    time.sleep(DOWN_FOR_S)
    small_cluster.start_component("shard-1")
    restarted_at = time.monotonic()
    time.sleep(RUN_AFTER_RESTART_S)
    stop.set()
    for thread in threads:
        thread.join(timeout=SETTLE_S_MAX * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert any(t < killed_at for t in settled_at), "nothing settled before the kill"
    assert any(t > restarted_at for t in settled_at), "the streams did not recover after the restart"

    assert len(outcomes) == len(every), "a transfer never reached a final outcome"
    committed = {tid for tid, t in outcomes.items() if t.status == types_pb2.TRANSFER_STATUS_COMMITTED}
    for transfer_id, _, _ in every:  # the answer given is the one recorded
        assert setup.get_transfer(transfer_id).status == outcomes[transfer_id].status
    moved_local = sum(a for tid, p, a in every if tid in committed and p == local_payee.id)
    moved_remote = sum(a for tid, p, a in every if tid in committed and p == remote_payee.id)
    assert setup.get_account(local_payee.id).balance == moved_local
    assert setup.get_account(remote_payee.id).balance == moved_remote
    assert setup.get_account(payer.id).balance == FUNDING_MINOR - moved_local - moved_remote
    history = setup.history(payer.id, page_size=1000)
    debited = [e.transfer.id for e in history.entries if e.balance_delta < 0]
    assert sorted(debited) == sorted(committed), "a transfer is missing or applied twice"
    setup.close_channel()
    # The writes went on the frame lane, before the kill and after the restart
    # (the gateway's and the coordinator's connections each time); nobody
    # fell back to a gRPC WriteStream.
    lines = small_cluster.log_path("shard-1").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert events.count("serving") == 2
    assert events.count("frame_lane_opened") >= 4
    assert "write_stream_opened" not in events


CALLER_KILLS = 15


@pytest.mark.parametrize("transport", ["grpc", "frames"])
def test_node_survives_callers_killed_mid_stream(tmp_path: Path, transport: str) -> None:
    """A caller (gateway, coordinator) killed -9 while its write streams carry
    messages must not take the node down with it. It did: the stream handler's
    `finally` read `context.peer()` after grpc had freed the call, a segfault
    in cygrpc that killed both nodes in a chaos run when a leader was killed.
    The frame lane's answers outlive their connection the same way."""
    with LocalCluster(
        tmp_path / "node", shards=1, coordinators=0, gateway=False, authenticate_services=False, metrics=False
    ) as node:
        pid = node.pid("shard-1")
        for kill in range(CALLER_KILLS):
            lane = [node.frame_address("shard-1")] if transport == "frames" else []
            caller = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.stream_client", node.address("shard-1"), *lane],
                stdout=subprocess.PIPE,
                cwd=ROOT,
            )
            try:
                assert caller.stdout is not None and caller.stdout.readline().strip() == b"ready"
                time.sleep(random.uniform(0.05, 0.3))  # messages in flight on every stream
            finally:
                caller.kill()
                caller.wait()
            time.sleep(0.1)
            assert running(pid), f"the node died when its caller was killed (kill {kill + 1})"
        assert node.pid("shard-1") == pid
