"""The bench's lean HTTP client against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from loadtest.http_load import HttpConnection, HttpPool, HttpProtocolError


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"len": len(body), "auth": request.headers.get("Authorization", ""), "body": body.decode()},
        status=201,
    )


async def chunked(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(status=200)
    response.enable_chunked_encoding()
    await response.prepare(request)
    for piece in (b'{"transfers": ', b"[1, 2, 3]", b"}"):
        await response.write(piece)
    await response.write_eof()
    return response


async def closing(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=422, body=b"no", headers={"Connection": "close"})


async def with_server(run: Callable[[int], Awaitable[None]]) -> None:
    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/closing", closing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await asyncio.wait_for(run(port), 20)
    finally:
        await runner.cleanup()


def test_keep_alive_chunked_and_close() -> None:
    async def run(port: int) -> None:
        headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
        pool = HttpPool("127.0.0.1", port, headers, 2)
        try:
            replies = await asyncio.gather(*(pool.post("/echo", b'{"n": %d}' % n) for n in range(6)))
            assert [r.status for r in replies] == [201] * 6
            bodies = [json.loads(r.body) for r in replies]
            assert [b["body"] for b in bodies] == [f'{{"n": {n}}}' for n in range(6)]
            assert {b["auth"] for b in bodies} == {"Bearer t"}
            assert len(pool._all) <= 2  # reused, never more than the pool's size
            chunked_reply = await pool.post("/chunked", b"{}")
            assert (chunked_reply.status, json.loads(chunked_reply.body)) == (200, {"transfers": [1, 2, 3]})
            closed = await pool.post("/closing", b"{}")
            assert (closed.status, closed.body) == (422, b"no")
            again = await pool.post("/echo", b"x")  # a fresh connection replaces the closed one
            assert again.status == 201
        finally:
            await pool.close()

    asyncio.run(with_server(run))


def test_a_reply_that_is_not_http_is_an_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            connection = await HttpConnection.open("127.0.0.1", port, {})
            with pytest.raises(HttpProtocolError):
                await connection.post("/x", b"")
            await connection.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))
