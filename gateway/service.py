"""The `Bank` servicer: thin. Each RPC hands its request and the caller's
deadline to a handler; every refusal becomes a gRPC status in `_run`, the one
place where that happens. An unexpected exception is logged with its
traceback under a request id and the caller gets INTERNAL with that id,
never the trace.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from gateway.dispatch import Budget
from gateway.handlers import BankHandlers
from gateway.upstream import unavailable
from shardbank import errors, limits, metrics
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, types_pb2

log = structlog.get_logger("gateway.service")

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)
# Longest a call may keep the gateway retrying, whatever deadline the caller set.
BUDGET_S_MAX = 60.0


def budget_of(context: Context) -> Budget:
    """The caller's deadline, or the default one when the call has none."""
    remaining = context.time_remaining()
    seconds = limits.CALL_DEADLINE_S if remaining is None else min(float(remaining), BUDGET_S_MAX)
    return Budget(seconds)


async def run(
    name: str,
    handler: Callable[[Request, Budget], Awaitable[Response]],
    request: Request,
    context: Context,
) -> Response:
    """Serve one public RPC: the handler's refusal, a downstream failure or a
    bug becomes a gRPC status here and nowhere else (shared by Bank and Risk)."""
    began = time.perf_counter()
    try:
        return await handler(request, budget_of(context))
    except errors.BankError as error:
        failure = error
    except grpc.RpcError as exc:  # a downstream call not converted by its handler
        failure = errors.from_rpc_error(exc)
        if failure.code == grpc.StatusCode.UNAVAILABLE:
            failure = unavailable(errors.SHARD_UNAVAILABLE, "a downstream service is unavailable")
    except asyncio.CancelledError:
        raise
    except Exception:
        request_id = str(uuid.uuid4())
        log.exception("internal_error", rpc=name, request_id=request_id)
        failure = errors.BankError(
            grpc.StatusCode.INTERNAL, errors.INTERNAL, f"internal error; request id {request_id}"
        )
        failure.metadata["request_id"] = request_id
    finally:
        metrics.RPC_DURATION.labels(metrics.GATEWAY, name).observe(time.perf_counter() - began)
    metrics.RPC_FAILURES.labels(metrics.GATEWAY, name, failure.code.name).inc()
    if failure.code != grpc.StatusCode.INVALID_ARGUMENT:
        log.info("refused", rpc=name, code=failure.code.name, reason=failure.reason)
    await errors.abort(context, failure)


class BankServicer(bank_pb2_grpc.BankServicer):
    def __init__(self, handlers: BankHandlers) -> None:
        self._handlers = handlers

    async def _run(
        self,
        name: str,
        handler: Callable[[Request, Budget], Awaitable[Response]],
        request: Request,
        context: Context,
    ) -> Response:
        return await run(name, handler, request, context)

    async def OpenAccounts(
        self, request: bank_pb2.OpenAccountsRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        return await self._run("OpenAccounts", self._handlers.open_accounts, request, context)

    async def GetAccount(self, request: bank_pb2.GetAccountRequest, context: Context) -> types_pb2.Account:
        return await self._run("GetAccount", self._handlers.get_account, request, context)

    async def UpdateContacts(
        self, request: ledger_pb2.UpdateContactsRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        return await self._run("UpdateContacts", self._handlers.update_contacts, request, context)

    async def ChangeAccountStatus(
        self, request: ledger_pb2.ChangeStatusRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        return await self._run("ChangeAccountStatus", self._handlers.change_status, request, context)

    async def SubmitTransfers(
        self, request: bank_pb2.SubmitTransfersRequest, context: Context
    ) -> ledger_pb2.TransfersResponse:
        return await self._run("SubmitTransfers", self._handlers.submit_transfers, request, context)

    async def GetTransfer(self, request: bank_pb2.GetTransferRequest, context: Context) -> types_pb2.Transfer:
        return await self._run("GetTransfer", self._handlers.get_transfer, request, context)

    async def ListHistory(
        self, request: ledger_pb2.ListHistoryRequest, context: Context
    ) -> ledger_pb2.ListHistoryResponse:
        return await self._run("ListHistory", self._handlers.list_history, request, context)

    async def GetClusterInfo(
        self, request: bank_pb2.GetClusterInfoRequest, context: Context
    ) -> bank_pb2.ClusterInfo:
        return await self._run("GetClusterInfo", self._handlers.get_cluster_info, request, context)
