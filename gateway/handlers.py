"""What each public RPC does: validate at the edge, route, reassemble.

Handlers take a request and the caller's `Budget` and return the response or
raise `BankError`; the servicer (service.py) turns that into a gRPC status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import structlog

from gateway import convert, dispatch, plans, routing, validation
from gateway.dispatch import Budget
from gateway.upstream import Cluster, downstream_error, unavailable
from shardbank import errors, ids, slots
from shardbank.v1 import bank_pb2, ledger_pb2, ledger_pb2_grpc, types_pb2

log = structlog.get_logger("gateway")

In = TypeVar("In")
Clean = TypeVar("Clean")
Out = TypeVar("Out")
T = TypeVar("T")

# GetNodeInfo of GetClusterInfo: a down node must not hold the answer up.
NODE_INFO_TIMEOUT_S = 1.0
# Transfer ids written into one log line (a batch may hold thousands).
LOGGED_IDS_MAX = 32


def split_valid(
    items: Sequence[In], check: Callable[[In], Clean], reject: Callable[[In, errors.BankError], Out]
) -> tuple[list[Out | None], list[int], list[Clean]]:
    """Check each item: refused ones get their result now; the rest (indices, clean copies) go on."""
    results: list[Out | None] = [None] * len(items)
    indices: list[int] = []
    clean: list[Clean] = []
    for index, item in enumerate(items):
        try:
            clean.append(check(item))
        except errors.BankError as error:
            results[index] = reject(item, error)
            continue
        indices.append(index)
    return results, indices, clean


def merge(results: list[Out | None], indices: list[int], routed: list[Out]) -> list[Out]:
    for index, result in zip(indices, routed, strict=True):
        results[index] = result
    merged = [r for r in results if r is not None]
    if len(merged) != len(results):
        raise AssertionError("an item has no result")
    return merged


def reject_account(_item: object, error: errors.BankError) -> ledger_pb2.AccountResult:
    return convert.failed_account(error)


class BankHandlers:
    def __init__(self, cluster: Cluster, gateway_id: str) -> None:
        self._cluster = cluster
        self._default_actor = f"gateway:{gateway_id}"

    def _actor(self, given: str) -> str:
        validation.check_actor(given)
        return given or self._default_actor

    # Accounts.

    async def open_accounts(
        self, request: bank_pb2.OpenAccountsRequest, budget: Budget
    ) -> ledger_pb2.AccountsResponse:
        validation.check_batch(request.accounts)
        results, indices, clean = split_valid(request.accounts, validation.check_open, reject_account)
        for account in clean:
            account.id = ids.new_account_id()
        plan = plans.OpenPlan(self._cluster, self._default_actor)
        routed = await dispatch.dispatch(clean, plan, self._cluster, budget)
        opened = [r.account.id for r in routed if r.code == 0]
        log.info(
            "accounts_opened",
            items=len(request.accounts),
            opened=len(opened),
            account_ids=opened[:LOGGED_IDS_MAX],
        )
        return ledger_pb2.AccountsResponse(results=merge(results, indices, routed))

    async def update_contacts(
        self, request: ledger_pb2.UpdateContactsRequest, budget: Budget
    ) -> ledger_pb2.AccountsResponse:
        validation.check_batch(request.updates)
        actor = self._actor(request.actor)
        results, indices, clean = split_valid(
            request.updates, validation.check_contact_update, reject_account
        )

        async def call(
            node: ledger_pb2_grpc.LedgerNodeStub, items: list[ledger_pb2.ContactUpdate], timeout_s: float
        ) -> ledger_pb2.AccountsResponse:
            reply: ledger_pb2.AccountsResponse = await node.UpdateContacts(
                ledger_pb2.UpdateContactsRequest(updates=items, actor=actor), timeout=timeout_s
            )
            return reply

        routed = await dispatch.dispatch(clean, plans.AccountPlan(self._cluster, call), self._cluster, budget)
        log.info("contacts_updated", items=len(request.updates), actor=actor)
        return ledger_pb2.AccountsResponse(results=merge(results, indices, routed))

    async def change_status(
        self, request: ledger_pb2.ChangeStatusRequest, budget: Budget
    ) -> ledger_pb2.AccountsResponse:
        validation.check_batch(request.items)
        actor = self._actor(request.actor)
        results, indices, clean = split_valid(request.items, validation.check_status_item, reject_account)

        async def call(
            node: ledger_pb2_grpc.LedgerNodeStub, items: list[ledger_pb2.StatusRequestItem], timeout_s: float
        ) -> ledger_pb2.AccountsResponse:
            reply: ledger_pb2.AccountsResponse = await node.ChangeStatus(
                ledger_pb2.ChangeStatusRequest(items=items, actor=actor), timeout=timeout_s
            )
            return reply

        routed = await dispatch.dispatch(clean, plans.AccountPlan(self._cluster, call), self._cluster, budget)
        log.info(
            "status_changed",
            items=len(request.items),
            account_ids=[item.account_id for item in clean[:LOGGED_IDS_MAX]],
            actor=actor,
        )
        return ledger_pb2.AccountsResponse(results=merge(results, indices, routed))

    async def get_account(self, request: bank_pb2.GetAccountRequest, budget: Budget) -> types_pb2.Account:
        account_id = request.account_id
        validation.check_lookup_account_id(account_id)

        async def call(node: ledger_pb2_grpc.LedgerNodeStub, timeout_s: float) -> types_pb2.Account:
            reply: ledger_pb2.AccountsResponse = await node.GetAccounts(
                ledger_pb2.GetAccountsRequest(ids=[account_id]), timeout=timeout_s
            )
            if len(reply.results) != 1:
                raise errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, "node answered no result")
            result = reply.results[0]
            if result.code == 0:
                return convert.public_account(result.account)
            if errors.status_code(result.code) == grpc.StatusCode.NOT_FOUND:
                raise errors.not_found(errors.ACCOUNT_NOT_FOUND, "no such account")
            raise plans.outcome_error(result.code, result.reason, result.message)

        return await self._on_owner(account_id, call, budget)

    async def list_history(
        self, request: ledger_pb2.ListHistoryRequest, budget: Budget
    ) -> ledger_pb2.ListHistoryResponse:
        clean = validation.check_history_request(request)

        async def call(
            node: ledger_pb2_grpc.LedgerNodeStub, timeout_s: float
        ) -> ledger_pb2.ListHistoryResponse:
            reply: ledger_pb2.ListHistoryResponse = await node.ListHistory(clean, timeout=timeout_s)
            return reply

        return await self._on_owner(clean.account_id, call, budget)

    async def _on_owner(
        self,
        account_id: int,
        call: Callable[[ledger_pb2_grpc.LedgerNodeStub, float], Awaitable[T]],
        budget: Budget,
    ) -> T:
        """One read at the account's shard; re-routed after SLOT_MOVED, resent after UNAVAILABLE."""
        error = unavailable(errors.SHARD_UNAVAILABLE, "no shard answered in time")
        for round_index in range(dispatch.ATTEMPTS_MAX):
            target: routing.Target | None = None
            try:
                target = routing.shard(routing.account_shard(account_id, self._cluster.owner))
                return await call(self._cluster.node(target.shard_id), budget.call_timeout_s())
            except grpc.RpcError as exc:
                error = downstream_error(exc, target or routing.shard("unknown"))
            except errors.BankError as refused:
                error = refused
            if error.reason == errors.SLOT_MOVED:
                await self._cluster.refresh_map()
                continue
            if not dispatch.is_retryable(error):
                raise error
            wait_s = dispatch.backoff_s(round_index)
            if not budget.affords(wait_s):
                break
            if target is not None:
                await self._cluster.unreachable(target, error)
            await asyncio.sleep(wait_s)
        raise error

    # Money.

    async def submit_transfers(
        self, request: bank_pb2.SubmitTransfersRequest, budget: Budget
    ) -> ledger_pb2.TransfersResponse:
        validation.check_batch(request.transfers)
        results, indices, clean = split_valid(
            request.transfers, validation.check_transfer, convert.rejected_transfer
        )
        routed = await dispatch.dispatch(clean, plans.TransferPlan(self._cluster), self._cluster, budget)
        outcomes = merge(results, indices, routed)
        self._log_transfers(outcomes)
        return ledger_pb2.TransfersResponse(transfers=outcomes)

    def _log_transfers(self, outcomes: list[types_pb2.Transfer]) -> None:
        refused = [o for o in outcomes if o.code != 0]
        log.info(
            "transfers_submitted",
            items=len(outcomes),
            refused=len(refused),
            # Canonical ids only: a rejected item's id is whatever text the caller sent.
            transfer_ids=[o.id for o in outcomes if o.status != types_pb2.TRANSFER_STATUS_REJECTED][
                :LOGGED_IDS_MAX
            ],
        )
        unsettled = [o.id for o in refused if o.code == grpc.StatusCode.UNAVAILABLE.value[0]]
        if unsettled:
            log.warning("transfers_unsettled", count=len(unsettled), transfer_ids=unsettled[:LOGGED_IDS_MAX])

    async def get_transfer(self, request: bank_pb2.GetTransferRequest, budget: Budget) -> types_pb2.Transfer:
        transfer_id = validation.check_transfer_id_lookup(request.transfer_id)
        answers: dict[str, types_pb2.Transfer] = {}
        waiting = set(self._cluster.directory.shard_ids())
        if not waiting:
            raise unavailable(errors.SHARD_UNAVAILABLE, "no shard is known yet")
        for round_index in range(dispatch.ATTEMPTS_MAX):
            shard_ids = sorted(waiting)
            replies = await asyncio.gather(*(self._find(s, transfer_id, budget) for s in shard_ids))
            for shard_id, reply in zip(shard_ids, replies, strict=True):
                if isinstance(reply, errors.BankError):
                    continue
                waiting.discard(shard_id)
                if reply is not None:
                    answers[shard_id] = reply
            # With an answer in hand, a shard that stays down is not worth the caller's whole deadline.
            if not waiting or (answers and round_index >= 1):
                break
            wait_s = dispatch.backoff_s(round_index)
            if not budget.affords(wait_s):
                break
            await self._cluster.refresh_map()
            await asyncio.sleep(wait_s)
        picked = routing.pick_transfer(answers, self._cluster.owner)
        if picked is not None:
            return picked
        if waiting:
            raise unavailable(
                errors.SHARD_UNAVAILABLE, f"{len(waiting)} shard(s) did not answer; the transfer may be there"
            )
        raise errors.not_found(errors.TRANSFER_NOT_FOUND, "no shard knows this transfer id")

    async def _find(
        self, shard_id: str, transfer_id: str, budget: Budget
    ) -> types_pb2.Transfer | errors.BankError | None:
        """This shard's answer; None when it has no record or leg of the transfer."""
        target = routing.shard(shard_id)
        try:
            node = self._cluster.node(shard_id)
            reply: ledger_pb2.TransfersResponse = await node.GetTransfers(
                ledger_pb2.GetTransfersRequest(ids=[transfer_id]), timeout=budget.call_timeout_s()
            )
        except grpc.RpcError as exc:
            error = downstream_error(exc, target)
            return None if error.code == grpc.StatusCode.NOT_FOUND else error
        except errors.BankError as error:
            return error
        found = [t for t in reply.transfers if routing.is_found(t)]
        return found[0] if found else None

    # Cluster.

    async def get_cluster_info(
        self, _request: bank_pb2.GetClusterInfoRequest, budget: Budget
    ) -> bank_pb2.ClusterInfo:
        slot_map = self._cluster.slot_map
        shard_ids = self._cluster.directory.shard_ids()
        timeout_s = min(NODE_INFO_TIMEOUT_S, budget.call_timeout_s())
        statuses, leader = await asyncio.gather(
            asyncio.gather(*(self._shard_status(s, len(slot_map.slots_of(s)), timeout_s) for s in shard_ids)),
            self._cluster.leader.read(),
        )
        return bank_pb2.ClusterInfo(
            slot_map_version=slot_map.version,
            slot_count=slots.SLOT_COUNT,
            shards=statuses,
            coordinator_leader=leader.coordinator_id if leader else "",
            coordinator_epoch=leader.epoch if leader else 0,
        )

    async def _shard_status(self, shard_id: str, slot_count: int, timeout_s: float) -> bank_pb2.ShardStatus:
        status = bank_pb2.ShardStatus(
            shard_id=shard_id, address=self._cluster.directory.address(shard_id) or "", slots=slot_count
        )
        try:
            node = self._cluster.node(shard_id)
            info: ledger_pb2.NodeInfo = await node.GetNodeInfo(
                ledger_pb2.GetNodeInfoRequest(), timeout=timeout_s
            )
        except (grpc.RpcError, errors.BankError):
            return status
        status.up = True
        status.info.CopyFrom(info)
        return status
