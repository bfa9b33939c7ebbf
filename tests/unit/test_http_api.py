"""The HTTP/JSON edge against a fake `Bank` on the edge's in-process channel
(`gateway.http.local.LocalChannel`, as in the gateway process).

Route mapping and the JSON mapping both ways, Idempotency-Key rules, and the
one error model: every gRPC status, per-item failures, aiohttp's own refusals
(404, 405, 413), malformed bodies. Each test drives the app through aiohttp's
TestClient on its own event loop; the fake records every call and its metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_status import rpc_status
from multidict import CIMultiDict

from gateway.http import LocalChannel, create_app, limits
from shardbank import errors
from shardbank.v1 import bank_pb2, bank_pb2_grpc, ledger_pb2, types_pb2

ACCOUNT = 6222020000000015
OTHER = 6222020000000023
TRANSFER_ID = "0b6f1c1e-6a57-4c8e-9d0a-3f6c2b1d9e42"
OTHER_TRANSFER_ID = "5c0b3a8e-1d2f-4e6a-8b9c-0d1e2f3a4b5c"
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Sleep:
    """An answer that takes this long (to trip the call deadline)."""

    seconds: float


Answer: TypeAlias = message.Message | errors.BankError | grpc.Status | Exception | Sleep
Answerer: TypeAlias = Callable[[message.Message], Answer]


def _account(account_id: int = ACCOUNT, **fields: Any) -> types_pb2.Account:
    return types_pb2.Account(
        id=account_id,
        currency="CNY",
        type=types_pb2.ACCOUNT_TYPE_PERSONAL,
        status=types_pb2.ACCOUNT_STATUS_ACTIVE,
        balance=10050,
        available=10050,
        **fields,
    )


def _committed(request: message.Message) -> ledger_pb2.TransfersResponse:
    assert isinstance(request, bank_pb2.SubmitTransfersRequest)
    outcomes = []
    for transfer in request.transfers:
        outcome = types_pb2.Transfer()
        outcome.CopyFrom(transfer)
        outcome.status = types_pb2.TRANSFER_STATUS_COMMITTED
        outcomes.append(outcome)
    return ledger_pb2.TransfersResponse(transfers=outcomes)


def _one_account(request: message.Message) -> ledger_pb2.AccountsResponse:
    if isinstance(request, ledger_pb2.UpdateContactsRequest):
        account_id = request.updates[0].account_id
    elif isinstance(request, ledger_pb2.ChangeStatusRequest):
        account_id = request.items[0].account_id
    else:
        account_id = ACCOUNT
    return ledger_pb2.AccountsResponse(results=[ledger_pb2.AccountResult(account=_account(account_id))])


DEFAULTS: dict[str, Answerer] = {
    "OpenAccounts": _one_account,
    "GetAccount": lambda request: _account(request.account_id),  # type: ignore[attr-defined]
    "UpdateContacts": _one_account,
    "ChangeAccountStatus": _one_account,
    "SubmitTransfers": _committed,
    "GetTransfer": lambda request: types_pb2.Transfer(
        id=request.transfer_id,  # type: ignore[attr-defined]
        kind=types_pb2.TRANSFER_KIND_DEPOSIT,
        status=types_pb2.TRANSFER_STATUS_COMMITTED,
        amount=10050,
    ),
    "ListHistory": lambda request: ledger_pb2.ListHistoryResponse(
        entries=[types_pb2.HistoryEntry(balance_delta=-5, balance_after=10045, journal_seq=7)],
        next_page_token="next",
    ),
    "GetClusterInfo": lambda request: bank_pb2.ClusterInfo(slot_map_version=7, slot_count=4096),
}


@dataclass
class Call:
    method: str
    request: message.Message
    metadata: dict[str, str]


@dataclass
class FakeBank(bank_pb2_grpc.BankServicer):
    """Canned answers per method; `answers[name]` overrides the default."""

    answers: dict[str, Answer | Answerer] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    async def _answer(self, name: str, request: message.Message, context: grpc.aio.ServicerContext) -> Any:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.calls.append(Call(name, request, metadata))
        answer = self.answers.get(name, DEFAULTS[name])
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, Sleep):
            await asyncio.sleep(answer.seconds)
            return DEFAULTS[name](request)
        if isinstance(answer, errors.BankError):
            await errors.abort(context, answer)
        if isinstance(answer, grpc.Status):
            await context.abort_with_status(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def OpenAccounts(self, request: Any, context: Any) -> Any:
        return await self._answer("OpenAccounts", request, context)

    async def GetAccount(self, request: Any, context: Any) -> Any:
        return await self._answer("GetAccount", request, context)

    async def UpdateContacts(self, request: Any, context: Any) -> Any:
        return await self._answer("UpdateContacts", request, context)

    async def ChangeAccountStatus(self, request: Any, context: Any) -> Any:
        return await self._answer("ChangeAccountStatus", request, context)

    async def SubmitTransfers(self, request: Any, context: Any) -> Any:
        return await self._answer("SubmitTransfers", request, context)

    async def GetTransfer(self, request: Any, context: Any) -> Any:
        return await self._answer("GetTransfer", request, context)

    async def ListHistory(self, request: Any, context: Any) -> Any:
        return await self._answer("ListHistory", request, context)

    async def GetClusterInfo(self, request: Any, context: Any) -> Any:
        return await self._answer("GetClusterInfo", request, context)

    @property
    def last(self) -> Call:
        assert self.calls, "no gRPC call was made"
        return self.calls[-1]


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def error(self, status: int, code: str, reason: str) -> dict[str, Any]:
        """Assert this is the one error shape with these values; return the body."""
        assert self.status == status, (self.status, self.text)
        assert self.headers["Content-Type"].startswith("application/json")
        body = self.json
        assert set(body) == {"code", "reason", "message", "details"}, body
        assert (body["code"], body["reason"]) == (code, reason), body
        assert body["details"]["request_id"] == self.headers["X-Request-Id"]
        assert "Traceback" not in self.text
        return dict(body)


class Http:
    """Sync front of an aiohttp TestClient on its own loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: TestClient[web.Request, web.Application],
        fake: FakeBank,
    ) -> None:
        self.loop = loop
        self.client = client
        self.fake = fake

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            kwargs["headers"] = {**JSON_HEADERS, **kwargs.get("headers", {})}
        return self.loop.run_until_complete(self._request(method, path, **kwargs))

    async def _request(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.client.request(method, path, **kwargs) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.text())


