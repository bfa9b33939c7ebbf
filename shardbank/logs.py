"""structlog set-up: JSON lines in production (the default for child
processes), a readable console form when SHARDBANK_LOG_FORMAT=console.
One event per line; callers bind transfer ids, never holder details.

Every event carries the process's identity (component, pid, and e.g.
shard_id / coordinator_id / gateway_id), added by a processor rather than
bound in contextvars: threads (etcd leases, slot-map polling, the metrics
server) start with an empty context, so their events would lose it.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def identity_processor(identity: dict[str, object]) -> structlog.types.Processor:
    """Adds the process identity to an event (an event's own keys win)."""

    def add(_logger: object, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        for key, value in identity.items():
            event.setdefault(key, value)
        return event

    return add


def configure(component: str, level: str | None = None, **identity: str) -> None:
    """`identity`: fields every event of this process carries (shard_id=..., coordinator_id=...)."""
    level_name = (level or os.environ.get("SHARDBANK_LOG_LEVEL", "info")).upper()
    renderer: structlog.types.Processor
    if os.environ.get("SHARDBANK_LOG_FORMAT", "json") == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            identity_processor({"component": component, "pid": os.getpid(), **identity}),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
