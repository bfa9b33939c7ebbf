"""How each kind of batch item is routed and sent (the `dispatch.Plan`s)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import grpc

from gateway import convert, routing
from gateway.coalesce import Coalescer
from gateway.routing import Disposition, Target
from gateway.upstream import Cluster, downstream_error, downstream_refusal, unavailable
from shardbank import errors, ids, metrics
from shardbank.v1 import coordinator_pb2, ledger_pb2, ledger_pb2_grpc, types_pb2


def outcome_error(code: int, reason: str, message: str) -> errors.BankError:
    return errors.BankError(errors.status_code(code), reason, message)


async def send_transfers(
    cluster: Cluster, target: Target, items: list[types_pb2.Transfer], timeout_s: float
) -> list[types_pb2.Transfer]:
    """One downstream call: a shard's ApplyTransfers (a WriteStream message),
    or the coordinator leader's SubmitTransfers."""
    try:
        if target.is_coordinator:
            coordinator = await cluster.leader.stub()
            request = coordinator_pb2.CoordinatorSubmitRequest(transfers=items)
            reply: coordinator_pb2.CoordinatorSubmitResponse = await coordinator.SubmitTransfers(
                request, timeout=timeout_s
            )
            return list(reply.transfers)
        # A node: as a message on the gateway's stream to it (far less CPU than a call).
        stream = cluster.node_stream(target.shard_id)
        applied = await stream.send(ledger_pb2.ApplyTransfersRequest(transfers=items), timeout_s)
        return list(applied.transfers.transfers)
    except grpc.RpcError as exc:
        raise downstream_error(exc, target) from None
    except errors.BankError as error:
        raise downstream_refusal(error, target) from None


def transfer_rpc(target: Target) -> str:
    return "SubmitTransfers" if target.is_coordinator else "ApplyTransfers"


def late_transfer_error(target: Target) -> errors.BankError:
    """A caller's own deadline passed before its (shared) call answered: as a
    downstream DEADLINE_EXCEEDED reads (`downstream_error`), resend may help."""
    reason = errors.NOT_LEADER if target.is_coordinator else errors.SHARD_UNAVAILABLE
    return unavailable(reason, f"{target} did not answer in time")


def _observe_transfer_call(target: Target, items: int, callers: int) -> None:
    rpc = transfer_rpc(target)
    metrics.GATEWAY_DOWNSTREAM_ITEMS.labels(rpc).observe(items)
    metrics.GATEWAY_DOWNSTREAM_CALLERS.labels(rpc).observe(callers)


TransferLanes = Coalescer[Target, types_pb2.Transfer, types_pb2.Transfer]


def transfer_lanes(cluster: Cluster) -> TransferLanes:
    """One per gateway: concurrent transfer sends to one destination share calls."""
    return Coalescer(
        functools.partial(send_transfers, cluster), late_transfer_error, observe=_observe_transfer_call
    )


class TransferPlan:
    """Deposits/withdrawals and same-shard transfers to the owning node,
    cross-shard transfers and payments to the coordinator leader. With
    `lanes`, concurrent callers' sends to one destination share calls
    (`gateway.coalesce`); without, each send is its own call."""

    def __init__(self, cluster: Cluster, lanes: TransferLanes | None = None) -> None:
        self._cluster = cluster
        self._lanes = lanes

    def target(self, item: types_pb2.Transfer) -> Target:
        # One read of the current map per item, not one per account looked up.
        owner = self._cluster.slot_map.owner
        if item.risk.decision == types_pb2.RISK_DECISION_BLOCK:
            # Recorded as refused by its record holder alone: no 2PC for a refusal.
            return routing.shard(routing.record_holder(item, owner))
        return routing.transfer_target(item, owner)

    async def send(
        self, target: Target, items: list[types_pb2.Transfer], timeout_s: float
    ) -> list[types_pb2.Transfer]:
        if self._lanes is not None:
            return await self._lanes.send(target, items, timeout_s)
        return await send_transfers(self._cluster, target, items, timeout_s)

    def classify(self, result: types_pb2.Transfer) -> Disposition:
        return routing.classify_transfer(result)

    def renew(self, item: types_pb2.Transfer) -> types_pb2.Transfer:
        return item

    def give_up(self, item: types_pb2.Transfer, error: errors.BankError) -> types_pb2.Transfer:
        return convert.unsettled_transfer(item, error, cross_shard=self._is_cross_shard(item))

    def _is_cross_shard(self, item: types_pb2.Transfer) -> bool:
        try:
            return self.target(item).is_coordinator
        except errors.BankError:
            return item.kind in (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT)


class HasAccountId(Protocol):
    @property
    def account_id(self) -> int: ...


Item = TypeVar("Item", bound=HasAccountId)
NodeCall = Callable[
    [ledger_pb2_grpc.LedgerNodeStub, list[Item], float], Awaitable[ledger_pb2.AccountsResponse]
]