@contextlib.asynccontextmanager
async def _serving(
    fake: FakeBank, health: int | None, call_deadline_s: float
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    channel = LocalChannel()
    bank_pb2_grpc.add_BankServicer_to_server(fake, channel)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, channel)
    if health is not None:
        await health_servicer.set("shardbank.v1.Bank", health)
    app = create_app(channel, call_deadline_s=call_deadline_s)
    async with TestClient(TestServer(app)) as client:
        yield client


@contextlib.contextmanager
def serve(
    fake: FakeBank | None = None,
    *,
    health: int | None = health_pb2.HealthCheckResponse.SERVING,
    call_deadline_s: float = 5.0,
) -> Iterator[Http]:
    fake = fake or FakeBank()
    loop = asyncio.new_event_loop()
    context = _serving(fake, health, call_deadline_s)
    try:
        client = loop.run_until_complete(context.__aenter__())
        try:
            yield Http(loop, client, fake)
        finally:
            loop.run_until_complete(context.__aexit__(None, None, None))
    finally:
        loop.close()


@pytest.fixture
def http() -> Iterator[Http]:
    with serve() as front:
        yield front


def _rich(code: grpc.StatusCode, reason: str, message: str, retry_delay_s: int | None = None) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="shardbank", metadata={"shard": "shard-2"}))
    details = [info]
    if retry_delay_s is not None:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_delay_s)))
        details.append(retry)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=details))


# Accounts.

HOLDER = {
    "name": "张三",
    "id_type": "ID_DOCUMENT_TYPE_CN_RESIDENT_ID",
    "id_number": "11010519491231002X",
    "phone": "+8613812345678",
}


