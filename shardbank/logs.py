"""structlog set-up: JSON lines in production (the default for child
processes), a readable console form when SHARDBANK_LOG_FORMAT=console.
One event per line; callers bind transfer ids, never holder details.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(component: str, level: str | None = None) -> None:
    level_name = (level or os.environ.get("SHARDBANK_LOG_LEVEL", "info")).upper()
    renderer: structlog.types.Processor
    if os.environ.get("SHARDBANK_LOG_FORMAT", "json") == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component, pid=os.getpid())