def change_status_call(actor: str) -> NodeCall[ledger_pb2.StatusRequestItem]:
    """ChangeStatus at a node, recorded as done by `actor` (handlers, the automatic freeze)."""

    async def call(
        node: ledger_pb2_grpc.LedgerNodeStub, items: list[ledger_pb2.StatusRequestItem], timeout_s: float
    ) -> ledger_pb2.AccountsResponse:
        reply: ledger_pb2.AccountsResponse = await node.ChangeStatus(
            ledger_pb2.ChangeStatusRequest(items=items, actor=actor), timeout=timeout_s
        )
        return reply

    return call


class AccountPlan(Generic[Item]):
    """Items about one existing account each (contact updates, status changes) to its owner."""

    def __init__(self, cluster: Cluster, call: NodeCall[Item]) -> None:
        self._cluster = cluster
        self._call = call

    def target(self, item: Item) -> Target:
        return routing.shard(self._cluster.owner(item.account_id))

    async def send(
        self, target: Target, items: list[Item], timeout_s: float
    ) -> list[ledger_pb2.AccountResult]:
        try:
            reply = await self._call(self._cluster.node(target.shard_id), items, timeout_s)
        except grpc.RpcError as exc:
            raise downstream_error(exc, target) from None
        return [convert.public_account_result(result) for result in reply.results]

    def classify(self, result: ledger_pb2.AccountResult) -> Disposition:
        return routing.classify_outcome(result.code, result.reason)

    def renew(self, item: Item) -> Item:
        return item

    def give_up(self, item: Item, error: errors.BankError) -> ledger_pb2.AccountResult:
        return convert.failed_account(error)


def same_opening(sent: types_pb2.Account, found: types_pb2.Account) -> bool:
    """Is `found` the account `sent` asked for (an earlier try whose reply was lost)?"""
    return (
        sent.currency == found.currency
        and sent.type == found.type
        and sent.overdraft_limit == found.overdraft_limit
        and sent.holder.name == found.holder.name
        and sent.holder.id_type == found.holder.id_type
        and sent.holder.id_number == found.holder.id_number
        and sent.holder.phone == found.holder.phone
    )


def with_new_id(
    account: types_pb2.Account, new_id: Callable[[], int] = ids.new_account_id
) -> types_pb2.Account:
    renewed = types_pb2.Account()
    renewed.CopyFrom(account)
    renewed.id = new_id()
    return renewed


class OpenPlan:
    """New accounts: the gateway picks the id, so the id picks the shard.

    ACCOUNT_EXISTS means the id is taken; with 15 random digits that is almost
    always our own earlier try whose reply was lost (a resend after
    UNAVAILABLE), so the account is read back: if it is the one asked for,
    that is the result, else a new id is drawn.

    An id derived from an idempotency key (`keyed`) is never redrawn: taken
    by another body, it is the caller's key reused, refused ALREADY_EXISTS.
    """

    def __init__(self, cluster: Cluster, actor: str, keyed: frozenset[int] = frozenset()) -> None:
        self._cluster = cluster
        self._actor = actor
        self._keyed = keyed

    def target(self, item: types_pb2.Account) -> Target:
        return routing.shard(self._cluster.owner(item.id))

    async def send(
        self, target: Target, items: list[types_pb2.Account], timeout_s: float
    ) -> list[ledger_pb2.AccountResult]:
        node = self._cluster.node(target.shard_id)
        try:
            reply: ledger_pb2.AccountsResponse = await node.CreateAccounts(
                ledger_pb2.CreateAccountsRequest(accounts=items, actor=self._actor), timeout=timeout_s
            )
            results = list(reply.results)
            taken = [i for i, r in enumerate(results) if r.reason == errors.ACCOUNT_EXISTS and i < len(items)]
            if taken:
                found: ledger_pb2.AccountsResponse = await node.GetAccounts(
                    ledger_pb2.GetAccountsRequest(ids=[items[i].id for i in taken]), timeout=timeout_s
                )
                for i, existing in zip(taken, found.results, strict=False):
                    if existing.code == 0 and same_opening(items[i], existing.account):
                        results[i] = existing
                    elif items[i].id in self._keyed:
                        results[i].message = "this idempotency key opened another account"
        except grpc.RpcError as exc:
            raise downstream_error(exc, target) from None
        return [convert.public_account_result(result) for result in results]

    def classify(self, result: ledger_pb2.AccountResult) -> Disposition:
        if result.reason == errors.ACCOUNT_EXISTS and result.account.id in self._keyed:
            return Disposition.DONE
        return routing.classify_account(result)

    def renew(self, item: types_pb2.Account) -> types_pb2.Account:
        return with_new_id(item)

    def give_up(self, item: types_pb2.Account, error: errors.BankError) -> ledger_pb2.AccountResult:
        return convert.failed_account(error)
