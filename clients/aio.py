"""`AsyncBankClient`: the asyncio (grpc.aio) twin of `clients.client.BankClient`.

Same methods, same errors, same retry rules. With `coalesce=True`, concurrent
`deposit`/`withdraw`/`transfer` calls of this client share `SubmitTransfers`
batches (see `clients.coalesce`), one call out at a time. With
`coalesce_lanes=True` as well, single-shard and cross-shard (2PC) items batch
in two lanes, so a single-shard call answers at its node's pace rather than
at the pace of a 2PC item it would otherwise share a call with; the lanes
follow the slot map the gateway publishes (`GetClusterInfo`, fetched in the
background; see `clients.routes`). Off by default: on the bench (S3) lanes
cut p50 by ~25% but doubled p99, since cross-shard items then queue behind
each other's rounds (docs/performance.md, "Client lanes").
A caller not answered within `deadline_s` gets DeadlineExceeded (unsettled:
retry with the same id). Create it inside a running event loop.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import grpc

from clients import messages, retry
from clients.channel import CHANNEL_OPTIONS, DEFAULT_TARGET, auth_metadata, default_token
from clients.coalesce import LINGER_S_DEFAULT, TransferCoalescer
from clients.retry import RetryPolicy
from clients.routes import LaneRouter
from shardbank import limits
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, risk_pb2, risk_pb2_grpc, types_pb2

R = TypeVar("R")


class AsyncBankClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        deadline_s: float = limits.CALL_DEADLINE_S,
        retry_policy: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen)
        actor: str = "",
        coalesce: bool = False,
        coalesce_linger_s: float = LINGER_S_DEFAULT,
        coalesce_items_max: int = limits.BATCH_ITEMS_MAX,
        coalesce_lanes: bool = False,
        channel: grpc.aio.Channel | None = None,
        token: str | None = None,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        if not 1 <= coalesce_items_max <= limits.BATCH_ITEMS_MAX:
            raise ValueError(f"coalesce_items_max must be 1..{limits.BATCH_ITEMS_MAX}")
        self.target = target
        self.deadline_s = deadline_s
        self.retry_policy = retry_policy
        self.actor = actor
        # The API key sent on every call; default $SHARDBANK_TOKEN.
        self._metadata = auth_metadata(token if token is not None else default_token())
        self._owns_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = bank_pb2_grpc.BankStub(self._channel)
        self._risk = risk_pb2_grpc.RiskStub(self._channel)
        self._coalescer: TransferCoalescer | None = None
        self._router: LaneRouter | None = None
        if coalesce:
            fetch = functools.partial(self._get_cluster_info, self.deadline_s)
            self._router = LaneRouter(fetch) if coalesce_lanes else None
            self._coalescer = TransferCoalescer(
                lambda items: self._send_transfers(items, self.deadline_s),
                coalesce_items_max,
                coalesce_linger_s,
                self._router,
            )

    @property
    def lane_router(self) -> LaneRouter | None:
        """The coalescing lanes' copy of the slot map (None without lanes)."""
        return self._router

    async def __aenter__(self) -> AsyncBankClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close_channel()

    async def close_channel(self) -> None:
        if self._coalescer is not None:
            await self._coalescer.aclose()
        if self._owns_channel:
            await self._channel.close()

    # Accounts.

    async def open_account(
        self,
        name: str,
        id_number: str,
        phone: str,
        currency: str = "CNY",
        account_type: str = "personal",
        id_type: str = "cn_resident_id",
        overdraft_limit: int = 0,
        country: str = "",
        idempotency_key: str | None = None,
    ) -> types_pb2.Account:
        """Retried like a transfer: every try carries one idempotency key (a
        fresh one unless given), so a resend after a lost reply returns the
        account the first try opened instead of opening a second one."""
        request = messages.open_account(
            name, id_number, phone, currency, account_type, id_type, overdraft_limit, country,
            idempotency_key or uuid.uuid4().hex,
        )  # fmt: skip

        async def attempt(deadline_s: float) -> types_pb2.Account:
            response = await self._stub.OpenAccounts(
                request, timeout=deadline_s, metadata=self._metadata, wait_for_ready=True
            )
            return messages.account_result(response)

        return await retry.call_async(self.retry_policy, self.deadline_s, attempt)

    async def get_account(self, account_id: int) -> types_pb2.Account:
        request = bank_pb2.GetAccountRequest(account_id=account_id)
        return await self._call(lambda d: self._stub.GetAccount(request, timeout=d, metadata=self._metadata))

    async def update_contact(
        self, account_id: int, phone: str | None = None, name: str | None = None
    ) -> types_pb2.Account:
        request = messages.update_contact(account_id, phone, name)
        return await self._account_call(
            lambda d: self._stub.UpdateContacts(request, timeout=d, metadata=self._metadata)
        )

    async def freeze(self, account_id: int, reason: str) -> types_pb2.Account:
        return await self._change_status(account_id, ledger_pb2.STATUS_ACTION_FREEZE, reason)

    async def unfreeze(self, account_id: int, reason: str) -> types_pb2.Account:
        return await self._change_status(account_id, ledger_pb2.STATUS_ACTION_UNFREEZE, reason)

    async def close(
        self, account_id: int, reason: str = "closed at the holder's request"
    ) -> types_pb2.Account:
        return await self._change_status(account_id, ledger_pb2.STATUS_ACTION_CLOSE, reason)

    async def _change_status(
        self, account_id: int, action: ledger_pb2.StatusAction.ValueType, reason: str
    ) -> types_pb2.Account:
        request = messages.change_status(account_id, action, reason, self.actor)
        return await self._account_call(
            lambda d: self._stub.ChangeAccountStatus(request, timeout=d, metadata=self._metadata)
        )

    async def _account_call(
        self, send: Callable[[float], Awaitable[ledger_pb2.AccountsResponse]]
    ) -> types_pb2.Account:
        async def attempt(deadline_s: float) -> types_pb2.Account:
            return messages.account_result(await send(deadline_s))

        return await retry.call_async(self.retry_policy, self.deadline_s, attempt)

    async def _call(self, send: Callable[[float], Awaitable[R]]) -> R:
        return await retry.call_async(self.retry_policy, self.deadline_s, send)

    # Money.

    async def deposit(
        self,
        account_id: int,
        amount_minor: int,
        currency: str,
        transfer_id: str | None = None,
        memo: str = "",
    ) -> types_pb2.Transfer:
        item = messages.transfer("deposit", 0, account_id, amount_minor, currency, transfer_id, memo)
        return await self._submit_one(item)

    async def withdraw(
        self,
        account_id: int,
        amount_minor: int,
        currency: str,
        transfer_id: str | None = None,
        memo: str = "",
    ) -> types_pb2.Transfer:
        item = messages.transfer("withdrawal", account_id, 0, amount_minor, currency, transfer_id, memo)
        return await self._submit_one(item)

    async def transfer(
        self,
        from_id: int,
        to_id: int,
        amount_minor: int,
        currency: str,
        transfer_id: str | None = None,
        memo: str = "",
        kind: str = "transfer",
    ) -> types_pb2.Transfer:
        item = messages.transfer(kind, from_id, to_id, amount_minor, currency, transfer_id, memo)
        return await self._submit_one(item)

    async def _submit_one(self, item: types_pb2.Transfer) -> types_pb2.Transfer:
        coalescer = self._coalescer

        async def attempt(deadline_s: float) -> types_pb2.Transfer:
            if coalescer is not None:
                outcome = await coalescer.submit(item, deadline_s)
            else:
                outcome = (await self._send_transfers([item], deadline_s))[0]
            return messages.checked(outcome)  # item UNAVAILABLE -> retried with the same id

        return await retry.call_async(self.retry_policy, self.deadline_s, attempt)

    async def submit_transfers(self, transfers: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        """Each item's outcome, in order (see `BankClient.submit_transfers`)."""
        stamped = messages.with_ids(transfers)
        outcomes: list[types_pb2.Transfer] = []
        for start in range(0, len(stamped), limits.BATCH_ITEMS_MAX):
            chunk = stamped[start : start + limits.BATCH_ITEMS_MAX]
            outcomes.extend(await self._call(functools.partial(self._send_transfers, chunk)))
        return outcomes

    async def _send_transfers(
        self, items: list[types_pb2.Transfer], deadline_s: float
    ) -> list[types_pb2.Transfer]:
        request = bank_pb2.SubmitTransfersRequest(transfers=items)
        response = await self._stub.SubmitTransfers(request, timeout=deadline_s, metadata=self._metadata)
        return messages.transfer_outcomes(items, response)

    async def get_transfer(self, transfer_id: str) -> types_pb2.Transfer:
        request = bank_pb2.GetTransferRequest(transfer_id=messages.known_transfer_id(transfer_id))
        return await self._call(lambda d: self._stub.GetTransfer(request, timeout=d, metadata=self._metadata))

    async def history(
        self, account_id: int, page_size: int = limits.HISTORY_PAGE_SIZE_DEFAULT, page_token: str = ""
    ) -> ledger_pb2.ListHistoryResponse:
        request = ledger_pb2.ListHistoryRequest(
            account_id=account_id, page_size=page_size, page_token=page_token
        )
        return await self._call(lambda d: self._stub.ListHistory(request, timeout=d, metadata=self._metadata))

    async def cluster_info(self) -> bank_pb2.ClusterInfo:
        return await self._call(self._get_cluster_info)

    async def _get_cluster_info(self, deadline_s: float) -> bank_pb2.ClusterInfo:
        request = bank_pb2.GetClusterInfoRequest()
        response: bank_pb2.ClusterInfo = await self._stub.GetClusterInfo(
            request, timeout=deadline_s, metadata=self._metadata
        )
        return response

    # Risk (the officers' calls most used from code; the rest are on BankClient).

    async def list_alerts(
        self,
        status: str = "",
        rule: str = "",
        account_id: int = 0,
        decision: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> risk_pb2.ListAlertsResponse:
        request = messages.list_alerts(status, rule, account_id, decision, page_size, page_token)
        return await self._call(lambda d: self._risk.ListAlerts(request, timeout=d, metadata=self._metadata))

    async def review_transfer(
        self, transfer_id: str, approve: bool, note: str = ""
    ) -> risk_pb2.ReviewTransferResponse:
        """Retried: the same decision again answers the same transfer."""
        request = messages.review(transfer_id, approve, note)
        return await self._call(
            lambda d: self._risk.ReviewTransfer(request, timeout=d, metadata=self._metadata)
        )
