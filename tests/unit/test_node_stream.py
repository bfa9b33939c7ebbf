"""Write streams: `shardbank.node_stream` against a real in-process node
(port 0, standalone) through grpc.aio, and against a fake call for the
timing cases a real node cannot be made to hit on cue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from ledger_node.server import NodeServer, create_server
from ledger_node.testing import account, deposit, move
from shardbank import errors, node_stream, service_auth
from shardbank.node_stream import NodeStream
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

DEADLINE_S = 10.0
SECRET = bytes(range(32))


async def started(data_dir: Path, listen: str = "127.0.0.1:0", secret: bytes = b"") -> NodeServer:
    node = await create_server(
        "shard-1", listen, str(data_dir), "", exit_process=_no_exit, cluster_secret=secret
    )
    await node.start()
    return node


def _no_exit(status: int) -> None:
    raise AssertionError(f"node tried to exit with {status}")


@contextlib.asynccontextmanager
async def streaming(address: str) -> AsyncIterator[tuple[ledger_pb2_grpc.LedgerNodeStub, NodeStream]]:
    """A unary stub and a write stream to the node at `address`, closed after."""
    channel = grpc.aio.insecure_channel(address)
    stub = ledger_pb2_grpc.LedgerNodeStub(channel)
    stream = NodeStream(stub.WriteStream, "shard-1")
    try:
        yield stub, stream
    finally:
        await stream.close()
        await channel.close()


def apply(*transfers: types_pb2.Transfer) -> ledger_pb2.ApplyTransfersRequest:
    return ledger_pb2.ApplyTransfersRequest(transfers=transfers)


async def refusal(send: object) -> errors.BankError:
    with pytest.raises(errors.BankError) as caught:
        await send  # type: ignore[misc]
    return caught.value


def test_messages_share_one_stream_and_a_bad_one_gets_its_own_error(tmp_path: Path) -> None:
    asyncio.run(_share_and_refuse(tmp_path))


async def _share_and_refuse(tmp_path: Path) -> None:
    alice, bob = account(), account()
    node = await started(tmp_path / "shard-1")
    try:
        async with streaming(node.address) as (stub, stream):
            await stub.CreateAccounts(
                ledger_pb2.CreateAccountsRequest(accounts=[alice, bob]), timeout=DEADLINE_S
            )
            funded = await stream.send(apply(deposit(alice.id, 10_000)), DEADLINE_S)
            assert funded.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
            opened = stream._current
            # Concurrent messages on the one stream, each answered with its own items.
            moves = [move(alice.id, bob.id, 10 + i) for i in range(40)]
            replies = await asyncio.gather(*(stream.send(apply(m), DEADLINE_S) for m in moves))
            assert [r.transfers.transfers[0].id for r in replies] == [m.id for m in moves]
            assert all(
                r.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED for r in replies
            )

            # Bad messages: the precise status a unary call would end with...
            empty = await refusal(stream.send(apply(), DEADLINE_S))
            assert (empty.code, empty.reason) == (grpc.StatusCode.INVALID_ARGUMENT, errors.BATCH_EMPTY)
            newer = ledger_pb2.DecideRequest(
                epoch=7, items=[ledger_pb2.DecideItem(transfer_id="none", decision=ledger_pb2.DECISION_ABORT)]
            )
            await stream.send(newer, DEADLINE_S)
            stale = await refusal(
                stream.send(ledger_pb2.DecideRequest(epoch=6, items=newer.items), DEADLINE_S)
            )
            assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, errors.STALE_EPOCH)
            overdraft = await stream.send(apply(move(bob.id, alice.id, 10**9)), DEADLINE_S)
            assert overdraft.transfers.transfers[0].reason == errors.INSUFFICIENT_FUNDS

            # ...and the stream stays up: a resend with the same id answers the same record.
            again = await stream.send(apply(moves[0]), DEADLINE_S)
            assert again.transfers.transfers[0] == replies[0].transfers.transfers[0]
            assert stream._current is opened
            balances = await stub.GetAccounts(ledger_pb2.GetAccountsRequest(ids=[alice.id, bob.id]))
            moved = sum(m.amount for m in moves)
            assert [r.account.balance for r in balances.results] == [10_000 - moved, moved]
    finally:
        await node.stop(0)


def test_a_node_gone_fails_the_stream_unavailable_and_the_resend_moves_money_once(tmp_path: Path) -> None:
    asyncio.run(_node_gone(tmp_path))


async def _node_gone(tmp_path: Path) -> None:
    alice, bob = account(), account()
    nodes = [await started(tmp_path / "shard-1")]
    listen = nodes[0].address
    try:
        async with streaming(listen) as (stub, stream):
            await stub.CreateAccounts(
                ledger_pb2.CreateAccountsRequest(accounts=[alice, bob]), timeout=DEADLINE_S
            )
            await stream.send(apply(deposit(alice.id, 1_000)), DEADLINE_S)
            first = move(alice.id, bob.id, 300)
            await stream.send(apply(first), DEADLINE_S)  # applied, but say its reply was lost
            await nodes[0].stop()  # ends the stream (not held open for the whole grace)
            gone = await refusal(stream.send(apply(first), DEADLINE_S))
            assert gone.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert gone.reason == errors.SHARD_UNAVAILABLE

            nodes.append(await started(tmp_path / "shard-1", listen))
            for _ in range(50):  # the reopen backs off; the channel reconnects
                try:
                    resent = await stream.send(apply(first), DEADLINE_S)
                    break
                except errors.BankError as error:
                    assert error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the stream never reopened")
            assert resent.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
            balances = await stub.GetAccounts(ledger_pb2.GetAccountsRequest(ids=[alice.id, bob.id]))
            assert [r.account.balance for r in balances.results] == [700, 300]
    finally:
        await nodes[-1].stop(0)


def test_a_stream_without_credentials_is_refused_and_one_with_them_served(tmp_path: Path) -> None:
    asyncio.run(_credentials(tmp_path))


async def _credentials(tmp_path: Path) -> None:
    node = await started(tmp_path / "shard-1", secret=SECRET)
    plain = grpc.aio.insecure_channel(node.address)
    signed = grpc.aio.insecure_channel(
        node.address, interceptors=service_auth.channel_interceptors(SECRET, "gw-1")
    )
    bare = NodeStream(ledger_pb2_grpc.LedgerNodeStub(plain).WriteStream, "shard-1")
    trusted = NodeStream(ledger_pb2_grpc.LedgerNodeStub(signed).WriteStream, "shard-1")
    alice = account()
    try:
        refused = await refusal(bare.send(apply(deposit(alice.id, 5)), DEADLINE_S))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            errors.SERVICE_UNAUTHENTICATED,
        )
        create = ledger_pb2_grpc.LedgerNodeStub(signed).CreateAccounts
        await create(ledger_pb2.CreateAccountsRequest(accounts=[alice]), timeout=DEADLINE_S)
        served = await trusted.send(apply(deposit(alice.id, 5)), DEADLINE_S)
        assert served.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        assert node.ledger.accounts[alice.id].balance == 5
    finally:
        await bare.close()
        await trusted.close()
        await plain.close()
        await signed.close()
        await node.stop(0)


class SilentCall:
    """A WriteStream call whose node reads every message and answers none."""

    def __init__(self, requests: AsyncIterator[ledger_pb2.WriteMessage]) -> None:
        self.received: list[ledger_pb2.WriteMessage] = []
        self.cancelled = asyncio.Event()
        self._pull = asyncio.ensure_future(self._consume(requests))

    async def _consume(self, requests: AsyncIterator[ledger_pb2.WriteMessage]) -> None:
        async for message in requests:
            self.received.append(message)

    def cancel(self) -> bool:
        self.cancelled.set()
        self._pull.cancel()
        return True

    def __aiter__(self) -> SilentCall:
        return self

    async def __anext__(self) -> ledger_pb2.WriteReply:
        await self.cancelled.wait()
        raise asyncio.CancelledError


def test_a_silent_stream_times_callers_out_and_is_replaced() -> None:
    asyncio.run(_silent())


async def _silent() -> None:
    calls: list[SilentCall] = []

    def open_stream(requests: AsyncIterator[ledger_pb2.WriteMessage]) -> SilentCall:
        calls.append(SilentCall(requests))
        return calls[-1]

    stream = NodeStream(open_stream, "shard-1", in_flight_max=1)
    late = await refusal(stream.send(apply(deposit(1, 5)), 0.05))
    assert (late.code, late.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, errors.SHARD_UNAVAILABLE)
    assert len(calls[0].received) == 1
    assert calls[0].cancelled.is_set()  # nothing came back since it was sent: torn down

    # The one slot is taken by a sender that waits; the next one times out waiting for room.
    waiting = asyncio.ensure_future(stream.send(apply(deposit(1, 6)), 1.0))
    await asyncio.sleep(node_stream.REOPEN_BACKOFF_S_MAX / 2)
    crowded = await refusal(stream.send(apply(deposit(1, 7)), 0.05))
    assert crowded.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(calls) == 2  # reopened for the waiting sender, not for the crowded one
    assert [m.apply_transfers.transfers[0].amount for m in calls[1].received] == [6]
    await stream.close()
    broken = await refusal(waiting)
    assert broken.code == grpc.StatusCode.UNAVAILABLE
    closed = await refusal(stream.send(apply(deposit(1, 8)), 1.0))
    assert closed.code == grpc.StatusCode.UNAVAILABLE


def test_a_node_without_the_stream_is_served_by_its_unary_calls(tmp_path: Path) -> None:
    asyncio.run(_without_stream(tmp_path))


async def _without_stream(tmp_path: Path) -> None:
    """A real node answering UNIMPLEMENTED for the stream (as an older node
    would: the method it is asked for does not exist there): the request
    goes as its unary call, the reply has the stream's shape, refusals read
    the same, and the stream is not tried again until STREAM_RETRY_S."""
    alice, bob = account(), account()
    node = await started(tmp_path / "shard-1")
    channel = grpc.aio.insecure_channel(node.address)
    stub = ledger_pb2_grpc.LedgerNodeStub(channel)
    missing = channel.stream_stream(
        "/shardbank.v1.LedgerNode/NoSuchWriteStream",
        request_serializer=ledger_pb2.WriteMessage.SerializeToString,
        response_deserializer=ledger_pb2.WriteReply.FromString,
    )
    opens: list[int] = []

    def open_missing(requests: AsyncIterator[ledger_pb2.WriteMessage]) -> object:
        opens.append(1)
        return missing(requests)

    now = [1_000.0]
    stream = NodeStream(open_missing, "shard-1", clock=lambda: now[0], unary=node_stream.unary_calls(stub))
    try:
        await stub.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=[alice, bob]), timeout=DEADLINE_S)
        funded = await stream.send(apply(deposit(alice.id, 10_000)), DEADLINE_S)
        assert funded.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        paid = await stream.send(apply(move(alice.id, bob.id, 2_500)), DEADLINE_S)
        assert paid.transfers.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        legs = await stream.send(
            ledger_pb2.DecideRequest(
                epoch=3, items=[ledger_pb2.DecideItem(transfer_id="none", decision=ledger_pb2.DECISION_ABORT)]
            ),
            DEADLINE_S,
        )
        assert legs.WhichOneof("body") == "legs"
        empty = await refusal(stream.send(apply(), DEADLINE_S))
        assert (empty.code, empty.reason) == (grpc.StatusCode.INVALID_ARGUMENT, errors.BATCH_EMPTY)
        assert len(opens) == 1, "the stream is not retried at every send"
        now[0] += node_stream.STREAM_RETRY_S
        await stream.send(apply(move(alice.id, bob.id, 1)), DEADLINE_S)
        assert len(opens) == 2, "the stream is tried again later (the node may have been upgraded)"
        balances = await stub.GetAccounts(ledger_pb2.GetAccountsRequest(ids=[alice.id, bob.id]), timeout=5)
        assert [r.account.balance for r in balances.results] == [7_499, 2_501]
    finally:
        await stream.close()
        await channel.close()
        await node.stop()


def test_without_unary_calls_the_unimplemented_stream_is_the_answer() -> None:
    async def run() -> None:
        class Missing:
            def __init__(self, requests: AsyncIterator[ledger_pb2.WriteMessage]) -> None:
                pass

            def __aiter__(self) -> Missing:
                return self

            async def __anext__(self) -> ledger_pb2.WriteReply:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no such method"
                )

            def cancel(self) -> bool:
                return True

        stream = NodeStream(Missing, "shard-1")
        refused = await refusal(stream.send(apply(deposit(6222020000000001, 1)), DEADLINE_S))
        assert refused.code == grpc.StatusCode.UNIMPLEMENTED
        await stream.close()

    asyncio.run(run())
