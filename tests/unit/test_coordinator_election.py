"""Leader election against a real etcd (started here on free 127.0.0.1 ports,
temp data dir, killed by PID), in-process and with real coordinator processes.

Every wait is bounded; a test that cannot get etcd running fails, it does not hang.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.election import Election
from shardbank import errors, meta
from shardbank.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parents[2]
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCD_START_S = 20.0
PROCESS_START_S = 20.0
TAKEOVER_S_MAX = 5.0

pytestmark = pytest.mark.skipif(not os.path.exists(ETCD), reason="etcd not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture
def etcd() -> Iterator[str]:
    client_port, peer_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="sb-etcd-")
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    process = subprocess.Popen(
        [
            ETCD,
            "--name",
            "sb",
            "--data-dir",
            data_dir,
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"sb={peer_url}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"127.0.0.1:{client_port}"

    def ready() -> bool:
        try:
            client = meta.connect(endpoint)
            try:
                client.status()
                return True
            finally:
                client.close()
        except Exception:
            return False

    try:
        assert wait_until(ready, ETCD_START_S, 0.2), "etcd did not start"
        yield endpoint
    finally:
        stop_process(process)
        shutil.rmtree(data_dir, ignore_errors=True)


# --- in-process -------------------------------------------------------------------


def leaders(*elections: Election) -> list[Election]:
    return [e for e in elections if e.is_leader]


def test_one_leader_and_graceful_handover(etcd: str) -> None:
    a = Election(etcd, "coord-a", "127.0.0.1:1").start()
    b = Election(etcd, "coord-b", "127.0.0.1:2").start()
    try:
        assert wait_until(lambda: len(leaders(a, b)) == 1, TAKEOVER_S_MAX)
        time.sleep(1.0)  # stays exactly one
        (first,) = leaders(a, b)
        other = b if first is a else a
        epoch = first.epoch
        assert epoch > 0
        assert wait_until(lambda: other.view().leader_id == first.coordinator_id, 2.0)
        assert other.view().epoch == epoch and not other.view().is_leader
        client = meta.connect(etcd)
        registered = meta.read_json_prefix(client, meta.COORDINATORS)
        assert set(registered) == {"coord-a", "coord-b"}
        leader = meta.read_leader(client)
        assert leader is not None and (leader.coordinator_id, leader.epoch) == (first.coordinator_id, epoch)

        started = time.monotonic()
        first.stop()  # revokes the lease: the standby takes over at once
        assert not first.is_leader
        assert wait_until(lambda: other.is_leader, TAKEOVER_S_MAX)
        assert time.monotonic() - started < 2.0
        assert other.epoch > epoch
        client.close()
    finally:
        a.stop()
        b.stop()


def test_step_down_is_immediate_and_next_term_has_higher_epoch(etcd: str) -> None:
    a = Election(etcd, "coord-a", "127.0.0.1:1").start()
    try:
        assert wait_until(lambda: a.is_leader, TAKEOVER_S_MAX)
        epoch = a.epoch
        a.step_down("test: a node said STALE_EPOCH")
        assert not a.is_leader and a.epoch == 0
        # Alone, it is elected again, in a new term.
        assert wait_until(lambda: a.is_leader, TAKEOVER_S_MAX)
        assert a.epoch > epoch
    finally:
        a.stop()


def test_leader_key_taken_over_means_step_down(etcd: str) -> None:
    """The key vanishes and someone else creates it: the old leader notices
    at its next poll and stops leading; the new term's epoch is higher."""
    a = Election(etcd, "coord-a", "127.0.0.1:1").start()
    client = meta.connect(etcd)
    try:
        assert wait_until(lambda: a.is_leader, TAKEOVER_S_MAX)
        epoch = a.epoch
        usurper = client.lease(30)
        client.delete(meta.LEADER)
        client.put(meta.LEADER, '{"coordinator_id": "coord-z", "address": "127.0.0.1:9"}', lease=usurper.id)
        assert wait_until(lambda: not a.is_leader, 1.0)
        assert wait_until(lambda: a.view().leader_id == "coord-z", 1.0)
        assert a.view().epoch > epoch
        usurper.revoke()
        assert wait_until(lambda: a.is_leader, TAKEOVER_S_MAX)
        assert a.epoch > epoch
    finally:
        a.stop()
        client.close()


def test_leadership_lapses_when_etcd_is_unreachable() -> None:
    """No etcd at all: never leader (the local deadline is never extended)."""
    lonely = Election(f"127.0.0.1:{free_port()}", "coord-x", "127.0.0.1:1").start()
    try:
        time.sleep(1.0)
        assert not lonely.is_leader and lonely.epoch == 0
    finally:
        lonely.stop()


# --- real coordinator processes -----------------------------------------------------