def test_open_account_maps_json_both_ways_and_forwards_credentials(http: Http) -> None:
    reply = http.request(
        "POST",
        "/v1/accounts",
        {"currency": "CNY", "type": "ACCOUNT_TYPE_PERSONAL", "holder": HOLDER, "overdraft_limit": "500"},
        headers={"Authorization": "Bearer t0ken", "X-Request-Id": "req-123"},
    )
    assert reply.status == 201, reply.text
    assert reply.headers["Location"] == f"/v1/accounts/{ACCOUNT}"
    assert reply.headers["X-Request-Id"] == "req-123"
    call = http.fake.last
    assert call.method == "OpenAccounts"
    assert isinstance(call.request, bank_pb2.OpenAccountsRequest)
    (item,) = call.request.accounts
    assert item.type == types_pb2.ACCOUNT_TYPE_PERSONAL
    assert item.overdraft_limit == 500
    assert item.holder.id_type == types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID
    assert item.holder.name == "张三"
    assert call.metadata["authorization"] == "Bearer t0ken"
    assert call.metadata["x-request-id"] == "req-123"
    body = reply.json
    # proto3 JSON: proto field names, 64-bit ints as strings, enums by name, zero values printed.
    assert body["id"] == str(ACCOUNT)
    assert body["balance"] == "10050"
    assert body["held"] == "0"
    assert body["status"] == "ACCOUNT_STATUS_ACTIVE"
    assert body["status_history"] == []


def test_lower_camel_json_names_are_accepted_on_input(http: Http) -> None:
    reply = http.request("POST", "/v1/accounts", {"currency": "CNY", "overdraftLimit": 7, "holder": HOLDER})
    assert reply.status == 201, reply.text
    assert http.fake.last.request.accounts[0].overdraft_limit == 7  # type: ignore[attr-defined]


def test_get_account(http: Http) -> None:
    reply = http.request("GET", f"/v1/accounts/{ACCOUNT}")
    assert reply.status == 200
    assert http.fake.last.request == bank_pb2.GetAccountRequest(account_id=ACCOUNT)
    assert (reply.json["balance"], reply.json["available"]) == ("10050", "10050")
    assert "x-request-id" in http.fake.last.metadata
    assert "authorization" not in http.fake.last.metadata


@pytest.mark.parametrize("bad", ["abc", "-1", "12ab", str(2**64), "١٢٣"])
def test_non_numeric_account_id_is_400_without_a_call(http: Http, bad: str) -> None:
    http.request("GET", f"/v1/accounts/{bad}").error(400, "INVALID_ARGUMENT", "INVALID_ACCOUNT_ID")
    http.request("GET", f"/v1/accounts/{bad}/transfers").error(400, "INVALID_ARGUMENT", "INVALID_ACCOUNT_ID")
    assert http.fake.calls == []


def test_update_contacts_takes_the_id_from_the_path(http: Http) -> None:
    reply = http.request("PATCH", f"/v1/accounts/{ACCOUNT}", {"phone": "+8613900000000"})
    assert reply.status == 200, reply.text
    assert http.fake.last.request == ledger_pb2.UpdateContactsRequest(
        updates=[ledger_pb2.ContactUpdate(account_id=ACCOUNT, phone="+8613900000000")]
    )


def test_update_contacts_refuses_an_id_in_the_body(http: Http) -> None:
    reply = http.request("PATCH", f"/v1/accounts/{ACCOUNT}", {"account_id": str(OTHER), "name": "x"})
    assert "account_id" in reply.error(400, "INVALID_ARGUMENT", "INVALID_BODY")["message"]
    assert http.fake.calls == []


@pytest.mark.parametrize(
    ("verb", "action"),
    [
        ("freeze", ledger_pb2.STATUS_ACTION_FREEZE),
        ("unfreeze", ledger_pb2.STATUS_ACTION_UNFREEZE),
        ("close", ledger_pb2.STATUS_ACTION_CLOSE),
    ],
)
def test_status_changes(http: Http, verb: str, action: int) -> None:
    reply = http.request("POST", f"/v1/accounts/{ACCOUNT}:{verb}", {"reason": "KYC review"})
    assert reply.status == 200, reply.text
    assert http.fake.last.request == ledger_pb2.ChangeStatusRequest(
        items=[ledger_pb2.StatusRequestItem(account_id=ACCOUNT, action=action, reason="KYC review")]  # type: ignore[arg-type]
    )


def test_status_change_refuses_an_action_in_the_body(http: Http) -> None:
    reply = http.request("POST", f"/v1/accounts/{ACCOUNT}:freeze", {"action": "STATUS_ACTION_CLOSE"})
    reply.error(400, "INVALID_ARGUMENT", "INVALID_BODY")


