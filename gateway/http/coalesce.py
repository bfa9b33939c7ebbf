"""Concurrent single-transfer requests share one `SubmitTransfers` call.

Why: each `SubmitTransfers` call costs the gateway a fixed amount whatever
it carries: the interceptor, the servicer's validation, dispatch and plan,
its log line and metrics, and the downstream sends it starts. It was
introduced when the edge called over loopback gRPC (hundreds of µs more per
call on each side); with the in-process channel (`local`) it still pays:
S4 without it cost the gateway ~510 µs of CPU per transfer, with it ~300
(docs/performance.md). Requests that arrive while earlier calls of theirs are still out
wait in a queue and leave together in the next call, so under load many
requests pay for one call, and with no load a request leaves on the next
turn of the event loop, alone, as before.

What makes a shared call give each request the answer its own call would:

- One queue (a lane) per (`Authorization` value, transfer kind). Requests
  with different credentials never share a call: authentication, the rate
  limit, the role check and the audit record are the caller's. The kind is
  part of the lane because the gateway refuses a whole call when one item's
  kind is not the caller's to submit; within a lane every item has the same
  caller and kind, so a call-level status is each item's own answer.
- A transfer id already waiting in the lane (a client resending while its
  first try is queued) goes alone, as before: a batch holding one id twice is
  not what two single calls are.
- The reply's i-th outcome is the i-th request's; the handler turns it into
  HTTP exactly as it did a batch of one (`handlers.transfer_response`).
- A call-level failure (a gRPC status) is every member's failure, each its
  own copy of the error.
- Deposits and withdrawals are never shared: the gateway writes an audit
  record per item of those kinds (`gateway.auth.guard.MONEY_ACTIONS`) with
  the call's request id, and the hash-chained audit log must keep naming the
  HTTP request that moved the cash. Transfers and payments, the bulk of
  traffic, are not audited per call.

Request ids: a call of one carries the request's own `x-request-id`, as
before. A shared call carries a fresh id, and the edge logs one
`http_transfers_coalesced` line naming that id with every member's request
id and transfer id, so the gateway's lines about the shared call
(`transfers_submitted` names the transfer ids) lead back to each request.

Rate limit: a shared call says how many requests it carries in
`x-coalesced-requests`, and the gateway's per-key bucket takes that many
tokens (`gateway.auth.interceptor.coalesced_requests`), so coalescing does
not loosen a key's limit; the count can only make a caller's limit
stricter, so it needs no trust. An empty bucket refuses the shared call, so
every request in it gets 429.

Limits: at most CALLS_IN_FLIGHT_MAX calls per lane (the pace: more requests
wait and leave together), GROUP_ITEMS_MAX transfers per call, and
QUEUE_ITEMS_MAX waiting per lane; past that a request makes its own call,
as before coalescing, rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import grpc
import structlog

from gateway.auth.guard import MONEY_ACTIONS
from gateway.auth.interceptor import COALESCED_REQUESTS_METADATA
from gateway.http.errors import HttpError, broken_reply, rpc_failure
from gateway.http.local import caller_metadata
from shardbank import errors, ids
from shardbank.v1 import bank_pb2, bank_pb2_grpc, types_pb2

log = structlog.get_logger("gateway.http")

# Calls one lane keeps out at once, so a slow call (a cross-shard 2PC) does
# not stall the lane. Each call costs the gateway a fixed amount, so more
# calls means smaller groups; over loopback gRPC (hundreds of µs per call)
# 2 was best. In process the call is cheaper and 4 wins: S4, five interleaved
# pairs on the shared 2-core box, 2 vs 4: 653 vs 891 transfers/s (4 higher in
# four pairs), p99 217 vs 152 ms, gateway ~330 µs CPU per transfer either
# way, coordinator 260 vs 193 and nodes 564 vs 478 (fewer items wait behind
# a slow one, so downstream batches fill better). 8 cost the gateway more
# (381-433 µs) for no gain.
CALLS_IN_FLIGHT_MAX = 4
# Transfers per shared call: well under the gRPC batch limit
# (shardbank.limits.BATCH_ITEMS_MAX) so one call's reply stays small and its
# slowest item does not hold up too many requests.
GROUP_ITEMS_MAX = 256
# Requests waiting in one lane; more make their own call (no unbounded queue).
QUEUE_ITEMS_MAX = 4096
# Request ids of one shared call named in its log line (the rest are counted).
LOGGED_MEMBERS_MAX = 256

# Kinds audited per item with the call's request id: each request its own call.
ALONE_KINDS = frozenset(MONEY_ACTIONS)

if not GROUP_ITEMS_MAX <= QUEUE_ITEMS_MAX:
    raise RuntimeError("a shared call must fit in a lane's queue")

# (Authorization value or None, the HTTP client's address, TransferKind): a
# shared call has one caller and one peer in the audit records.
LaneKey = tuple[str | None, str, int]


@dataclass
class _Waiter:
    transfer: types_pb2.Transfer
    request_id: str
    id_key: str
    outcome: asyncio.Future[types_pb2.Transfer]


@dataclass
class _Lane:
    queue: list[_Waiter] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    in_flight: int = 0
    flush_scheduled: bool = False


def id_key(transfer_id: str) -> str:
    """Ids the gateway takes for the same transfer map together: its own
    normalization (`ids.normalize_transfer_id`); one it refuses is kept as given."""
    try:
        return ids.normalize_transfer_id(transfer_id)
    except errors.BankError:
        return transfer_id


def copy_error(error: errors.BankError) -> errors.BankError:
    """Each member raises its own error object (the middleware may annotate it)."""
    if isinstance(error, HttpError):
        twin: errors.BankError = HttpError(
            error.code, error.reason, error.message, http_status=error.http_status, headers=error.headers
        )
    else:
        twin = errors.BankError(error.code, error.reason, error.message)
    twin.metadata = dict(error.metadata)
    return twin


class TransferCoalescer:
    """Lanes of waiting single transfers and the calls that carry them."""

    def __init__(self, bank: bank_pb2_grpc.BankStub, call_deadline_s: float) -> None:
        self._bank = bank
        self._call_deadline_s = call_deadline_s
        self._lanes: dict[LaneKey, _Lane] = {}
        self._calls: set[asyncio.Task[None]] = set()

    async def submit(
        self, transfer: types_pb2.Transfer, authorization: str | None, request_id: str, peer: str = ""
    ) -> types_pb2.Transfer:
        """The transfer's outcome, or the call's failure as a BankError.

        `authorization`: the request's header as checked by
        `calls.authorization_of` (None when absent), forwarded unchanged;
        `peer`: the client's address (`calls.peer_of`), for the audit records.
        """
        outcome: asyncio.Future[types_pb2.Transfer] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(transfer, request_id, id_key(transfer.id), outcome)
        if transfer.kind in ALONE_KINDS:
            return await self._alone(authorization, peer, waiter)
        key = (authorization, peer, transfer.kind)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if waiter.id_key in lane.ids or len(lane.queue) >= QUEUE_ITEMS_MAX:
            return await self._alone(authorization, peer, waiter)
        lane.queue.append(waiter)
        lane.ids.add(waiter.id_key)
        if not lane.flush_scheduled and lane.in_flight < CALLS_IN_FLIGHT_MAX:
            # Next turn of the loop: requests read in this one join the call.
            lane.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, key)
        return await waiter.outcome

    async def close(self) -> None:
        """Let the calls out finish (the runner already waited for requests)."""
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)

    async def _alone(self, authorization: str | None, peer: str, waiter: _Waiter) -> types_pb2.Transfer:
        """A call of its own, with the request's own metadata (as before coalescing)."""
        try:
            await self._call(authorization, peer, [waiter])
        except BaseException:
            # This request is being cancelled: nobody will read the outcome
            # `_call` set, so mark it read (no "exception never retrieved").
            if waiter.outcome.done() and not waiter.outcome.cancelled():
                waiter.outcome.exception()
            raise
        return await waiter.outcome

    def _flush(self, key: LaneKey) -> None:
        lane = self._lanes.get(key)
        if lane is None:  # emptied and dropped by an earlier flush
            return
        lane.flush_scheduled = False
        while lane.queue and lane.in_flight < CALLS_IN_FLIGHT_MAX:
            group = lane.queue[:GROUP_ITEMS_MAX]
            del lane.queue[:GROUP_ITEMS_MAX]
            for waiter in group:
                lane.ids.discard(waiter.id_key)
            live = [w for w in group if not w.outcome.done()]  # a cancelled request sends nothing
            if not live:
                continue
            lane.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(key, live))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        if not lane.queue and lane.in_flight == 0:
            del self._lanes[key]

    async def _send(self, key: LaneKey, group: list[_Waiter]) -> None:
        try:
            await self._call(key[0], key[1], group)
        finally:
            lane = self._lanes[key]
            lane.in_flight -= 1
            self._flush(key)

    async def _call(self, authorization: str | None, peer: str, group: list[_Waiter]) -> None:
        request_id = group[0].request_id if len(group) == 1 else uuid.uuid4().hex
        metadata = list(caller_metadata(request_id, authorization, peer))
        if len(group) > 1:
            metadata.append((COALESCED_REQUESTS_METADATA, str(len(group))))
            log.info(
                "http_transfers_coalesced",
                request_id=request_id,
                items=len(group),
                member_request_ids=[w.request_id for w in group[:LOGGED_MEMBERS_MAX]],
                transfer_ids=[w.transfer.id for w in group[:LOGGED_MEMBERS_MAX]],
            )
        try:
            reply = await self._bank.SubmitTransfers(
                bank_pb2.SubmitTransfersRequest(transfers=[w.transfer for w in group]),
                timeout=self._call_deadline_s,
                metadata=tuple(metadata),
            )
        except grpc.RpcError as exc:
            _fail(group, rpc_failure(exc))
            return
        except BaseException:
            _fail(group, errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, "internal error"))
            raise
        if len(reply.transfers) != len(group):
            _fail(group, broken_reply(f"{len(reply.transfers)} transfers for {len(group)} items"))
            return
        for waiter, outcome in zip(group, reply.transfers, strict=True):
            if not waiter.outcome.done():
                waiter.outcome.set_result(outcome)


def _fail(group: list[_Waiter], error: errors.BankError) -> None:
    for waiter in group:
        if not waiter.outcome.done():
            waiter.outcome.set_exception(copy_error(error))
