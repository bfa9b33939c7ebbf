"""Building and starting the HTTP/JSON edge.

`create_app(channel)` is everything but the socket, so tests serve it
with aiohttp's test server and the gateway process mounts it beside its
gRPC server; `start_http(app, host, port)` binds and returns the runner whose
`cleanup()` stops it. The edge talks to the gateway only through the public
gRPC `Bank` API, on `channel`: the gateway's `LocalChannel`, which runs the
gRPC server's own interceptor and servicers in process (`gateway.http.local`),
so HTTP can never do something gRPC clients cannot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from gateway.http import docs, limits, meta, openapi, routes
from gateway.http.calls import COALESCER_KEY, UPSTREAM_KEY, Upstream
from gateway.http.coalesce import TransferCoalescer
from gateway.http.errors import error_middleware
from gateway.http.local import LocalChannel

log = structlog.get_logger("gateway.http")

# Seconds requests in flight get to finish when the runner is cleaned up.
SHUTDOWN_GRACE_S = 5.0


def create_app(channel: LocalChannel, *, call_deadline_s: float = limits.CALL_DEADLINE_S) -> web.Application:
    """The aiohttp application; the coalescer starts with the app (it needs the loop)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=limits.BODY_BYTES_MAX)
    routes.register(app)
    document = openapi.document()
    app[meta.OPENAPI_KEY] = document
    app[meta.DOCS_HTML_KEY] = docs.render(document)

    async def calls(app: web.Application) -> AsyncIterator[None]:
        upstream = Upstream.on(channel, call_deadline_s)
        app[UPSTREAM_KEY] = upstream
        coalescer = TransferCoalescer(upstream.bank, call_deadline_s)
        app[COALESCER_KEY] = coalescer
        yield
        await coalescer.close()

    app.cleanup_ctx.append(calls)
    return app


async def start_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port (0: any free port; see `bound_port`)."""
    # access_log=None: aiohttp's access log goes to stdlib logging; the edge
    # logs refusals itself as structlog JSON like every other component.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("http_listening", address=f"{host}:{bound_port(runner)}")
    return runner


def bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])
