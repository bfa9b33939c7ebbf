"""Child processes for the local cluster: free ports, spawning with a log
file, bounded waits, and terminate-then-kill."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# How often a wait polls its probe.
PROBE_INTERVAL_S = 0.1
LOG_TAIL_LINES = 20


class ProcessExited(Exception):
    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"exited with {returncode}")
        self.returncode = returncode


class WaitTimedOut(Exception):
    pass


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def spawn(argv: Sequence[str], log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout+stderr appended to `log_path`, in a session of
    its own: Ctrl-C in the supervisor's terminal reaches only the supervisor,
    which then stops its children in order."""
    env = {**os.environ, **extra_env}
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


def wait_until(process: subprocess.Popen[bytes], probe: Callable[[], bool], timeout_s: float) -> None:
    """Poll `probe` until true; ProcessExited if the process dies first,
    WaitTimedOut after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ProcessExited(process.returncode)
        if probe():
            return
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"not ready after {timeout_s:g}s")
        time.sleep(PROBE_INTERVAL_S)


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM each, wait up to `timeout_s` for all, SIGKILL the rest; all reaped."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"(last lines of {path}):\n" + "\n".join(tail)
