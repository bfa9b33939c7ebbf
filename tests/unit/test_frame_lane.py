"""The frame lane: `shardbank.frame_lane` (codec, caller) against a real
in-process node's `ledger_node.frame_server` on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import grpc
import pytest

from ledger_node import frame_server
from ledger_node.server import NodeServer, create_server
from ledger_node.testing import account, deposit, move
from shardbank import errors, frame_lane, service_auth
from shardbank.node_stream import NodeStream
from shardbank.v1 import ledger_pb2, types_pb2

DEADLINE_S = 10.0
SECRET = bytes(range(32))
OPEN = frame_lane.Credentials(b"", "gw-1")
TRUSTED = frame_lane.Credentials(SECRET, "gw-1")


async def started(data_dir: Path, secret: bytes = b"", frame_listen: str = "127.0.0.1:0") -> NodeServer:
    node = await create_server(
        "shard-1", "127.0.0.1:0", str(data_dir), "", exit_process=_no_exit, cluster_secret=secret
    )
    await node.bind_frames(frame_listen)
    await node.start()
    return node


def _no_exit(status: int) -> None:
    raise AssertionError(f"node tried to exit with {status}")


def lane(node: NodeServer, credentials: frame_lane.Credentials = OPEN) -> NodeStream:
    return NodeStream(frame_lane.opener(node.frame_address, credentials, "shard-1"), "shard-1")


def apply(*transfers: types_pb2.Transfer) -> ledger_pb2.ApplyTransfersRequest:
    return ledger_pb2.ApplyTransfersRequest(transfers=transfers)


def write(message_id: int, *transfers: types_pb2.Transfer) -> ledger_pb2.WriteMessage:
    return ledger_pb2.WriteMessage(id=message_id, apply_transfers=apply(*transfers))


async def opened(node: NodeServer, *accounts: types_pb2.Account) -> None:
    await node.writer.submit(ledger_pb2.CreateAccountsRequest(accounts=accounts))


async def refusal(send: object) -> errors.BankError:
    with pytest.raises(errors.BankError) as caught:
        await send  # type: ignore[misc]
    return caught.value


# ---- codec


def test_frames_are_cut_where_they_end_whatever_the_reads() -> None:
    messages = [ledger_pb2.WriteMessage(id=i, apply_transfers=apply(deposit(i, i))) for i in range(1, 6)]
    wire = b"".join(frame_lane.frame(m) for m in messages)
    for step in (1, 3, 7, len(wire)):
        deframer = frame_lane.Deframer()
        bodies = [b for at in range(0, len(wire), step) for b in deframer.feed(wire[at : at + step])]
        assert [ledger_pb2.WriteMessage.FromString(b) for b in bodies] == messages
    empty = frame_lane.Deframer()
    assert empty.feed(frame_lane.frame(ledger_pb2.WriteMessage())) == [b""]


def test_a_length_past_the_bound_is_refused_before_anything_is_buffered() -> None:
    deframer = frame_lane.Deframer(limit=100)
    assert deframer.feed(struct.pack(">I", 100) + b"x" * 100) == [b"x" * 100]
    with pytest.raises(frame_lane.FrameTooLarge):
        deframer.feed(struct.pack(">I", 101))


# ---- against a node


def test_messages_on_the_lane_are_answered_each_and_share_a_connection(tmp_path: Path) -> None:
    asyncio.run(_answered(tmp_path))


async def _answered(tmp_path: Path) -> None:
    alice, bob = account(), account()
    node = await started(tmp_path / "shard-1")
    stream = lane(node)
    try:
        await opened(node, alice, bob)
        funded = await stream.send(apply(deposit(alice.id, 10_000)), DEADLINE_S)
        assert funded.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        connection = stream._current
        moves = [move(alice.id, bob.id, 10 + i) for i in range(40)]
        replies = await asyncio.gather(*(stream.send(apply(m), DEADLINE_S) for m in moves))
        assert [r.transfers.transfers[0].id for r in replies] == [m.id for m in moves]
        assert {r.transfers.transfers[0].status for r in replies} == {types_pb2.TRANSFER_STATUS_COMMITTED}
        # A message the node refuses gets its own error; the lane stays up.
        too_big = apply(*(deposit(alice.id, 1) for _ in range(8193)))
        refused = await refusal(stream.send(too_big, DEADLINE_S))
        assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BATCH_TOO_LARGE")
        again = await stream.send(apply(move(alice.id, bob.id, 1)), DEADLINE_S)
        assert again.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        assert stream._current is connection
        moved = sum(m.amount for m in moves) + 1
        assert node.ledger.accounts[alice.id].balance == 10_000 - moved
        assert node.ledger.accounts[bob.id].balance == moved
    finally:
        await stream.close()
        await node.stop(0)


def test_a_lane_needs_a_token_for_its_own_nonce_and_the_reader_key_cannot_write(tmp_path: Path) -> None:
    asyncio.run(_credentials(tmp_path))


async def _credentials(tmp_path: Path) -> None:
    alice = account()
    node = await started(tmp_path / "shard-1", secret=SECRET)
    callers = {
        "none": lane(node, OPEN),
        "wrong": lane(node, frame_lane.Credentials(bytes(32), "gw-1")),
        "reader": lane(node, frame_lane.Credentials(service_auth.reader_secret(SECRET), "eod")),
        "trusted": lane(node, TRUSTED),
    }
    try:
        await opened(node, alice)
        for name in ("none", "wrong"):
            refused = await refusal(callers[name].send(apply(deposit(alice.id, 5)), DEADLINE_S))
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                errors.SERVICE_UNAUTHENTICATED,
            ), name
        read_only = await refusal(callers["reader"].send(apply(deposit(alice.id, 5)), DEADLINE_S))
        assert (read_only.code, read_only.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            errors.SERVICE_READ_ONLY,
        )
        assert node.ledger.accounts[alice.id].balance == 0  # nothing sent before the refusal was applied
        served = await callers["trusted"].send(apply(deposit(alice.id, 5)), DEADLINE_S)
        assert served.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        assert node.ledger.accounts[alice.id].balance == 5

        # A token is bound to its connection's nonce: replayed on a new one, it is refused.
        host, _, port = node.frame_address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        hello = ledger_pb2.FrameHello.FromString(await _read_frame(reader))
        assert hello.version == frame_lane.VERSION and len(hello.nonce) == frame_lane.NONCE_BYTES
        stale = TRUSTED.token(bytes(frame_lane.NONCE_BYTES))
        writer.write(frame_lane.frame(ledger_pb2.FrameAuth(version=frame_lane.VERSION, token=stale)))
        writer.write(frame_lane.frame(write(7, deposit(alice.id, 9))))
        answer = ledger_pb2.WriteReply.FromString(await _read_frame(reader))
        assert (answer.id, answer.error.reason) == (0, errors.SERVICE_UNAUTHENTICATED)
        assert await reader.read() == b""  # and the node hung up
        writer.close()
        assert node.ledger.accounts[alice.id].balance == 5
    finally:
        for stream in callers.values():
            await stream.close()
        await node.stop(0)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), DEADLINE_S))
    return await asyncio.wait_for(reader.readexactly(size), DEADLINE_S)


async def _handshake(node: NodeServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = node.frame_address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    hello = ledger_pb2.FrameHello.FromString(await _read_frame(reader))
    auth = ledger_pb2.FrameAuth(version=frame_lane.VERSION, token=OPEN.token(hello.nonce))
    writer.write(frame_lane.frame(auth))
    return reader, writer


def test_before_auth_only_a_small_frame_is_taken(tmp_path: Path) -> None:
    asyncio.run(_small_before_auth(tmp_path))


async def _small_before_auth(tmp_path: Path) -> None:
    node = await started(tmp_path / "shard-1")
    try:
        host, _, port = node.frame_address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        await _read_frame(reader)  # the hello
        writer.write(struct.pack(">I", frame_server.AUTH_FRAME_BYTES_MAX + 1))
        answer = ledger_pb2.WriteReply.FromString(await _read_frame(reader))
        assert (answer.id, answer.error.reason) == (0, errors.INVALID_ARGUMENT)
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        writer.close()
    finally:
        await node.stop(0)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (struct.pack(">I", frame_lane.FRAME_BYTES_MAX + 1), errors.INVALID_ARGUMENT),
        (struct.pack(">I", 3) + b"\xff\xff\xff", errors.INVALID_ARGUMENT),
    ],
    ids=["length past the bound", "not a WriteMessage"],
)
def test_a_broken_frame_ends_the_connection_with_a_reason_and_applies_nothing(
    tmp_path: Path, wire: bytes, reason: str
) -> None:
    asyncio.run(_broken(tmp_path, wire, reason))


async def _broken(tmp_path: Path, wire: bytes, reason: str) -> None:
    alice = account()
    node = await started(tmp_path / "shard-1")
    try:
        await opened(node, alice)
        reader, writer = await _handshake(node)
        writer.write(wire)
        writer.write(frame_lane.frame(write(1, deposit(alice.id, 9))))
        answer = ledger_pb2.WriteReply.FromString(await _read_frame(reader))
        assert (answer.id, answer.error.code, answer.error.reason) == (
            0,
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            reason,
        )
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        writer.close()
        assert node.ledger.accounts[alice.id].balance == 0
        # The node itself is fine: a good lane is served.
        stream = lane(node)
        served = await stream.send(apply(deposit(alice.id, 4)), DEADLINE_S)
        assert served.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        await stream.close()
    finally:
        await node.stop(0)


def test_a_node_gone_fails_the_lane_unavailable_and_the_resend_moves_money_once(tmp_path: Path) -> None:
    asyncio.run(_node_gone(tmp_path))


async def _node_gone(tmp_path: Path) -> None:
    alice, bob = account(), account()
    node = await started(tmp_path / "shard-1")
    frame_listen = node.frame_address
    stream = lane(node)
    try:
        await opened(node, alice, bob)
        await stream.send(apply(deposit(alice.id, 1_000)), DEADLINE_S)
        first = move(alice.id, bob.id, 300)
        await stream.send(apply(first), DEADLINE_S)  # applied, but say its reply was lost
        await node.stop()  # closes the lane once its answers are out
        gone = await refusal(stream.send(apply(first), DEADLINE_S))
        assert (gone.code, gone.reason) == (grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE)

        node = await started(tmp_path / "shard-1", frame_listen=frame_listen)
        for _ in range(50):  # the reopen backs off
            try:
                resent = await stream.send(apply(first), DEADLINE_S)
                break
            except errors.BankError as error:
                assert error.code == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the lane never reopened")
        assert resent.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        assert (node.ledger.accounts[alice.id].balance, node.ledger.accounts[bob.id].balance) == (700, 300)
    finally:
        await stream.close()
        await node.stop(0)


def test_stopping_answers_what_was_read_before_closing(tmp_path: Path) -> None:
    asyncio.run(_stopping(tmp_path))


async def _stopping(tmp_path: Path) -> None:
    alice = account()
    node = await started(tmp_path / "shard-1")
    stream = lane(node)
    try:
        await opened(node, alice)
        await stream.send(apply(deposit(alice.id, 1)), DEADLINE_S)
        deposits = [apply(deposit(alice.id, 1)) for _ in range(200)]
        sends = [asyncio.ensure_future(stream.send(d, DEADLINE_S)) for d in deposits]
        await asyncio.sleep(0)  # let them go out
        await node.stop()
        results = await asyncio.gather(*sends, return_exceptions=True)
        answered = [r for r in results if isinstance(r, ledger_pb2.WriteReply)]
        failed = [r for r in results if not isinstance(r, ledger_pb2.WriteReply)]
        for failure in failed:
            assert isinstance(failure, errors.BankError)
            assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE)
        # Every answered deposit is in the books, and nothing else is.
        assert node.ledger.accounts[alice.id].balance == 1 + len(answered)
    finally:
        await stream.close()


def test_an_unreachable_lane_fails_unavailable_naming_the_address() -> None:
    asyncio.run(_unreachable())


async def _unreachable() -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        stream = NodeStream(frame_lane.opener(address, OPEN, "shard-1"), "shard-1")
        failed = await refusal(stream.send(apply(deposit(1, 5)), DEADLINE_S))
        await stream.close()
    assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE)
    assert address in failed.message


def test_connections_past_the_bound_and_callers_that_never_authenticate_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frame_server, "CONNECTIONS_MAX", 2)
    monkeypatch.setattr(frame_server, "AUTH_TIMEOUT_S", 0.2)
    asyncio.run(_bounded(tmp_path))


async def _bounded(tmp_path: Path) -> None:
    node = await started(tmp_path / "shard-1")
    host, _, port = node.frame_address.rpartition(":")
    try:
        first = await _handshake(node)
        silent_reader, silent_writer = await asyncio.open_connection(host, int(port))
        await _read_frame(silent_reader)  # its hello; it never answers
        # A third connection is one too many: refused at once, with the reason.
        reader, writer = await asyncio.open_connection(host, int(port))
        crowded = ledger_pb2.WriteReply.FromString(await _read_frame(reader))
        assert (crowded.id, crowded.error.reason) == (0, errors.OVERLOADED)
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        writer.close()
        # The silent one is cut when its time to authenticate is up...
        late = ledger_pb2.WriteReply.FromString(await _read_frame(silent_reader))
        assert (late.id, late.error.reason) == (0, errors.SERVICE_UNAUTHENTICATED)
        assert await asyncio.wait_for(silent_reader.read(), DEADLINE_S) == b""
        silent_writer.close()
        # ...which frees its place, and the authenticated one was never disturbed.
        stream = lane(node)
        alice = account()
        await opened(node, alice)
        served = await stream.send(apply(deposit(alice.id, 3)), DEADLINE_S)
        assert served.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        first[1].write(frame_lane.frame(write(9, deposit(alice.id, 4))))
        answer = ledger_pb2.WriteReply.FromString(await _read_frame(first[0]))
        assert answer.id == 9 and answer.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        assert node.ledger.accounts[alice.id].balance == 7
        await stream.close()
        first[1].close()
    finally:
        await node.stop(0)