def test_failed_item_of_a_single_item_route_maps_like_a_status() -> None:
    refused = ledger_pb2.AccountsResponse(
        results=[ledger_pb2.AccountResult(code=9, reason=errors.ACCOUNT_ALREADY_FROZEN, message="already")]
    )
    missing = ledger_pb2.AccountsResponse(
        results=[ledger_pb2.AccountResult(code=5, reason=errors.ACCOUNT_NOT_FOUND, message="no such")]
    )
    with serve(FakeBank(answers={"ChangeAccountStatus": refused, "UpdateContacts": missing})) as http:
        reply = http.request("POST", f"/v1/accounts/{ACCOUNT}:freeze", {"reason": "x"})
        body = reply.error(422, "FAILED_PRECONDITION", errors.ACCOUNT_ALREADY_FROZEN)
        assert body["message"] == "already"
        reply = http.request("PATCH", f"/v1/accounts/{ACCOUNT}", {"name": "李四"})
        reply.error(404, "NOT_FOUND", errors.ACCOUNT_NOT_FOUND)


def test_a_batch_of_one_answered_with_two_is_a_500() -> None:
    two = ledger_pb2.AccountsResponse(results=[ledger_pb2.AccountResult(), ledger_pb2.AccountResult()])
    with serve(FakeBank(answers={"OpenAccounts": two})) as http:
        http.request("POST", "/v1/accounts", {"currency": "CNY"}).error(500, "INTERNAL", errors.INTERNAL)


# History.


def test_history_forwards_paging(http: Http) -> None:
    reply = http.request("GET", f"/v1/accounts/{ACCOUNT}/transfers?page_size=20&page_token=abc")
    assert reply.status == 200, reply.text
    assert http.fake.last.request == ledger_pb2.ListHistoryRequest(
        account_id=ACCOUNT, page_size=20, page_token="abc"
    )
    assert reply.json["next_page_token"] == "next"
    assert reply.json["entries"][0]["balance_after"] == "10045"
    assert reply.json["entries"][0]["journal_seq"] == "7"


def test_history_without_page_size_asks_for_the_default(http: Http) -> None:
    assert http.request("GET", f"/v1/accounts/{ACCOUNT}/transfers").status == 200
    assert http.fake.last.request.page_size == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("page_size", ["0", "1001", "abc", "-1", "1.5", ""])
def test_history_page_size_out_of_range(http: Http, page_size: str) -> None:
    reply = http.request("GET", f"/v1/accounts/{ACCOUNT}/transfers?page_size={page_size}")
    reply.error(400, "INVALID_ARGUMENT", errors.INVALID_PAGE_SIZE)


def test_history_page_size_bounds_are_accepted(http: Http) -> None:
    for size in (limits.PAGE_SIZE_MIN, limits.PAGE_SIZE_MAX):
        assert http.request("GET", f"/v1/accounts/{ACCOUNT}/transfers?page_size={size}").status == 200


def test_history_refuses_long_tokens_repeated_and_unknown_parameters(http: Http) -> None:
    base = f"/v1/accounts/{ACCOUNT}/transfers"
    token = "t" * (limits.PAGE_TOKEN_LENGTH_MAX + 1)
    http.request("GET", f"{base}?page_token={token}").error(
        400, "INVALID_ARGUMENT", errors.INVALID_PAGE_TOKEN
    )
    http.request("GET", f"{base}?page_size=1&page_size=2").error(400, "INVALID_ARGUMENT", "INVALID_QUERY")
    http.request("GET", f"{base}?pagesize=5").error(400, "INVALID_ARGUMENT", "INVALID_QUERY")
    http.request("GET", f"/v1/accounts/{ACCOUNT}?verbose=1").error(400, "INVALID_ARGUMENT", "INVALID_QUERY")
    assert http.fake.calls == []


# Transfers.

