"""A lean HTTP/1.1 keep-alive client for the bench's HTTP scenarios (S4, S5).

Why not aiohttp's client: the load generator shares the two cores with the
system it measures, and aiohttp's client cost ~280 µs of CPU per request in
S4 (the bench's per-component CPU line) — more than a third of what the
gateway spent answering it. Every CPU-second the generator burns is taken
from the system under test, so the HTTP rows measured the generator as much
as the gateway. This client writes one pre-built request head per call and
reads the status line, the headers it needs and the body: a few µs of
Python per request. It speaks just what the gateway answers (Content-Length
or chunked bodies, keep-alive, `Connection: close`); anything else is an
error, never a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

# Longest status line or header line accepted from the server.
LINE_BYTES_MAX = 8192
# Headers per response accepted before the response is called malformed.
HEADERS_MAX = 100
# Largest response body read (a 1000-item batch reply is well under this).
BODY_BYTES_MAX = 16 * 1024 * 1024


class HttpProtocolError(RuntimeError):
    """The server's answer was not HTTP/1.1 this client understands."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


class HttpConnection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self._reader = reader
        self._writer = writer
        self._head = head
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, headers: dict[str, str]) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        lines = [f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
        return cls(reader, writer, ("\r\n".join(lines) + "\r\n").encode("latin-1"))

    async def post(self, path: str, body: bytes) -> Reply:
        self._writer.write(
            b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path.encode("latin-1"), self._head, len(body), body)
        )
        return await self._read_reply()

    async def _read_reply(self) -> Reply:
        status_line = await self._line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        for _ in range(HEADERS_MAX):
            line = await self._line()
            if not line:
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise HttpProtocolError(f"bad header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit():
                    raise HttpProtocolError(f"bad Content-Length {value[:20]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
                if not chunked:
                    raise HttpProtocolError(f"transfer encoding {value[:20]!r} is not supported")
            elif name == b"connection" and value.lower() == b"close":
                self.closed = True
        else:
            raise HttpProtocolError(f"more than {HEADERS_MAX} headers")
        if chunked:
            body = await self._chunked_body()
        elif length is not None:
            body = await self._exactly(length)
        else:
            raise HttpProtocolError("a reply without Content-Length or chunked encoding")
        if self.closed:
            await self.close()
        return Reply(status, body)

    async def _chunked_body(self) -> bytes:
        pieces: list[bytes] = []
        total = 0
        while True:
            size_text = (await self._line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while await self._line():  # trailers, then the empty line
                    pass
                return b"".join(pieces)
            total += size
            if total > BODY_BYTES_MAX:
                raise HttpProtocolError("reply body too large")
            pieces.append(await self._reader.readexactly(size))
            if await self._reader.readexactly(2) != b"\r\n":
                raise HttpProtocolError("chunk not followed by CRLF")

    async def _exactly(self, length: int) -> bytes:
        if length > BODY_BYTES_MAX:
            raise HttpProtocolError("reply body too large")
        return await self._reader.readexactly(length)

    async def _line(self) -> bytes:
        try:
            line = await self._reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise HttpProtocolError("header line too long") from None
        except asyncio.IncompleteReadError:
            self.closed = True
            raise HttpProtocolError("the server closed the connection mid-reply") from None
        if len(line) > LINE_BYTES_MAX:
            raise HttpProtocolError("header line too long")
        return line[:-2]

    async def close(self) -> None:
        self.closed = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class HttpPool:
    """Up to `size` connections to one server, each used by one call at a time
    (the closed loop's workers); a broken or closed one is replaced."""

    def __init__(
        self, host: str, port: int, headers: dict[str, str], size: int, timeout_s: float = 30.0
    ) -> None:
        if size < 1 or timeout_s <= 0:
            raise ValueError("size must be at least 1 and timeout_s positive")
        self._timeout_s = timeout_s
        self._host = host
        self._port = port
        self._headers = dict(headers)
        self._idle: asyncio.LifoQueue[HttpConnection] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(size)
        self._all: set[HttpConnection] = set()

    async def post(self, path: str, body: bytes) -> Reply:
        async with self._slots:
            connection = self._idle.get_nowait() if not self._idle.empty() else None
            if connection is None or connection.closed:
                connection = await HttpConnection.open(self._host, self._port, self._headers)
                self._all.add(connection)
            try:
                async with asyncio.timeout(self._timeout_s):
                    reply = await connection.post(path, body)
            except BaseException:  # timed out, cancelled or broken: the connection's state is unknown
                self._all.discard(connection)
                await connection.close()
                raise
            if connection.closed:
                self._all.discard(connection)
            else:
                self._idle.put_nowait(connection)
            return reply

    async def close(self) -> None:
        for connection in list(self._all):
            await connection.close()
        self._all.clear()
