"""The servicer's one error path (in-process server on port 0), and the pure
helpers around the handlers: batch split/merge, conversions, plans."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway import convert, handlers, plans, validation
from gateway.dispatch import Budget
from gateway.service import BankServicer
from shardbank import errors, ids
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, types_pb2


class FakeHandlers:
    async def get_account(self, request: bank_pb2.GetAccountRequest, budget: Budget) -> types_pb2.Account:
        if request.account_id == 1:
            raise errors.not_found(errors.ACCOUNT_NOT_FOUND, "no such account")
        if request.account_id == 2:
            raise RuntimeError("secret internals at /srv/node.py line 42")
        assert budget.remaining_s() > 0
        return types_pb2.Account(id=request.account_id)


async def call_get_account(account_id: int) -> types_pb2.Account | grpc.aio.AioRpcError:
    server = grpc.aio.server()
    bank_pb2_grpc.add_BankServicer_to_server(BankServicer(FakeHandlers()), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = bank_pb2_grpc.BankStub(channel)
            try:
                reply: types_pb2.Account = await stub.GetAccount(
                    bank_pb2.GetAccountRequest(account_id=account_id), timeout=5
                )
                return reply
            except grpc.aio.AioRpcError as exc:
                return exc
    finally:
        await server.stop(None)


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_domain_error_becomes_a_rich_status() -> None:
    exc = asyncio.run(call_get_account(1))
    assert isinstance(exc, grpc.aio.AioRpcError)
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(exc).reason == errors.ACCOUNT_NOT_FOUND


def test_unexpected_error_is_internal_with_a_request_id_and_no_trace() -> None:
    exc = asyncio.run(call_get_account(2))
    assert isinstance(exc, grpc.aio.AioRpcError)
    assert exc.code() == grpc.StatusCode.INTERNAL
    info = error_info(exc)
    assert info.reason == errors.INTERNAL
    request_id = info.metadata["request_id"]
    assert uuid.UUID(request_id)
    assert request_id in (exc.details() or "")
    assert "secret" not in (exc.details() or "") and "Traceback" not in (exc.details() or "")


def test_success_passes_through() -> None:
    reply = asyncio.run(call_get_account(ids.new_account_id()))
    assert isinstance(reply, types_pb2.Account)


def test_split_and_merge_keep_positions() -> None:
    good = types_pb2.Transfer(
        id=str(uuid.uuid4()),
        kind=types_pb2.TRANSFER_KIND_DEPOSIT,
        credit_account_id=ids.new_account_id(),
        amount=5,
        currency="CNY",
    )
    bad = types_pb2.Transfer(id="nope", kind=types_pb2.TRANSFER_KIND_DEPOSIT, amount=5, currency="CNY")
    results, indices, clean = handlers.split_valid(
        [bad, good, bad], validation.check_transfer, convert.rejected_transfer
    )
    assert indices == [1]
    assert [c.id for c in clean] == [good.id]
    routed = [types_pb2.Transfer(id=good.id, status=types_pb2.TRANSFER_STATUS_COMMITTED)]
    merged = handlers.merge(results, indices, routed)
    assert [m.status for m in merged] == [
        types_pb2.TRANSFER_STATUS_REJECTED,
        types_pb2.TRANSFER_STATUS_COMMITTED,
        types_pb2.TRANSFER_STATUS_REJECTED,
    ]
    assert merged[0].code == 3 and merged[0].reason == errors.INVALID_TRANSFER_ID and merged[0].id == "nope"


@pytest.mark.parametrize(
    ("code", "cross_shard", "status"),
    [
        (grpc.StatusCode.UNAVAILABLE, False, types_pb2.TRANSFER_STATUS_UNSPECIFIED),
        (grpc.StatusCode.UNAVAILABLE, True, types_pb2.TRANSFER_STATUS_PENDING),
        (grpc.StatusCode.INVALID_ARGUMENT, True, types_pb2.TRANSFER_STATUS_REJECTED),
    ],
)
def test_unsettled_transfer_never_claims_commit(
    code: grpc.StatusCode, cross_shard: bool, status: int
) -> None:
    item = types_pb2.Transfer(id=str(uuid.uuid4()), amount=7, currency="CNY")
    outcome = convert.unsettled_transfer(item, errors.BankError(code, "WHY", "msg"), cross_shard)
    assert outcome.status == status
    assert outcome.code == code.value[0]
    assert (outcome.id, outcome.amount, outcome.reason) == (item.id, 7, "WHY")


def test_public_account_is_a_copy() -> None:
    account = types_pb2.Account(id=1, holder=types_pb2.Holder(name="Li Lei", phone="+8613800000000"))
    shown = convert.public_account(account)
    assert shown == account and shown is not account
    result = convert.public_account_result(ledger_pb2.AccountResult(account=account))
    assert result.account == account
    assert not convert.public_account_result(ledger_pb2.AccountResult(code=5)).HasField("account")


def test_same_opening_and_new_id() -> None:
    holder = types_pb2.Holder(
        name="Li", id_type=types_pb2.ID_DOCUMENT_TYPE_PASSPORT, id_number="X", phone="+8613800000000"
    )
    sent = types_pb2.Account(id=5, currency="CNY", type=types_pb2.ACCOUNT_TYPE_PERSONAL, holder=holder)
    found: Any = types_pb2.Account()
    found.CopyFrom(sent)
    found.status = types_pb2.ACCOUNT_STATUS_ACTIVE
    found.created_at_unix_ms = 123
    assert plans.same_opening(sent, found)
    found.holder.phone = "+8613900000000"
    assert not plans.same_opening(sent, found)
    renewed = plans.with_new_id(sent, new_id=lambda: 42)
    assert renewed.id == 42 and sent.id == 5 and renewed.holder == sent.holder
