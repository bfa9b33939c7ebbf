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
from gateway.auth import guard
from gateway.auth.principal import Principal
from gateway.dispatch import Budget
from gateway.review import testhook
from gateway.review.desk import ReviewDesk
from gateway.review.testhook import ReviewTestRule
from gateway.risk.gate import RiskGate
from gateway.upstream import Cluster, downstream_error, unavailable
from shardbank import errors, ids, metrics, slots
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
    """`auth=None` serves without authorization (in-process tests only; the
    gateway process always installs it, see `gateway.server`)."""

    def __init__(
        self,
        cluster: Cluster,
        gateway_id: str,
        auth: guard.Auth | None = None,
        desk: ReviewDesk | None = None,
        review_test_rule: ReviewTestRule | None = None,
        risk: RiskGate | None = None,
    ) -> None:
        """`risk=None`: no risk check (`--risk off`, benchmarks of the bare path)."""
        self._cluster = cluster
        self._default_actor = f"gateway:{gateway_id}"
        self._auth = auth
        self._desk = desk
        self._review_test_rule = review_test_rule
        self._risk = risk
        # Concurrent transfer sends to one node / the coordinator share calls.
        self._transfer_lanes = plans.transfer_lanes(cluster)

    def _caller(self) -> Principal | None:
        return None if self._auth is None else self._auth.caller()

    def _actor(self, given: str, caller: Principal | None = None) -> str:
        """Who the node records: the API key when there is one (a client's
        own `actor` text is unverified), else the client's or the gateway's."""
        validation.check_actor(given)
        if caller is not None:
            return f"{caller.role}:{caller.key_id}"
        return given or self._default_actor

    async def _audit(
        self, caller: Principal | None, action: str, outcomes: list[tuple[str, int, str]]
    ) -> None:
        if self._auth is not None and caller is not None:
            await self._auth.record(caller, action, outcomes)

    # Accounts.

    async def open_accounts(
        self, request: bank_pb2.OpenAccountsRequest, budget: Budget
    ) -> ledger_pb2.AccountsResponse:
        validation.check_batch(request.accounts)
        caller = self._caller()
        results, indices, clean = split_valid(request.accounts, validation.check_open, reject_account)
        guard.check_open(caller, clean)
        scope, keyed = (caller.key_id if caller is not None else ""), set()
        for index, account in zip(indices, clean, strict=True):
            if key := request.accounts[index].idempotency_key:
                account.id = ids.account_id_for_key(scope, key)
                keyed.add(account.id)
            else:
                account.id = ids.new_account_id()
        plan = plans.OpenPlan(self._cluster, self._actor("", caller), frozenset(keyed))
        routed = await dispatch.dispatch(clean, plan, self._cluster, budget)
        await self._audit(
            caller, guard.ACCOUNT_OPEN, [(str(r.account.id or ""), r.code, r.reason) for r in routed]
        )
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
        caller = self._caller()
        actor = self._actor(request.actor, caller)
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
        await self._audit(
            caller,
            guard.ACCOUNT_UPDATE_CONTACTS,
            [(str(u.account_id), r.code, r.reason) for u, r in zip(clean, routed, strict=True)],
        )
        log.info("contacts_updated", items=len(request.updates), actor=actor)
        return ledger_pb2.AccountsResponse(results=merge(results, indices, routed))

    async def change_status(
        self, request: ledger_pb2.ChangeStatusRequest, budget: Budget
    ) -> ledger_pb2.AccountsResponse:
        validation.check_batch(request.items)
        caller = self._caller()
        guard.check_status_actions(caller, request.items)
        actor = self._actor(request.actor, caller)
        results, indices, clean = split_valid(request.items, validation.check_status_item, reject_account)
        plan = plans.AccountPlan(self._cluster, plans.change_status_call(actor))
        routed = await dispatch.dispatch(clean, plan, self._cluster, budget)
        for item, result in zip(clean, routed, strict=True):
            action = guard.STATUS_ACTIONS.get(item.action, "account.status")
            await self._audit(caller, action, [(str(item.account_id), result.code, result.reason)])
        log.info(
            "status_changed",
            items=len(request.items),
            account_ids=[item.account_id for item in clean[:LOGGED_IDS_MAX]],
            actor=actor,
        )
        return ledger_pb2.AccountsResponse(results=merge(results, indices, routed))

    async def get_account(self, request: bank_pb2.GetAccountRequest, budget: Budget) -> types_pb2.Account:
        caller = self._caller()
        account = await self._stored_account(request.account_id, budget)
        if not guard.owns(caller, account):
            raise guard.not_found()
        return convert.public_account(account)

    async def _owned_or_not_found(self, caller: Principal | None, account_id: int, budget: Budget) -> None:
        """A customer's own account, else NOT_FOUND; no read for other roles."""
        if guard.is_customer(caller) and not guard.owns(
            caller, await self._stored_account(account_id, budget)
        ):
            raise guard.not_found()

    async def _stored_account(self, account_id: int, budget: Budget) -> types_pb2.Account:
        """The account as the node has it (unmasked: never returned as is)."""
        validation.check_lookup_account_id(account_id)

        async def call(node: ledger_pb2_grpc.LedgerNodeStub, timeout_s: float) -> types_pb2.Account:
            reply: ledger_pb2.AccountsResponse = await node.GetAccounts(
                ledger_pb2.GetAccountsRequest(ids=[account_id]), timeout=timeout_s
            )
            if len(reply.results) != 1:
                raise errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, "node answered no result")
            result = reply.results[0]
            if result.code == 0:
                return result.account
            if errors.status_code(result.code) == grpc.StatusCode.NOT_FOUND:
                raise errors.not_found(errors.ACCOUNT_NOT_FOUND, "no such account")
            raise plans.outcome_error(result.code, result.reason, result.message)

        return await self._on_owner(account_id, call, budget)

    async def list_history(
        self, request: ledger_pb2.ListHistoryRequest, budget: Budget
    ) -> ledger_pb2.ListHistoryResponse:
        clean = validation.check_history_request(request)
        await self._owned_or_not_found(self._caller(), clean.account_id, budget)

        async def call(
            node: ledger_pb2_grpc.LedgerNodeStub, timeout_s: float
        ) -> ledger_pb2.ListHistoryResponse:
            reply: ledger_pb2.ListHistoryResponse = await node.ListHistory(clean, timeout=timeout_s)
            return reply

        page = await self._on_owner(clean.account_id, call, budget)
        for entry in page.entries:
            if entry.transfer.HasField("risk"):
                entry.transfer.CopyFrom(convert.public_transfer(entry.transfer))
        return page

    async def _on_owner(
        self,
        account_id: int,
        call: Callable[[ledger_pb2_grpc.LedgerNodeStub, float], Awaitable[T]],
        budget: Budget,
    ) -> T:
        """One read at the account's shard; re-routed after SLOT_MOVED, resent after UNAVAILABLE."""
        error = unavailable(errors.SHARD_UNAVAILABLE, "no shard answered in time")
        if ids.is_system_account_id(account_id) and (
            routing.system_account_shard(account_id) not in self._cluster.slot_map.shard_ids()
        ):
            # The cash account of a shard the cluster does not have: it does not
            # exist (404), not "try again later" (503).
            raise errors.not_found(errors.ACCOUNT_NOT_FOUND, "no such account")
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
        metrics.BATCH_ITEMS.labels(metrics.GATEWAY, "SubmitTransfers").observe(len(request.transfers))
        caller = self._caller()
        guard.check_transfer_kinds(caller, request.transfers)
        results, indices, clean = split_valid(
            request.transfers, validation.check_submitted_transfer, convert.rejected_transfer
        )
        if guard.is_customer(caller):
            indices, clean = await self._customer_debits(caller, results, indices, clean, budget)

        async def send(items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
            return await self._route_transfers(caller, items, budget)

        if self._risk is not None and clean:
            routed = await self._risk.run(clean, budget, send)
        else:
            routed = await send(clean)
        outcomes = [convert.public_transfer(o) for o in merge(results, indices, routed)]
        await self._audit_money(caller, outcomes)
        self._log_transfers(outcomes)
        metrics.count_transfers(outcomes)
        return ledger_pb2.TransfersResponse(transfers=outcomes)

    async def _route_transfers(
        self, caller: Principal | None, clean: list[types_pb2.Transfer], budget: Budget
    ) -> list[types_pb2.Transfer]:
        """To the ledger; with the review test hook on, the items it picks go
        to the review desk instead (the risk engine takes this place)."""
        rule, desk = self._review_test_rule, self._desk
        plan = plans.TransferPlan(self._cluster, self._transfer_lanes)
        picked = [i for i, t in enumerate(clean) if rule is not None and rule.fires(t)]
        if rule is None or desk is None or not picked:
            return await dispatch.dispatch(clean, plan, self._cluster, budget)
        picked_set = set(picked)
        rest = [i for i in range(len(clean)) if i not in picked_set]
        held_items = [clean[i] for i in picked]
        assessments = await testhook.raise_alerts(desk, held_items, rule, caller)
        held, passed = await asyncio.gather(
            desk.hold(held_items, assessments, budget),
            dispatch.dispatch([clean[i] for i in rest], plan, self._cluster, budget),
        )
        routed: list[types_pb2.Transfer | None] = [None] * len(clean)
        for index, outcome in zip([*picked, *rest], [*held, *passed], strict=True):
            routed[index] = outcome
        return [r for r in routed if r is not None]

    async def _customer_debits(
        self,
        caller: Principal | None,
        results: list[types_pb2.Transfer | None],
        indices: list[int],
        clean: list[types_pb2.Transfer],
        budget: Budget,
    ) -> tuple[list[int], list[types_pb2.Transfer]]:
        """A customer moves money out of its own accounts only: an item
        debiting another's is refused as ACCOUNT_NOT_FOUND (REJECTED, nothing
        recorded), exactly like an account that does not exist."""
        owned: dict[int, bool] = {}
        for debit in sorted({t.debit_account_id for t in clean}):
            try:
                owned[debit] = guard.owns(caller, await self._stored_account(debit, budget))
            except errors.BankError as error:
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise
                owned[debit] = False
        kept_indices: list[int] = []
        kept: list[types_pb2.Transfer] = []
        for index, transfer in zip(indices, clean, strict=True):
            if owned[transfer.debit_account_id]:
                kept_indices.append(index)
                kept.append(transfer)
            else:
                results[index] = convert.rejected_transfer(transfer, guard.not_found())
        return kept_indices, kept

    async def _audit_money(self, caller: Principal | None, outcomes: list[types_pb2.Transfer]) -> None:
        if caller is None or caller.role not in guard.MONEY_AUDITED_ROLES:
            return
        for kind, action in guard.MONEY_ACTIONS.items():
            records = [
                (str(o.credit_account_id if kind == types_pb2.TRANSFER_KIND_DEPOSIT else o.debit_account_id),
                 o.code, o.reason)
                for o in outcomes
                if o.kind == kind
            ]  # fmt: skip
            if records:
                await self._audit(caller, action, records)

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
            # Account ids (never holder details) of the first refusals: what an operator asks about.
            refusals=[
                {
                    "transfer_id": o.id,
                    "debit_account_id": o.debit_account_id,
                    "credit_account_id": o.credit_account_id,
                    "reason": o.reason,
                }
                for o in refused[:LOGGED_IDS_MAX]
                if o.status != types_pb2.TRANSFER_STATUS_REJECTED
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
            await self._check_transfer_visible(picked, budget)
            return convert.public_transfer(picked)
        if waiting:
            raise unavailable(
                errors.SHARD_UNAVAILABLE, f"{len(waiting)} shard(s) did not answer; the transfer may be there"
            )
        raise errors.not_found(errors.TRANSFER_NOT_FOUND, "no shard knows this transfer id")

    async def _check_transfer_visible(self, transfer: types_pb2.Transfer, budget: Budget) -> None:
        """A customer sees a transfer only when one side is its account."""
        caller = self._caller()
        if not guard.is_customer(caller):
            return
        for account_id in (transfer.debit_account_id, transfer.credit_account_id):
            if not ids.is_customer_account_id(account_id):
                continue
            try:
                if guard.owns(caller, await self._stored_account(account_id, budget)):
                    return
            except errors.BankError as error:
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise
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
            slot_ranges=[
                bank_pb2.SlotRange(first=first, last=last, shard_id=shard_id)
                for first, last, shard_id in slot_map.ranges()
            ],
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
