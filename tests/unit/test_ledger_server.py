"""One in-process node on port 0 (standalone), through a real grpc.aio channel."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger_node.server import SERVICE_NAME, NodeServer, create_server
from ledger_node.testing import account, deposit, move
from shardbank import errors, limits
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

DEADLINE_S = 10.0


async def started(data_dir: Path, exits: list[int] | None = None) -> NodeServer:
    node = await create_server(
        "shard-1",
        "127.0.0.1:0",
        str(data_dir),
        "",
        exit_process=(exits.append if exits is not None else _no_exit),
    )
    await node.start()
    return node


def _no_exit(status: int) -> None:
    raise AssertionError(f"node tried to exit with {status}")


async def rpc_error(call: object) -> errors.BankError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return errors.from_rpc_error(caught.value)


def test_open_deposit_transfer_history_paging_and_restart(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


async def _scenario(tmp_path: Path) -> None:
    alice, bob = account(), account()
    node = await started(tmp_path / "shard-1")
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = ledger_pb2_grpc.LedgerNodeStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=DEADLINE_S)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        opened = await stub.CreateAccounts(
            ledger_pb2.CreateAccountsRequest(accounts=[alice, bob], actor="teller-1"), timeout=DEADLINE_S
        )
        assert [r.code for r in opened.results] == [0, 0]
        posted = await stub.ApplyTransfers(
            ledger_pb2.ApplyTransfersRequest(transfers=[deposit(alice.id, 10_000)]), timeout=DEADLINE_S
        )
        assert posted.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        # Concurrent callers ride the same group commits.
        moves = [move(alice.id, bob.id, 10 + i) for i in range(60)]
        replies = await asyncio.gather(
            *(
                stub.ApplyTransfers(ledger_pb2.ApplyTransfersRequest(transfers=[m]), timeout=DEADLINE_S)
                for m in moves
            )
        )
        assert all(r.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED for r in replies)
        moved = sum(m.amount for m in moves)

        got = await stub.GetAccounts(
            ledger_pb2.GetAccountsRequest(ids=[alice.id, bob.id]), timeout=DEADLINE_S
        )
        assert [r.account.balance for r in got.results] == [10_000 - moved, moved]
        assert got.results[0].account.available == 10_000 - moved

        seqs: list[int] = []
        token = ""
        while True:
            page = await stub.ListHistory(
                ledger_pb2.ListHistoryRequest(account_id=alice.id, page_size=25, page_token=token),
                timeout=DEADLINE_S,
            )
            seqs.extend(e.journal_seq for e in page.entries)
            token = page.next_page_token
            if not token:
                break
        assert len(seqs) == 61 and seqs == sorted(seqs, reverse=True)
        first = await stub.ListHistory(ledger_pb2.ListHistoryRequest(account_id=alice.id), timeout=DEADLINE_S)
        assert len(first.entries) == limits.HISTORY_PAGE_SIZE_DEFAULT
        assert first.entries[0].balance_after == 10_000 - moved
        for newer, older in zip(first.entries, first.entries[1:], strict=False):
            assert newer.balance_after - newer.balance_delta == older.balance_after

        bad_token = await rpc_error(
            stub.ListHistory(
                ledger_pb2.ListHistoryRequest(account_id=bob.id, page_token="AAAA"), timeout=DEADLINE_S
            )
        )
        assert (bad_token.code, bad_token.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            errors.INVALID_PAGE_TOKEN,
        )
        empty = await rpc_error(stub.ApplyTransfers(ledger_pb2.ApplyTransfersRequest(), timeout=DEADLINE_S))
        assert (empty.code, empty.reason) == (grpc.StatusCode.INVALID_ARGUMENT, errors.BATCH_EMPTY)
        big = ledger_pb2.ApplyTransfersRequest(transfers=[types_pb2.Transfer()] * 8193)
        too_big = await rpc_error(stub.ApplyTransfers(big, timeout=DEADLINE_S))
        assert (too_big.code, too_big.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.BATCH_TOO_LARGE)

        found = await stub.GetTransfers(
            ledger_pb2.GetTransfersRequest(ids=[moves[0].id, str(uuid.uuid4())]), timeout=DEADLINE_S
        )
        assert found.transfers[0].status == types_pb2.TRANSFER_STATUS_COMMITTED
        assert found.transfers[1].reason == errors.TRANSFER_NOT_FOUND
        info = await stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=DEADLINE_S)
        assert (info.shard_id, info.accounts, info.slots_owned) == ("shard-1", 3, 4096)
        assert info.transfers_applied == 61 and info.address == node.address
    await node.stop()

    # Restart from disk: the same accounts, journal head and records.
    again = await started(tmp_path / "shard-1")
    assert (again.ledger.journal_seq, again.ledger.journal_hash) == (info.journal_seq, info.journal_head_hash)
    async with grpc.aio.insecure_channel(again.address) as channel:
        stub = ledger_pb2_grpc.LedgerNodeStub(channel)
        got_again = await stub.GetAccounts(
            ledger_pb2.GetAccountsRequest(ids=[alice.id, bob.id]), timeout=DEADLINE_S
        )
        assert got_again == got
        replay = await stub.ApplyTransfers(
            ledger_pb2.ApplyTransfersRequest(transfers=[moves[0]]), timeout=DEADLINE_S
        )
        assert replay.transfers[0] == replies[0].transfers[0]
        info_again = await stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=DEADLINE_S)
        assert info_again.transfers_applied == 61
    await again.stop()


def test_broken_invariant_stops_serving_and_exits_70(tmp_path: Path) -> None:
    asyncio.run(_broken(tmp_path))


async def _broken(tmp_path: Path) -> None:
    exits: list[int] = []
    node = await started(tmp_path / "shard-1", exits)
    alice, bob = account(), account()
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = ledger_pb2_grpc.LedgerNodeStub(channel)
        await stub.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=[alice, bob]), timeout=DEADLINE_S)
        await stub.ApplyTransfers(
            ledger_pb2.ApplyTransfersRequest(transfers=[deposit(alice.id, 100)]), timeout=DEADLINE_S
        )
        node.ledger.accounts[alice.id].held = -5  # memory corrupted behind the writer's back
        failed = await rpc_error(
            stub.ApplyTransfers(
                ledger_pb2.ApplyTransfersRequest(transfers=[move(alice.id, bob.id, 1)]), timeout=DEADLINE_S
            )
        )
        assert failed.code == grpc.StatusCode.UNAVAILABLE
        assert exits == [70]
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=DEADLINE_S)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await node.stop()


def test_a_bad_activity_query_gets_its_status_not_an_unknown_error(tmp_path: Path) -> None:
    """GetActivity had no failure guard: a refusal left the handler as an
    exception, and the caller read UNKNOWN with the exception's class name."""
    asyncio.run(_bad_activity(tmp_path))


async def _bad_activity(tmp_path: Path) -> None:
    node = await started(tmp_path / "shard-1")
    try:
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = ledger_pb2_grpc.LedgerNodeStub(channel)
            for request, code, reason in (
                (ledger_pb2.GetActivityRequest(), grpc.StatusCode.INVALID_ARGUMENT, errors.BATCH_EMPTY),
                (
                    ledger_pb2.GetActivityRequest(customer_ids=["c" * 65]),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    errors.INVALID_ARGUMENT,
                ),
            ):
                refused = await rpc_error(stub.GetActivity(request, timeout=DEADLINE_S))
                assert (refused.code, refused.reason) == (code, reason)
                assert "Error" not in refused.message and "Traceback" not in refused.message
    finally:
        await node.stop(0)