class Coordinator:
    def __init__(self, etcd: str, coordinator_id: str) -> None:
        self.id = coordinator_id
        self.address = f"127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "--id",
                coordinator_id,
                "--listen",
                self.address,
                "--etcd",
                etcd,
                "--prepare-timeout-ms",
                "500",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.channel = grpc.insecure_channel(self.address)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def leader_info(self) -> coordinator_pb2.LeaderInfo | None:
        try:
            info: coordinator_pb2.LeaderInfo = self.stub.GetLeader(
                coordinator_pb2.GetLeaderRequest(), timeout=1
            )
            return info
        except grpc.RpcError:
            return None

    def is_leader(self) -> bool:
        info = self.leader_info()
        return info is not None and info.is_leader

    def serving(self) -> int:
        answer = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return int(answer.status)

    def close(self) -> None:
        self.channel.close()
        stop_process(self.process)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def two_coordinators(etcd: str) -> Iterator[tuple[Coordinator, Coordinator]]:
    a, b = Coordinator(etcd, "coord-1"), Coordinator(etcd, "coord-2")
    try:
        assert wait_until(
            lambda: a.leader_info() is not None and b.leader_info() is not None, PROCESS_START_S, 0.2
        )
        assert wait_until(lambda: a.is_leader() != b.is_leader(), TAKEOVER_S_MAX, 0.1)
        yield a, b
    finally:
        a.close()
        b.close()


def split(pair: tuple[Coordinator, Coordinator]) -> tuple[Coordinator, Coordinator]:
    a, b = pair
    return (a, b) if a.is_leader() else (b, a)


def a_transfer() -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id="6f1c2a6e-8a43-4c6b-9a55-0c8d3f3e2b11",
        kind=types_pb2.TRANSFER_KIND_TRANSFER,
        debit_account_id=4000000000000002,
        credit_account_id=4000000000000010,
        amount=100,
        currency="CNY",
    )


def test_standby_answers_not_leader_with_the_leaders_address(
    two_coordinators: tuple[Coordinator, Coordinator],
) -> None:
    leader, standby = split(two_coordinators)
    assert wait_until(
        lambda: (standby.leader_info() or coordinator_pb2.LeaderInfo()).leader_address != "", 2.0
    )
    info = standby.leader_info()
    assert info is not None and not info.is_leader
    assert (info.leader_id, info.leader_address) == (leader.id, leader.address)
    with pytest.raises(grpc.RpcError) as caught:
        standby.stub.SubmitTransfers(
            coordinator_pb2.CoordinatorSubmitRequest(transfers=[a_transfer()]), timeout=2
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    parsed = errors.from_rpc_error(error)
    assert parsed.reason == errors.NOT_LEADER
    assert parsed.metadata["leader_address"] == leader.address
    trailing = dict(error.trailing_metadata() or ())
    assert trailing["leader-address"] == leader.address
    # ErrorInfo is a proper google.rpc detail (domain shardbank).
    assert error_details_pb2.ErrorInfo  # imported for the reader: see errors.from_rpc_error
    # Health: SERVING only on the leader.
    assert leader.serving() == health_pb2.HealthCheckResponse.SERVING
    assert standby.serving() == health_pb2.HealthCheckResponse.NOT_SERVING


def test_leader_refuses_bad_requests_without_leaking(
    two_coordinators: tuple[Coordinator, Coordinator],
) -> None:
    leader, _ = split(two_coordinators)
    with pytest.raises(grpc.RpcError) as caught:
        leader.stub.SubmitTransfers(coordinator_pb2.CoordinatorSubmitRequest(), timeout=2)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(caught.value).reason == errors.BATCH_EMPTY
    bad = a_transfer()
    bad.amount = -5
    answer = leader.stub.SubmitTransfers(coordinator_pb2.CoordinatorSubmitRequest(transfers=[bad]), timeout=2)
    (item,) = answer.transfers
    assert (item.status, item.code, item.reason) == (
        types_pb2.TRANSFER_STATUS_REJECTED,
        3,
        errors.INVALID_AMOUNT,
    )
    # No slot map in this etcd: a valid item's outcome cannot be learned.
    answer = leader.stub.SubmitTransfers(
        coordinator_pb2.CoordinatorSubmitRequest(transfers=[a_transfer()]), timeout=5
    )
    (item,) = answer.transfers
    assert (item.status, item.code) == (types_pb2.TRANSFER_STATUS_PENDING, 14)


def test_kill_9_leader_standby_takes_over_within_5s(
    two_coordinators: tuple[Coordinator, Coordinator],
) -> None:
    leader, standby = split(two_coordinators)
    info = leader.leader_info()
    assert info is not None
    old_epoch = info.epoch
    os.kill(leader.process.pid, signal.SIGKILL)
    started = time.monotonic()
    assert wait_until(standby.is_leader, TAKEOVER_S_MAX, 0.05), "standby did not take over"
    elapsed = time.monotonic() - started
    info = standby.leader_info()
    assert info is not None and info.epoch > old_epoch
    assert wait_until(lambda: standby.serving() == health_pb2.HealthCheckResponse.SERVING, 1.0)
    assert elapsed < TAKEOVER_S_MAX


def test_sigterm_leader_exits_0_and_hands_over_at_once(
    two_coordinators: tuple[Coordinator, Coordinator],
) -> None:
    leader, standby = split(two_coordinators)
    info = leader.leader_info()
    assert info is not None
    old_epoch = info.epoch
    leader.process.send_signal(signal.SIGTERM)
    assert leader.process.wait(timeout=10) == 0
    assert wait_until(standby.is_leader, 2.0, 0.05)
    new = standby.leader_info()
    assert new is not None and new.epoch > old_epoch
    assert leader.process.stderr is not None
    lines = leader.process.stderr.read().decode().splitlines()
    assert any('"lease_revoked"' in line for line in lines)
    with contextlib.suppress(Exception):
        leader.channel.close()
