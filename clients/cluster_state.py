"""`DATA/cluster.json`: what a LocalCluster started, readable from any shell.

Written atomically (temp file + rename) each time a component starts or
stops. A PID is only reported alive if that process still runs the command
line that was recorded for it, so a reused PID is not mistaken for a node.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE_NAME = "cluster.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class ComponentRecord:
    name: str
    kind: str
    address: str
    pid: int | None
    argv: tuple[str, ...]
    log: str


@dataclass(frozen=True)
class ClusterState:
    data_dir: str
    supervisor_pid: int
    etcd: str
    gateway: str
    components: tuple[ComponentRecord, ...]
    # The supervisor's command line, so `shardbank down` signals it only while
    # that PID still runs it (empty in files written before it was recorded).
    supervisor_argv: tuple[str, ...] = ()

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return json.dumps(data, indent=2, ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> ClusterState:
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"cluster state version {data.get('version')!r}, expected {STATE_VERSION}")
        components = tuple(
            ComponentRecord(
                name=str(item["name"]),
                kind=str(item["kind"]),
                address=str(item["address"]),
                pid=None if item.get("pid") is None else int(item["pid"]),
                argv=tuple(str(arg) for arg in item.get("argv", ())),
                log=str(item.get("log", "")),
            )
            for item in data["components"]
        )
        return ClusterState(
            data_dir=str(data["data_dir"]),
            supervisor_pid=int(data["supervisor_pid"]),
            etcd=str(data["etcd"]),
            gateway=str(data["gateway"]),
            components=components,
            supervisor_argv=tuple(str(arg) for arg in data.get("supervisor_argv", ())),
        )


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE_NAME


def write_state(data_dir: Path, state: ClusterState) -> None:
    path = state_path(data_dir)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(state.to_json(), encoding="utf-8")
    os.replace(temporary, path)


def read_state(data_dir: Path) -> ClusterState | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        return ClusterState.from_json(state_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def own_argv() -> tuple[str, ...]:
    """This process's command line as /proc shows it (what `running` compares)."""
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
    except OSError:
        return ()
    # NUL-terminated arguments; an empty one stays (it is part of the command).
    return tuple(arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1])


def running(pid: int | None, argv: tuple[str, ...] = ()) -> bool:
    """True if `pid` is a live (not zombie) process; with `argv`, running that command."""
    if pid is None or pid <= 0:
        return False
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return _signal_zero(pid) if not proc.parent.joinpath("self").exists() else False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    if argv:
        return cmdline.split(b"\0")[: len(argv)] == [arg.encode() for arg in argv]
    return True


def _signal_zero(pid: int) -> bool:
    """Fallback where there is no /proc: only whether the PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
