"""The client against a tiny in-process fake `Bank` on a real grpc.aio server
(port 0): retries reuse the transfer id, errors map by reason, batches return
per-item outcomes, coalescing shares batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from clients import errors
from clients.client import AsyncBankClient, BankClient
from clients.retry import NO_RETRY, RetryPolicy
from shardbank import errors as bank_errors
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, types_pb2

FAST = RetryPolicy(attempts_max=4, total_s_max=10.0, backoff_initial_s=0.001, backoff_max_s=0.01)
ACCOUNT = 6222020000000008  # any 16-digit number: the fake does not check


def committed(item: types_pb2.Transfer) -> types_pb2.Transfer:
    out = types_pb2.Transfer()
    out.CopyFrom(item)
    out.status = types_pb2.TRANSFER_STATUS_COMMITTED
    return out


def refused(item: types_pb2.Transfer, code: grpc.StatusCode, reason: str) -> types_pb2.Transfer:
    out = types_pb2.Transfer()
    out.CopyFrom(item)
    out.status = types_pb2.TRANSFER_STATUS_ABORTED
    out.code = code.value[0]
    out.reason = reason
    out.message = reason.lower()
    return out


class FakeBank(bank_pb2_grpc.BankServicer):
    """Answers SubmitTransfers with `decide(call_number, item)`; fails the
    first `unavailable_calls` calls with a gRPC UNAVAILABLE (rich status)."""

    def __init__(
        self,
        unavailable_calls: int = 0,
        decide: Callable[[int, types_pb2.Transfer], types_pb2.Transfer] = lambda n, t: committed(t),
    ) -> None:
        self.unavailable_calls = unavailable_calls
        self.decide = decide
        self.submitted: list[list[types_pb2.Transfer]] = []
        self.lock = threading.Lock()

    async def SubmitTransfers(self, request: Any, context: Any) -> ledger_pb2.TransfersResponse:
        with self.lock:
            self.submitted.append(list(request.transfers))
            number = len(self.submitted)
        if number <= self.unavailable_calls:
            error = bank_errors.BankError(grpc.StatusCode.UNAVAILABLE, bank_errors.SHARD_UNAVAILABLE, "down")
            await context.abort_with_status(error.to_status())
        return ledger_pb2.TransfersResponse(transfers=[self.decide(number, t) for t in request.transfers])

    async def GetAccount(self, request: Any, context: Any) -> types_pb2.Account:
        error = bank_errors.not_found(bank_errors.ACCOUNT_NOT_FOUND, f"no account {request.account_id}")
        await context.abort_with_status(error.to_status())
        raise AssertionError

    async def OpenAccounts(self, request: Any, context: Any) -> ledger_pb2.AccountsResponse:
        item = request.accounts[0]
        if item.holder.phone == "+10000000":
            return ledger_pb2.AccountsResponse(
                results=[ledger_pb2.AccountResult(code=3, reason=bank_errors.INVALID_PHONE, message="bad")]
            )
        account = types_pb2.Account(id=ACCOUNT, currency=item.currency, type=item.type, holder=item.holder)
        return ledger_pb2.AccountsResponse(results=[ledger_pb2.AccountResult(account=account)])

    async def GetTransfer(self, request: Any, context: Any) -> types_pb2.Transfer:
        await context.abort(grpc.StatusCode.NOT_FOUND, "plain status without details")
        raise AssertionError

    async def UpdateContacts(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake")

    async def ChangeAccountStatus(self, request: Any, context: Any) -> ledger_pb2.AccountsResponse:
        item = request.items[0]
        return ledger_pb2.AccountsResponse(
            results=[ledger_pb2.AccountResult(code=9, reason=bank_errors.ACCOUNT_FROZEN, message=item.reason)]
        )

    async def ListHistory(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake")

    async def GetClusterInfo(self, request: Any, context: Any) -> bank_pb2.ClusterInfo:
        return bank_pb2.ClusterInfo(slot_map_version=7, slot_count=4096)


class ServerThread:
    """A grpc.aio server on 127.0.0.1:0 running its own loop in a thread, so
    both the sync and the async client can talk to it."""

    def __init__(self, servicer: FakeBank) -> None:
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: grpc.aio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        bank_pb2_grpc.add_BankServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(10)
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        asyncio.run_coroutine_threadsafe(self._server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[FakeBank], str]]:
    servers: list[ServerThread] = []

    def start(servicer: FakeBank) -> str:
        server = ServerThread(servicer)
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.__exit__()


def test_sync_retry_resends_the_same_transfer_id(serve: Callable[[FakeBank], str]) -> None:
    fake = FakeBank(unavailable_calls=1)
    with BankClient(serve(fake), deadline_s=5, retry_policy=FAST) as bank:
        outcome = bank.deposit(ACCOUNT, 10050, "CNY", memo="cash")
    assert len(fake.submitted) == 2
    first, second = fake.submitted[0][0], fake.submitted[1][0]
    assert first.id == second.id == outcome.id
    assert str(uuid.UUID(first.id)) == first.id
    assert first == second
    assert outcome.status == types_pb2.TRANSFER_STATUS_COMMITTED
    assert (first.kind, first.debit_account_id, first.credit_account_id) == (
        types_pb2.TRANSFER_KIND_DEPOSIT,
        0,
        ACCOUNT,
    )


def test_async_retry_resends_the_same_transfer_id(serve: Callable[[FakeBank], str]) -> None:
    fake = FakeBank(unavailable_calls=2)
    target = serve(fake)

    async def main() -> types_pb2.Transfer:
        async with AsyncBankClient(target, deadline_s=5, retry_policy=FAST) as bank:
            return await bank.transfer(ACCOUNT, 6222020000000016, 100, "CNY")

    outcome = asyncio.run(main())
    assert len(fake.submitted) == 3
    assert {batch[0].id for batch in fake.submitted} == {outcome.id}


def test_item_unavailable_is_retried_with_the_same_id(serve: Callable[[FakeBank], str]) -> None:
    def decide(number: int, item: types_pb2.Transfer) -> types_pb2.Transfer:
        if number == 1:
            return refused(item, grpc.StatusCode.UNAVAILABLE, bank_errors.SHARD_UNAVAILABLE)
        return committed(item)

    fake = FakeBank(decide=decide)
    given = "6F9619FF-8B86-4011-B42D-00C04FC964FF"
    with BankClient(serve(fake), retry_policy=FAST) as bank:
        outcome = bank.withdraw(ACCOUNT, 1, "CNY", transfer_id=given)
    assert [batch[0].id for batch in fake.submitted] == [given.lower()] * 2
    assert outcome.status == types_pb2.TRANSFER_STATUS_COMMITTED


def test_retries_are_bounded(serve: Callable[[FakeBank], str]) -> None:
    fake = FakeBank(unavailable_calls=100)
    with BankClient(serve(fake), retry_policy=FAST) as bank, pytest.raises(errors.Unavailable) as caught:
        bank.deposit(ACCOUNT, 1, "CNY")
    assert len(fake.submitted) == FAST.attempts_max
    assert caught.value.reason == bank_errors.SHARD_UNAVAILABLE
    assert len({batch[0].id for batch in fake.submitted}) == 1


def test_async_retries_are_bounded_and_no_retry_tries_once(serve: Callable[[FakeBank], str]) -> None:
    """The first try runs outside tenacity; the tries in all must still be exactly the policy's."""
    fake = FakeBank(unavailable_calls=100)
    target = serve(fake)

    async def main(policy: RetryPolicy) -> None:
        async with AsyncBankClient(target, deadline_s=5, retry_policy=policy) as bank:
            await bank.deposit(ACCOUNT, 1, "CNY")

    with pytest.raises(errors.Unavailable):
        asyncio.run(main(FAST))
    assert len(fake.submitted) == FAST.attempts_max
    with pytest.raises(errors.Unavailable):
        asyncio.run(main(NO_RETRY))
    assert len(fake.submitted) == FAST.attempts_max + 1


