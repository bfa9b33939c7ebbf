"""`shardbank down` against a real `shardbank up` (etcd, a node, a
coordinator and the gateway): it stops a cluster whose `up` was killed with
-9 (its children left serving, and `up` refusing to start over them), and
asks a live `up` to stop its own children. Every process is stopped by PID
at the end whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import cli
from clients.cluster_state import ClusterState, read_state, running

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0
# `up --gateway-port BASE` puts the node at +10, the coordinator at +20 and
# the three /metrics endpoints at +30, +40, +50, the node's frame lane at +80.
PORT_OFFSETS = (0, 10, 20, 30, 40, 50, 80)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_block() -> tuple[int, int, int]:
    """(gateway base, etcd client port, HTTP port), all free a moment ago."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000, 100)
        ports = [base + o for o in PORT_OFFSETS] + [base + 60, base + 61, base + 70]
        if all(_free(p) for p in ports):
            return base, base + 60, base + 70
    raise AssertionError("no free block of ports")


def _wait_ready(up: subprocess.Popen[bytes]) -> None:
    """Until `up` has printed its endpoints (JSON): it has started everything."""
    assert up.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = b""
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise AssertionError(f"shardbank up exited {up.returncode}: {seen!r}")
        ready, _, _ = select.select([up.stdout], [], [], 0.5)
        if ready:
            seen += os.read(up.stdout.fileno(), 65536)
            with contextlib.suppress(ValueError):
                if "gateway" in json.loads(seen):
                    return
    raise AssertionError(f"shardbank up not ready after {READY_TIMEOUT_S}s: {seen!r}")


@contextlib.contextmanager
def _up(data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    base, etcd_port, http_port = _port_block()
    argv = [
        sys.executable, "-m", "clients.cli", "up", "--json", "--data-dir", str(data_dir),
        "--shards", "1", "--coordinators", "1", "--gateway-port", str(base),
        "--etcd-port", str(etcd_port), "--http-port", str(http_port),
    ]  # fmt: skip
    up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(up)
        yield up
    finally:
        if up.poll() is None:
            up.kill()
        up.wait()
        state = read_state(data_dir)
        for component in state.components if state else ():
            if running(component.pid, component.argv) and component.pid:
                os.kill(component.pid, signal.SIGKILL)


def _live(state: ClusterState) -> list[str]:
    return [c.name for c in state.components if running(c.pid, c.argv)]


def _down(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    capsys.readouterr()
    assert cli.main(["down", "--json", "--data-dir", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["still_running"] == []
    return {s["name"]: s["how"] for s in report["stopped"]}


def test_down_stops_what_a_killed_up_left_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "var"
    with _up(data_dir) as up:
        state = read_state(data_dir)
        assert state is not None and state.supervisor_pid == up.pid
        assert sorted(_live(state)) == ["coord-1", "etcd", "gw-1", "shard-1"]
        up.kill()  # kill -9: nothing stops its children
        up.wait()
        assert sorted(_live(state)) == ["coord-1", "etcd", "gw-1", "shard-1"], "children died with up"

        stopped = _down(data_dir, capsys)
        assert stopped == {"gw-1": "terminated", "coord-1": "terminated", "shard-1": "terminated",
                           "etcd": "terminated"}  # fmt: skip
        assert _live(state) == []
        # A second `down` finds nothing to stop and says so.
        assert set(_down(data_dir, capsys).values()) == {"not running"}


def test_down_asks_a_live_up_to_stop_its_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "var"
    with _up(data_dir) as up:
        state = read_state(data_dir)
        assert state is not None and state.supervisor_argv
        stopped = _down(data_dir, capsys)
        assert set(stopped.values()) == {"supervisor"}, stopped
        assert up.wait(timeout=30) == 0  # `up` stopped its children and exited cleanly
        assert _live(state) == []


def test_down_without_a_recorded_cluster_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["down", "--data-dir", str(tmp_path / "nothing")]) != 0
    assert "NO_CLUSTER" in capsys.readouterr().err
