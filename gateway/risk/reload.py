"""The risk configuration in force, reloaded without a restart: the file's
identity (mtime, size, inode) is polled every `POLL_INTERVAL_S`, and SIGHUP
reloads at once. A new file that does not validate leaves the rules in force
unchanged and logs `risk_config_invalid` with the precise error; a valid one
logs `risk_config_loaded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import structlog

from gateway.risk import config as risk_config
from gateway.risk.config import ConfigError, RiskConfig

log = structlog.get_logger("gateway.risk")

POLL_INTERVAL_S = 1.0


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class ConfigHolder:
    """`current` is always a valid configuration (the first load must succeed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity = _identity(path)
        self.current: RiskConfig = risk_config.load(path)
        self.loads = 1
        self._task: asyncio.Task[None] | None = None
        log.info("risk_config_loaded", path=path, rules=[r.name for r in self.current.rules])

    def reload(self) -> bool:
        """Load the file again; False (old rules kept) when it is invalid."""
        self._identity = _identity(self.path)
        try:
            fresh = risk_config.load(self.path)
        except ConfigError as exc:
            log.error(
                "risk_config_invalid", path=self.path, error=str(exc), kept_rules=len(self.current.rules)
            )
            return False
        self.current = fresh
        self.loads += 1
        log.info("risk_config_loaded", path=self.path, rules=[r.name for r in fresh.rules])
        return True

    def poll(self) -> bool:
        """Reload if the file changed since the last look; True if it was reloaded."""
        if _identity(self.path) == self._identity:
            return False
        return self.reload()

    def start(self) -> None:
        """Poll in the running loop and reload on SIGHUP (main thread only)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._task = asyncio.create_task(self._run(), name="risk-config-poll")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self.poll()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
