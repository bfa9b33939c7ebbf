"""The shardbank client library (sync); `AsyncBankClient` is the asyncio twin.

    with BankClient("127.0.0.1:50051") as bank:
        account = bank.open_account("张三", "11010519491231002X", "+8613812345678")
        bank.deposit(account.id, 10050, "CNY")          # 100.50 CNY

Every call has a deadline. UNAVAILABLE (gateway restarting, shard or leader
changing) is retried within bounds; a transfer's id is chosen once, before the
first try, and every retry resends it, so a retry can never move money twice.
Single-item helpers raise a `ShardbankError` subclass for a refused item;
`submit_transfers` returns each item's outcome and raises only for the call.
`open_account` is the one write that is not retried (the gateway picks the
account id, so a resend could open a second account): it waits for the
connection instead (`wait_for_ready`) and tries once.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from clients import messages, retry
from clients.aio import AsyncBankClient
from clients.channel import CHANNEL_OPTIONS, DEFAULT_TARGET, auth_metadata, default_token
from clients.errors import ShardbankError
from clients.retry import RetryPolicy
from shardbank import limits
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, risk_pb2, risk_pb2_grpc, types_pb2

R = TypeVar("R")

__all__ = ["AsyncBankClient", "BankClient", "RetryPolicy", "ShardbankError"]


class BankClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        deadline_s: float = limits.CALL_DEADLINE_S,
        retry_policy: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen)
        actor: str = "",
        channel: grpc.Channel | None = None,
        token: str | None = None,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        self.target = target
        self.deadline_s = deadline_s
        self.retry_policy = retry_policy
        self.actor = actor
        # The API key sent on every call; default $SHARDBANK_TOKEN.
        self._metadata = auth_metadata(token if token is not None else default_token())
        self._owns_channel = channel is None
        self._channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = bank_pb2_grpc.BankStub(self._channel)
        self._risk = risk_pb2_grpc.RiskStub(self._channel)

    def __enter__(self) -> BankClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_channel()

    def close_channel(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def _unary(
        self,
        rpc: Callable[..., object],
        request: Message,
        reply_type: type[R],
        policy: RetryPolicy | None = None,
    ) -> R:
        """One call with this client's deadline and credentials, retried per
        `policy` (default: the client's; NO_RETRY for calls a resend would repeat).
        The generated stubs are untyped; `reply_type` types the reply and checks it."""

        def attempt(deadline_s: float) -> R:
            reply = rpc(request, timeout=deadline_s, metadata=self._metadata)
            if not isinstance(reply, reply_type):
                raise TypeError(f"{reply_type.__name__} expected, got {type(reply).__name__}")
            return reply

        return retry.call(self.retry_policy if policy is None else policy, self.deadline_s, attempt)

    # Accounts.

    def open_account(
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

        def attempt(deadline_s: float) -> types_pb2.Account:
            response: ledger_pb2.AccountsResponse = self._stub.OpenAccounts(
                request, timeout=deadline_s, metadata=self._metadata, wait_for_ready=True
            )
            return messages.account_result(response)

        return retry.call(self.retry_policy, self.deadline_s, attempt)

    def get_account(self, account_id: int) -> types_pb2.Account:
        request = bank_pb2.GetAccountRequest(account_id=account_id)

        return self._unary(self._stub.GetAccount, request, types_pb2.Account)

    def update_contact(
        self, account_id: int, phone: str | None = None, name: str | None = None
    ) -> types_pb2.Account:
        request = messages.update_contact(account_id, phone, name)
        return self._account_call(
            lambda d: self._stub.UpdateContacts(request, timeout=d, metadata=self._metadata)
        )

    def freeze(self, account_id: int, reason: str) -> types_pb2.Account:
        return self._change_status(account_id, ledger_pb2.STATUS_ACTION_FREEZE, reason)

    def unfreeze(self, account_id: int, reason: str) -> types_pb2.Account:
        return self._change_status(account_id, ledger_pb2.STATUS_ACTION_UNFREEZE, reason)

    def close(self, account_id: int, reason: str = "closed at the holder's request") -> types_pb2.Account:
        return self._change_status(account_id, ledger_pb2.STATUS_ACTION_CLOSE, reason)

    def _change_status(
        self, account_id: int, action: ledger_pb2.StatusAction.ValueType, reason: str
    ) -> types_pb2.Account:
        request = messages.change_status(account_id, action, reason, self.actor)
        return self._account_call(
            lambda d: self._stub.ChangeAccountStatus(request, timeout=d, metadata=self._metadata)
        )

    def _account_call(self, send: Callable[[float], ledger_pb2.AccountsResponse]) -> types_pb2.Account:
        return retry.call(self.retry_policy, self.deadline_s, lambda d: messages.account_result(send(d)))

    # Money.

    def deposit(
        self,
        account_id: int,
        amount_minor: int,
        currency: str,
        transfer_id: str | None = None,
        memo: str = "",
    ) -> types_pb2.Transfer:
        item = messages.transfer("deposit", 0, account_id, amount_minor, currency, transfer_id, memo)
        return self._submit_one(item)

    def withdraw(
        self,
        account_id: int,
        amount_minor: int,
        currency: str,
        transfer_id: str | None = None,
        memo: str = "",
    ) -> types_pb2.Transfer:
        item = messages.transfer("withdrawal", account_id, 0, amount_minor, currency, transfer_id, memo)
        return self._submit_one(item)

    def transfer(
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
        return self._submit_one(item)

    def _submit_one(self, item: types_pb2.Transfer) -> types_pb2.Transfer:
        def attempt(deadline_s: float) -> types_pb2.Transfer:
            # An item refused with UNAVAILABLE raises Unavailable here: retried, same id.
            return messages.checked(self._send_transfers([item], deadline_s)[0])

        return retry.call(self.retry_policy, self.deadline_s, attempt)

    def submit_transfers(self, transfers: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        """Each item's outcome, in order; items without an id get a uuid4 first.

        Raises only when the call itself fails (after retries); a refused item
        is an outcome with a non-zero `code`. Larger batches than a server
        takes are sent as several calls.
        """
        stamped = messages.with_ids(transfers)
        outcomes: list[types_pb2.Transfer] = []
        for start in range(0, len(stamped), limits.BATCH_ITEMS_MAX):
            chunk = stamped[start : start + limits.BATCH_ITEMS_MAX]
            send = functools.partial(self._send_transfers, chunk)
            outcomes.extend(retry.call(self.retry_policy, self.deadline_s, send))
        return outcomes

    def _send_transfers(self, items: list[types_pb2.Transfer], deadline_s: float) -> list[types_pb2.Transfer]:
        request = bank_pb2.SubmitTransfersRequest(transfers=items)
        response: ledger_pb2.TransfersResponse = self._stub.SubmitTransfers(
            request, timeout=deadline_s, metadata=self._metadata
        )
        return messages.transfer_outcomes(items, response)

    def get_transfer(self, transfer_id: str) -> types_pb2.Transfer:
        request = bank_pb2.GetTransferRequest(transfer_id=messages.known_transfer_id(transfer_id))

        return self._unary(self._stub.GetTransfer, request, types_pb2.Transfer)

    def history(
        self, account_id: int, page_size: int = limits.HISTORY_PAGE_SIZE_DEFAULT, page_token: str = ""
    ) -> ledger_pb2.ListHistoryResponse:
        request = ledger_pb2.ListHistoryRequest(
            account_id=account_id, page_size=page_size, page_token=page_token
        )

        return self._unary(self._stub.ListHistory, request, ledger_pb2.ListHistoryResponse)

    def cluster_info(self) -> bank_pb2.ClusterInfo:
        request = bank_pb2.GetClusterInfoRequest()

        return self._unary(self._stub.GetClusterInfo, request, bank_pb2.ClusterInfo)

    # API keys and audit (admin; ListApiKeys and ListAudit also auditor).

    def create_api_key(self, role: str, customer_id: str = "") -> bank_pb2.CreateApiKeyResponse:
        """A new key; the reply's `token` is the only copy of its secret. Not retried
        (a resend would create a second key)."""
        request = bank_pb2.CreateApiKeyRequest(role=role, customer_id=customer_id)

        return self._unary(self._stub.CreateApiKey, request, bank_pb2.CreateApiKeyResponse, retry.NO_RETRY)

    def revoke_api_key(self, key_id: str) -> bank_pb2.ApiKey:
        request = bank_pb2.RevokeApiKeyRequest(key_id=key_id)

        return self._unary(self._stub.RevokeApiKey, request, bank_pb2.ApiKey)

    def list_api_keys(self) -> bank_pb2.ListApiKeysResponse:
        request = bank_pb2.ListApiKeysRequest()

        return self._unary(self._stub.ListApiKeys, request, bank_pb2.ListApiKeysResponse)

    def list_audit(
        self,
        page_size: int = 0,
        page_token: str = "",
        actor_key_id: str = "",
        action: str = "",
        target: str = "",
    ) -> bank_pb2.ListAuditResponse:
        """Newest first; `next_page_token` continues, empty on the last page."""
        request = bank_pb2.ListAuditRequest(
            page_size=page_size,
            page_token=page_token,
            actor_key_id=actor_key_id,
            action=action,
            target=target,
        )

        return self._unary(self._stub.ListAudit, request, bank_pb2.ListAuditResponse)

    # Risk: alerts and the review of held transfers (risk_officer, admin; auditor reads alerts).

    def list_alerts(
        self,
        status: str = "",
        rule: str = "",
        account_id: int = 0,
        decision: str = "",
        page_size: int = 0,
        page_token: str = "",
        created_since_unix_ms: int = 0,
        created_until_unix_ms: int = 0,
    ) -> risk_pb2.ListAlertsResponse:
        """Newest first; `next_page_token` continues, empty on the last page."""
        request = messages.list_alerts(
            status,
            rule,
            account_id,
            decision,
            page_size,
            page_token,
            created_since_unix_ms,
            created_until_unix_ms,
        )

        return self._unary(self._risk.ListAlerts, request, risk_pb2.ListAlertsResponse)

    def get_alert(self, alert_id: str) -> risk_pb2.Alert:
        return self._unary(self._risk.GetAlert, risk_pb2.GetAlertRequest(alert_id=alert_id), risk_pb2.Alert)

    def acknowledge_alert(self, alert_id: str, note: str = "") -> risk_pb2.Alert:
        request = risk_pb2.AlertActionRequest(alert_id=alert_id, note=note)

        return self._unary(self._risk.AcknowledgeAlert, request, risk_pb2.Alert)

    def resolve_alert(self, alert_id: str, note: str) -> risk_pb2.Alert:
        """Not retried: a resend after a lost reply would be refused ALERT_RESOLVED."""
        request = risk_pb2.AlertActionRequest(alert_id=alert_id, note=note)

        return self._unary(self._risk.ResolveAlert, request, risk_pb2.Alert, retry.NO_RETRY)

    def review_transfer(
        self, transfer_id: str, approve: bool, note: str = ""
    ) -> risk_pb2.ReviewTransferResponse:
        """Approve (it completes) or reject (hold released) a held transfer.
        Retried: the same decision again answers the same transfer."""
        request = messages.review(transfer_id, approve, note)

        return self._unary(self._risk.ReviewTransfer, request, risk_pb2.ReviewTransferResponse)