TRANSFER = {
    "debit_account_id": str(ACCOUNT),
    "credit_account_id": str(OTHER),
    "amount": "10050",
    "currency": "CNY",
    "memo": "rent",
}


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/deposits", types_pb2.TRANSFER_KIND_DEPOSIT),
        ("/v1/withdrawals", types_pb2.TRANSFER_KIND_WITHDRAWAL),
        ("/v1/transfers", types_pb2.TRANSFER_KIND_TRANSFER),
        ("/v1/payments", types_pb2.TRANSFER_KIND_PAYMENT),
    ],
)
def test_transfer_routes_imply_the_kind(http: Http, path: str, kind: int) -> None:
    reply = http.request("POST", path, {**TRANSFER, "id": TRANSFER_ID})
    assert reply.status == 201, reply.text
    assert reply.headers["Location"] == f"/v1/transfers/{TRANSFER_ID}"
    (sent,) = http.fake.last.request.transfers  # type: ignore[attr-defined]
    assert sent == types_pb2.Transfer(
        id=TRANSFER_ID,
        kind=kind,  # type: ignore[arg-type]
        debit_account_id=ACCOUNT,
        credit_account_id=OTHER,
        amount=10050,
        currency="CNY",
        memo="rent",
    )
    body = reply.json
    assert body["status"] == "TRANSFER_STATUS_COMMITTED"
    assert body["kind"] == types_pb2.TransferKind.Name(kind)  # type: ignore[arg-type]
    assert body["amount"] == "10050"
    assert body["cross_shard"] is False


def test_pending_transfer_is_202() -> None:
    def pending(request: message.Message) -> message.Message:
        reply = _committed(request)
        reply.transfers[0].status = types_pb2.TRANSFER_STATUS_PENDING
        reply.transfers[0].cross_shard = True
        return reply

    with serve(FakeBank(answers={"SubmitTransfers": pending})) as http:
        reply = http.request("POST", "/v1/transfers", {**TRANSFER, "id": TRANSFER_ID})
        assert reply.status == 202, reply.text
        assert reply.json["status"] == "TRANSFER_STATUS_PENDING"


def test_idempotency_key_header_supplies_the_id(http: Http) -> None:
    reply = http.request("POST", "/v1/transfers", TRANSFER, headers={"Idempotency-Key": TRANSFER_ID})
    assert reply.status == 201, reply.text
    assert http.fake.last.request.transfers[0].id == TRANSFER_ID  # type: ignore[attr-defined]


def test_idempotency_key_equal_to_the_body_id_is_fine(http: Http) -> None:
    headers = {"Idempotency-Key": TRANSFER_ID.upper()}  # the same UUID
    reply = http.request("POST", "/v1/transfers", {**TRANSFER, "id": TRANSFER_ID}, headers=headers)
    assert reply.status == 201, reply.text
    assert http.fake.last.request.transfers[0].id == TRANSFER_ID  # type: ignore[attr-defined]


def test_idempotency_key_different_from_the_body_id_is_400(http: Http) -> None:
    headers = {"Idempotency-Key": OTHER_TRANSFER_ID}
    reply = http.request("POST", "/v1/transfers", {**TRANSFER, "id": TRANSFER_ID}, headers=headers)
    reply.error(400, "INVALID_ARGUMENT", errors.INVALID_TRANSFER_ID)
    assert http.fake.calls == []


def test_transfer_without_any_id_is_400(http: Http) -> None:
    http.request("POST", "/v1/deposits", TRANSFER).error(400, "INVALID_ARGUMENT", errors.INVALID_TRANSFER_ID)
    assert http.fake.calls == []


def test_idempotency_key_on_a_batch_is_refused(http: Http) -> None:
    reply = http.request(
        "POST", "/v1/transfers:batch", {"transfers": [TRANSFER]}, headers={"Idempotency-Key": TRANSFER_ID}
    )
    reply.error(400, "INVALID_ARGUMENT", "INVALID_HEADER")


@pytest.mark.parametrize("field", ["kind", "status", "code", "reason", "cross_shard", "created_at_unix_ms"])
def test_single_transfer_refuses_route_and_output_fields(http: Http, field: str) -> None:
    value: Any = {"kind": "TRANSFER_KIND_DEPOSIT", "status": "TRANSFER_STATUS_COMMITTED", "cross_shard": True}
    body = {**TRANSFER, "id": TRANSFER_ID, field: value.get(field, "1")}
    reply = http.request("POST", "/v1/transfers", body)
    assert field in reply.error(400, "INVALID_ARGUMENT", "INVALID_BODY")["message"]
    assert http.fake.calls == []


