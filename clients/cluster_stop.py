"""`shardbank down`: stop a local cluster from any shell, by the PIDs in its
data directory, also when the `shardbank up` that started it is gone.

A supervisor that still runs is asked to stop (SIGTERM): it stops its
children in order and waits for them, as Ctrl-C would. Otherwise (it was
killed with -9, or the machine's session ended it) its children are orphans
still serving, and `up` refuses to start over them; they are stopped here
directly: gateways first, etcd last (the order `up` stops them in), each
kind given `grace_s` to exit after SIGTERM, then SIGKILL. A PID is signalled
only while it still runs the command line recorded for it, so a reused PID
is never touched. Nothing here deletes data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clients import added_shards
from clients.cluster_state import ClusterState, ComponentRecord, running
from clients.local_cluster import KIND_ORDER

# Gateways first, etcd last: the order `up` stops its children in.
STOP_ORDER = tuple(reversed(KIND_ORDER))
GRACE_S_DEFAULT = 10.0
POLL_S = 0.1


@dataclass(frozen=True)
class Stopped:
    name: str
    pid: int | None
    # "supervisor" (its `up` stopped it), "terminated", "killed", or "not running"
    how: str


def recorded_components(state: ClusterState, data_dir: Path) -> list[ComponentRecord]:
    """The processes `up` started, then the nodes `shardbank shard add`
    started from another shell while it ran (recorded in added_shards.json,
    not in the state file `up` wrote at start)."""
    listed = {c.name for c in state.components}
    added = [
        ComponentRecord(a.name, added_shards.LEDGER_NODE, a.address, a.pid, a.argv,
                        str(added_shards.log_path(data_dir, a.name)))
        for a in added_shards.read(data_dir)
        if a.name not in listed
    ]  # fmt: skip
    return [*state.components, *added]


def stop_cluster(
    state: ClusterState,
    data_dir: Path,
    grace_s: float = GRACE_S_DEFAULT,
    clock: Callable[[], float] = time.monotonic,
) -> list[Stopped]:
    """Stop what is still running of the cluster; one line per component."""
    components = recorded_components(state, data_dir)
    alive_before = {c.name for c in components if running(c.pid, c.argv)}
    supervised = bool(state.supervisor_argv) and running(state.supervisor_pid, state.supervisor_argv)
    if supervised:
        _signal(state.supervisor_pid, signal.SIGTERM)
        # It gives each kind its own stop timeout: wait for all of them.
        supervisor = ComponentRecord("up", "", "", state.supervisor_pid, state.supervisor_argv, "")
        _wait_gone([supervisor], grace_s * len(STOP_ORDER), clock)
    results: list[Stopped] = []
    for kind in STOP_ORDER:
        group = [c for c in components if c.kind == kind]
        live = [c for c in group if running(c.pid, c.argv)]
        for component in live:
            _signal(component.pid, signal.SIGTERM)
        _wait_gone(live, grace_s, clock)
        killed = {c.name for c in live if running(c.pid, c.argv)}
        for component in live:
            if component.name in killed:
                _signal(component.pid, signal.SIGKILL)
        _wait_gone(live, grace_s, clock)
        for component in group:
            if component.name not in alive_before:
                how = "not running"
            elif component.name in killed:
                how = "killed"
            elif component in live:
                how = "terminated"
            else:
                how = "supervisor"
            results.append(Stopped(component.name, component.pid, how))
    return results


def still_running(state: ClusterState, data_dir: Path) -> list[str]:
    return [c.name for c in recorded_components(state, data_dir) if running(c.pid, c.argv)]


def _signal(pid: int | None, signum: int) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(components: Sequence[ComponentRecord], timeout_s: float, clock: Callable[[], float]) -> None:
    deadline = clock() + timeout_s
    while any(running(c.pid, c.argv) for c in components) and clock() < deadline:
        time.sleep(POLL_S)
