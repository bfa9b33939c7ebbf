"""Shards added to a local cluster after it started (`shardbank shard add`).

`DATA/added_shards.json` lists each added node's name, address, command line
and the PID of the process the CLI started. `LocalCluster` reads it: on
start it runs those nodes again as its own children (a restarted cluster
comes back with every shard that holds slots), and on stop it also stops a
recorded PID still running that command line (a node the CLI started while
`shardbank up` ran in another terminal). Written atomically.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clients import processes
from clients.cluster_state import running
from shardbank import meta, service_auth

FILE_NAME = "added_shards.json"
LEDGER_NODE = "ledger_node"
# A new node registers in etcd once it has loaded its (empty) DB: seconds.
REGISTER_WAIT_S = 30.0
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class AddedShard:
    name: str
    address: str
    argv: tuple[str, ...]
    pid: int | None = None


def path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def log_path(data_dir: Path, name: str) -> Path:
    """Where an added node's output goes (beside the cluster's own logs)."""
    return data_dir / "logs" / f"{name}.log"


def read(data_dir: Path) -> list[AddedShard]:
    try:
        entries = json.loads(path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        AddedShard(str(e["name"]), str(e["address"]), tuple(str(a) for a in e["argv"]), e.get("pid"))
        for e in entries
    ]


def write(data_dir: Path, shards: list[AddedShard]) -> None:
    target = path(data_dir)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps([asdict(s) for s in shards], indent=2), encoding="utf-8")
    os.replace(temporary, target)


def node_argv(data_dir: Path, name: str, address: str, etcd: str, python: str = sys.executable) -> list[str]:
    """The command line LocalCluster gives its own nodes."""
    secret_file = data_dir / service_auth.SECRET_FILE_NAME
    return [
        python, "-m", LEDGER_NODE, "--shard-id", name, "--listen", address,
        "--data-dir", str(data_dir / name), "--etcd", etcd,
        "--cluster-secret-file", str(secret_file) if secret_file.exists() else "",
    ]  # fmt: skip


def next_name(data_dir: Path, known: set[str]) -> str:
    """shard-N with N one above every shard known to etcd or on disk."""
    names = known | {p.name for p in data_dir.glob("shard-*")} | {s.name for s in read(data_dir)}
    indices = [int(n.rpartition("-")[2]) for n in names if n.rpartition("-")[2].isdigit()]
    return f"shard-{max(indices, default=0) + 1}"


def start(data_dir: Path, etcd: str) -> AddedShard:
    """Start the next shard's node in a session of its own, record it, and
    wait until it is registered in etcd."""
    client = meta.connect(etcd)
    try:
        slot_map = meta.read_slot_map(client)
        known = set(meta.list_shards(client)) | (set(slot_map.owners) if slot_map else set())
        name = next_name(data_dir, known)
        address = f"127.0.0.1:{processes.free_ports(1)[0]}"
        argv = node_argv(data_dir, name, address, etcd)
        log = log_path(data_dir, name)
        log.parent.mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parent.parent)
        python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        child = processes.spawn(argv, log, {"PYTHONPATH": python_path})
        added = AddedShard(name, address, tuple(argv), child.pid)
        write(data_dir, [*[s for s in read(data_dir) if s.name != name], added])
        deadline = time.monotonic() + REGISTER_WAIT_S
        while name not in meta.list_shards(client):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not register; see {log}")
            time.sleep(meta.POLL_INTERVAL_S / 5)
        return added
    finally:
        client.close()


def stop_recorded(data_dir: Path) -> None:
    """SIGTERM recorded nodes still running their recorded command line."""
    for shard in read(data_dir):
        if shard.pid is not None and running(shard.pid, shard.argv):
            os.kill(shard.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for shard in read(data_dir):
        while shard.pid is not None and running(shard.pid, shard.argv) and time.monotonic() < deadline:
            time.sleep(0.05)