def test_refused_transfer_maps_its_code_and_says_its_status() -> None:
    def refused(request: message.Message) -> message.Message:
        reply = _committed(request)
        outcome = reply.transfers[0]
        outcome.status = types_pb2.TRANSFER_STATUS_ABORTED
        outcome.code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
        outcome.reason = errors.INSUFFICIENT_FUNDS
        outcome.message = "available 0 < 10050"
        return reply

    with serve(FakeBank(answers={"SubmitTransfers": refused})) as http:
        reply = http.request("POST", "/v1/withdrawals", {**TRANSFER, "id": TRANSFER_ID})
        body = reply.error(422, "FAILED_PRECONDITION", errors.INSUFFICIENT_FUNDS)
        assert body["details"]["transfer_id"] == TRANSFER_ID
        assert body["details"]["transfer_status"] == "TRANSFER_STATUS_ABORTED"
        assert body["message"] == "available 0 < 10050"


def test_unsettled_transfer_is_an_error_not_a_success() -> None:
    def unsettled(request: message.Message) -> message.Message:
        reply = _committed(request)
        outcome = reply.transfers[0]
        outcome.status = types_pb2.TRANSFER_STATUS_PENDING
        outcome.code = grpc.StatusCode.UNAVAILABLE.value[0]
        outcome.reason = errors.SHARD_UNAVAILABLE
        return reply

    with serve(FakeBank(answers={"SubmitTransfers": unsettled})) as http:
        reply = http.request("POST", "/v1/transfers", {**TRANSFER, "id": TRANSFER_ID})
        body = reply.error(503, "UNAVAILABLE", errors.SHARD_UNAVAILABLE)
        assert body["details"]["transfer_status"] == "TRANSFER_STATUS_PENDING"
        assert reply.headers["Retry-After"] == str(limits.RETRY_AFTER_S_DEFAULT)


def test_batch_returns_per_item_outcomes(http: Http) -> None:
    items = [
        {**TRANSFER, "id": TRANSFER_ID, "kind": "TRANSFER_KIND_TRANSFER"},
        {**TRANSFER, "id": OTHER_TRANSFER_ID, "kind": "TRANSFER_KIND_PAYMENT"},
    ]
    reply = http.request("POST", "/v1/transfers:batch", {"transfers": items})
    assert reply.status == 200, reply.text
    sent = http.fake.last.request.transfers  # type: ignore[attr-defined]
    assert [t.kind for t in sent] == [types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT]
    assert [t["id"] for t in reply.json["transfers"]] == [TRANSFER_ID, OTHER_TRANSFER_ID]


def test_batch_too_large_is_429_without_retry_after(http: Http) -> None:
    items = [{"id": str(i)} for i in range(limits.BATCH_ITEMS_MAX + 1)]
    reply = http.request("POST", "/v1/transfers:batch", {"transfers": items})
    reply.error(429, "RESOURCE_EXHAUSTED", errors.BATCH_TOO_LARGE)
    assert "Retry-After" not in reply.headers
    assert http.fake.calls == []


def test_batch_at_the_limit_is_sent(http: Http) -> None:
    items = [{**TRANSFER, "id": str(i), "kind": 3} for i in range(limits.BATCH_ITEMS_MAX)]
    assert http.request("POST", "/v1/transfers:batch", {"transfers": items}).status == 200
    assert len(http.fake.last.request.transfers) == limits.BATCH_ITEMS_MAX  # type: ignore[attr-defined]


def test_empty_batch_is_400(http: Http) -> None:
    http.request("POST", "/v1/transfers:batch", {"transfers": []}).error(
        400, "INVALID_ARGUMENT", errors.BATCH_EMPTY
    )
    http.request("POST", "/v1/transfers:batch", {}).error(400, "INVALID_ARGUMENT", errors.BATCH_EMPTY)


def test_get_transfer_and_cluster(http: Http) -> None:
    reply = http.request("GET", f"/v1/transfers/{TRANSFER_ID}")
    assert reply.status == 200
    assert http.fake.last.request == bank_pb2.GetTransferRequest(transfer_id=TRANSFER_ID)
    assert reply.json["kind"] == "TRANSFER_KIND_DEPOSIT"
    reply = http.request("GET", "/v1/cluster")
    assert reply.status == 200
    assert reply.json["slot_map_version"] == "7"
    assert reply.json["slot_count"] == 4096
    assert reply.json["shards"] == []
