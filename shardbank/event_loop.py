"""The event loop every shardbank process runs on: uvloop, unless told otherwise.

Why: with writes batched, what a node, coordinator or gateway spends per
message is mostly event-loop machinery (transports, futures, callbacks,
timers), and uvloop (libuv, Cython) does that machinery in C. Side by side it
cut CPU per transfer in every process (docs/performance.md, "uvloop").
grpc.aio runs on any asyncio loop (it polls its completion queue on its own
thread and hands results over with call_soon_threadsafe).

`SHARDBANK_EVENT_LOOP=asyncio` in a process's environment runs it on the
standard loop instead: for a side-by-side measurement, or if a uvloop bug
is ever suspected. Set it for `LocalCluster`/`shardbank bench` and every
process they start inherits it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("event_loop")

LOOP_ENV = "SHARDBANK_EVENT_LOOP"
ASYNCIO = "asyncio"
UVLOOP = "uvloop"

T = TypeVar("T")


def chosen() -> str:
    """The loop `run` will use here (uvloop only where it imports)."""
    if os.environ.get(LOOP_ENV, UVLOOP) == ASYNCIO:
        return ASYNCIO
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ASYNCIO
    return UVLOOP


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    if chosen() == UVLOOP:
        import uvloop

        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)
