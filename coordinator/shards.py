"""Calls from the coordinator to ledger nodes, in one place.

Every call has a deadline, carries the term's epoch, and turns every failure
into a `BankError` value (never an exception) so the protocol code can treat a
dead shard as just another answer. A STALE_EPOCH refusal means a newer leader
exists: the call steps this coordinator down before returning.

The writes (Prepare, Decide, Finish, ApplyTransfers) go as messages on the
coordinator's write stream to each node (`shardbank.node_stream`: a message
costs both ends far less CPU than a unary call); their refusals read exactly
as the unary statuses would. Reads stay unary calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
import structlog

from shardbank import errors
from shardbank.directory import UnknownShard
from shardbank.node_stream import NodeStream, WriteRequest
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

log = structlog.get_logger("shards")

T = TypeVar("T")
# One call to a shard: (shard id, timeout s) -> its answer; raises on failure.
Send = Callable[[str, float], Awaitable[T]]


class Leadership(Protocol):
    """The part of `election.Election` the protocol needs."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def epoch(self) -> int: ...

    def step_down(self, why: str) -> None: ...


class Router(Protocol):
    """The part of `shardbank.directory.ShardDirectory` the protocol needs."""

    def owner(self, account_id: int) -> str: ...

    def stub(self, shard_id: str) -> ledger_pb2_grpc.LedgerNodeStub: ...

    def stream(self, shard_id: str) -> NodeStream: ...

    def shard_ids(self) -> list[str]: ...

    async def refresh(self) -> None: ...


@dataclass(frozen=True)
class Deadlines:
    """Per-RPC deadlines, seconds. Three phases must fit well inside a
    client's `limits.CALL_DEADLINE_S` (10 s), with room for queueing."""

    prepare_s: float = 2.0
    decide_s: float = 2.0
    finish_s: float = 2.0
    list_in_doubt_s: float = 2.0
    apply_s: float = 2.0


def is_stale_epoch(error: errors.BankError) -> bool:
    return error.reason == errors.STALE_EPOCH