def test_refused_item_raises_by_reason_without_retry(serve: Callable[[FakeBank], str]) -> None:
    fake = FakeBank(decide=lambda n, t: refused(t, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"))
    bank = BankClient(serve(fake), retry_policy=FAST)
    with pytest.raises(errors.InsufficientFunds) as caught:
        bank.transfer(ACCOUNT, 6222020000000016, 100, "CNY")
    bank.close_channel()
    assert len(fake.submitted) == 1
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.transfer is not None
    assert caught.value.transfer.id == fake.submitted[0][0].id
    assert isinstance(caught.value, bank_errors.BankError)


def test_batch_returns_outcomes_and_stamps_ids(serve: Callable[[FakeBank], str]) -> None:
    def decide(number: int, item: types_pb2.Transfer) -> types_pb2.Transfer:
        if item.amount == 2:
            return refused(item, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")
        return committed(item)

    fake = FakeBank(unavailable_calls=1, decide=decide)
    batch = [
        types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_DEPOSIT, credit_account_id=ACCOUNT, amount=1),
        types_pb2.Transfer(kind=types_pb2.TRANSFER_KIND_DEPOSIT, credit_account_id=ACCOUNT, amount=2),
    ]
    with BankClient(serve(fake), retry_policy=FAST) as bank:
        outcomes = bank.submit_transfers(batch)
    assert [o.code for o in outcomes] == [0, 9]
    assert [o.id for o in outcomes] == [t.id for t in fake.submitted[0]] == [t.id for t in fake.submitted[1]]
    assert all(o.id for o in outcomes)
    assert batch[0].id == ""  # the caller's messages are not modified


def test_rpc_errors_map_by_error_info_reason(serve: Callable[[FakeBank], str]) -> None:
    target = serve(FakeBank())
    with BankClient(target, retry_policy=FAST) as bank:
        with pytest.raises(errors.AccountNotFound) as caught:
            bank.get_account(ACCOUNT)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(errors.NotFound) as plain:
            bank.get_transfer(str(uuid.uuid4()))
        assert plain.value.reason == "NOT_FOUND"
        with pytest.raises(errors.AccountFrozen):
            bank.freeze(ACCOUNT, "fraud check")
        with pytest.raises(errors.InvalidArgument) as invalid:
            bank.open_account("Ann", "E1234567", "+10000000", id_type="passport")
        assert invalid.value.reason == bank_errors.INVALID_PHONE
        assert bank.cluster_info().slot_map_version == 7

    async def main() -> None:
        async with AsyncBankClient(target, retry_policy=FAST) as bank:
            with pytest.raises(errors.AccountNotFound):
                await bank.get_account(ACCOUNT)
            account = await bank.open_account("Ann", "E1234567", "+12025550123", id_type="passport")
            assert account.id == ACCOUNT

    asyncio.run(main())


def test_bad_transfer_id_and_choices_fail_before_sending(serve: Callable[[FakeBank], str]) -> None:
    fake = FakeBank()
    with BankClient(serve(fake), retry_policy=FAST) as bank:
        with pytest.raises(errors.InvalidArgument) as caught:
            bank.deposit(ACCOUNT, 1, "CNY", transfer_id="not-a-uuid")
        assert caught.value.reason == bank_errors.INVALID_TRANSFER_ID
        with pytest.raises(errors.InvalidArgument):
            bank.transfer(ACCOUNT, ACCOUNT, 1, "CNY", kind="gift")
        with pytest.raises(errors.InvalidArgument):
            bank.open_account("Ann", "E1234567", "+12025550123", account_type="joint")
    assert fake.submitted == []


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"127.0.0.1:{port}"


def test_unreachable_gateway_is_unavailable_after_bounded_retries() -> None:
    with (
        closed_port() as target,
        BankClient(target, deadline_s=2, retry_policy=FAST) as bank,
        pytest.raises(errors.Unavailable),
    ):
        bank.deposit(ACCOUNT, 1, "CNY")


def test_coalescing_shares_one_batch(serve: Callable[[FakeBank], str]) -> None:
    fake = FakeBank()
    target = serve(fake)
    count = 16

    async def main() -> list[types_pb2.Transfer]:
        # A long linger: the batch is sent because it is full, not because time passed.
        async with AsyncBankClient(
            target, retry_policy=FAST, coalesce=True, coalesce_items_max=count, coalesce_linger_s=30
        ) as bank:
            return await asyncio.gather(*(bank.deposit(ACCOUNT, n + 1, "CNY") for n in range(count)))

    outcomes = asyncio.run(main())
    assert len(fake.submitted) == 1
    assert len(fake.submitted[0]) == count
    assert [o.amount for o in outcomes] == list(range(1, count + 1))
    assert len({o.id for o in outcomes}) == count


def test_coalescing_flushes_after_linger_and_raises_per_item(serve: Callable[[FakeBank], str]) -> None:
    def decide(number: int, item: types_pb2.Transfer) -> types_pb2.Transfer:
        if item.amount == 3:
            return refused(item, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
        return committed(item)

    fake = FakeBank(unavailable_calls=1, decide=decide)
    target = serve(fake)

    async def main() -> list[types_pb2.Transfer | BaseException]:
        async with AsyncBankClient(target, retry_policy=FAST, coalesce=True) as bank:
            calls = [bank.withdraw(ACCOUNT, amount, "CNY") for amount in (1, 2, 3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], errors.InsufficientFunds)
    assert [r.amount for r in results[:2] if isinstance(r, types_pb2.Transfer)] == [1, 2]
    sent_ids = {t.id for batch in fake.submitted for t in batch}
    assert len(sent_ids) == 3  # retried items kept their ids