class Shards:
    def __init__(self, router: Router, leadership: Leadership, deadlines: Deadlines) -> None:
        self.router = router
        self._leadership = leadership
        self._deadlines = deadlines

    async def prepare(
        self, shard_id: str, epoch: int, items: list[ledger_pb2.PrepareItem]
    ) -> list[ledger_pb2.Leg] | errors.BankError:
        request = ledger_pb2.PrepareRequest(epoch=epoch, items=items)
        return await self._legs(
            shard_id,
            "Prepare",
            len(items),
            self._deadlines.prepare_s,
            self._write_legs(request),
        )

    async def decide(
        self, shard_id: str, epoch: int, items: list[ledger_pb2.DecideItem]
    ) -> list[ledger_pb2.Leg] | errors.BankError:
        request = ledger_pb2.DecideRequest(epoch=epoch, items=items)
        return await self._legs(
            shard_id,
            "Decide",
            len(items),
            self._deadlines.decide_s,
            self._write_legs(request),
        )

    async def finish(
        self, shard_id: str, epoch: int, items: list[ledger_pb2.DecideItem]
    ) -> list[ledger_pb2.Leg] | errors.BankError:
        request = ledger_pb2.FinishRequest(epoch=epoch, items=items)
        return await self._legs(
            shard_id,
            "Finish",
            len(items),
            self._deadlines.finish_s,
            self._write_legs(request),
        )

    async def list_in_doubt(
        self, shard_id: str, older_than_ms: int, limit: int
    ) -> list[ledger_pb2.Leg] | errors.BankError:
        request = ledger_pb2.ListInDoubtRequest(older_than_ms=older_than_ms, limit=limit)
        return await self._legs(
            shard_id,
            "ListInDoubt",
            None,
            self._deadlines.list_in_doubt_s,
            self._unary(lambda stub, t: stub.ListInDoubt(request, timeout=t)),
        )

    async def apply(
        self, shard_id: str, transfers: list[types_pb2.Transfer]
    ) -> list[types_pb2.Transfer] | errors.BankError:
        """Single-shard transfers (both accounts on one shard after all)."""
        request = ledger_pb2.ApplyTransfersRequest(transfers=transfers)
        return await self._transfers(
            shard_id, "ApplyTransfers", len(transfers), self._write_transfers(request)
        )

    async def get_transfers(
        self, shard_id: str, transfer_ids: list[str]
    ) -> list[types_pb2.Transfer] | errors.BankError:
        """This shard's record (else credit leg) of each id; code NOT_FOUND when it has neither."""
        request = ledger_pb2.GetTransfersRequest(ids=transfer_ids)
        return await self._transfers(
            shard_id,
            "GetTransfers",
            len(transfer_ids),
            self._unary(lambda stub, t: stub.GetTransfers(request, timeout=t)),
        )

    async def get_accounts(
        self, shard_id: str, account_ids: list[int]
    ) -> list[ledger_pb2.AccountResult] | errors.BankError:
        """This shard's accounts (each with its own code: NOT_FOUND, SLOT_MOVED...)."""
        request = ledger_pb2.GetAccountsRequest(ids=account_ids)
        answer = await self._call(
            shard_id,
            "GetAccounts",
            self._deadlines.apply_s,
            self._unary(lambda stub, t: stub.GetAccounts(request, timeout=t)),
        )
        if isinstance(answer, errors.BankError):
            return answer
        if len(answer.results) != len(account_ids):
            return _malformed(shard_id, "GetAccounts", len(answer.results), len(account_ids))
        return list(answer.results)

    async def _transfers(
        self,
        shard_id: str,
        method: str,
        expected: int,
        send: Send[ledger_pb2.TransfersResponse],
    ) -> list[types_pb2.Transfer] | errors.BankError:
        answer = await self._call(shard_id, method, self._deadlines.apply_s, send)
        if isinstance(answer, errors.BankError):
            return answer
        if len(answer.transfers) != expected:
            return _malformed(shard_id, method, len(answer.transfers), expected)
        return list(answer.transfers)

    async def _legs(
        self,
        shard_id: str,
        method: str,
        expected: int | None,
        deadline_s: float,
        send: Send[ledger_pb2.LegsResponse],
    ) -> list[ledger_pb2.Leg] | errors.BankError:
        answer = await self._call(shard_id, method, deadline_s, send)
        if isinstance(answer, errors.BankError):
            return answer
        if expected is not None and len(answer.legs) != expected:
            return _malformed(shard_id, method, len(answer.legs), expected)
        return list(answer.legs)

    def _unary(self, call: Callable[[ledger_pb2_grpc.LedgerNodeStub, float], Awaitable[T]]) -> Send[T]:
        """A unary call on the shard's cached stub."""
        return lambda shard_id, timeout_s: call(self.router.stub(shard_id), timeout_s)

    def _write(self, request: WriteRequest, answer: Callable[[ledger_pb2.WriteReply], T]) -> Send[T]:
        """A message on the shard's write stream; `answer` picks the reply's body."""

        async def send(shard_id: str, timeout_s: float) -> T:
            return answer(await self.router.stream(shard_id).send(request, timeout_s))

        return send

    def _write_legs(self, request: WriteRequest) -> Send[ledger_pb2.LegsResponse]:
        return self._write(request, lambda reply: reply.legs)

    def _write_transfers(self, request: WriteRequest) -> Send[ledger_pb2.TransfersResponse]:
        return self._write(request, lambda reply: reply.transfers)

    async def _call(
        self, shard_id: str, method: str, deadline_s: float, send: Send[T]
    ) -> T | errors.BankError:
        try:
            return await send(shard_id, deadline_s)
        except UnknownShard:
            return errors.BankError(
                grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, f"{shard_id} not registered"
            )
        except grpc.RpcError as rpc_error:
            error = errors.from_rpc_error(rpc_error)
        except errors.BankError as refusal:  # a write stream's message
            error = refusal
        if is_stale_epoch(error):
            self._leadership.step_down(f"{method} at {shard_id}: STALE_EPOCH")
        else:
            log.warning(
                "shard_call_failed",
                shard_id=shard_id,
                method=method,
                code=error.code.name,
                reason=error.reason,
            )
        return error


def _malformed(shard_id: str, method: str, got: int, expected: int) -> errors.BankError:
    log.error("malformed_answer", shard_id=shard_id, method=method, got=got, expected=expected)
    return errors.BankError(
        grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, f"{method} answered {got} items for {expected}"
    )
