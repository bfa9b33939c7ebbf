"""Request handlers: HTTP in, one `Bank` call, HTTP out.

Single-item routes are batches of one in the gRPC API; each handler here
unwraps the one result and turns a failed item into the same error a failed
call would be (`errors.item_error`), so a client sees one error model whether
the refusal came from the gateway as a status or as an item outcome.
Handlers stay thin: parsing is `codec` (`transfer_json` for transfers),
calling is `calls`, the route table (`routes`) says which handler serves
which path. Single transfers go through `coalesce`: concurrent ones of the
same caller and kind share one call, each still answered from its own item.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import message

from gateway.http import codec, limits
from gateway.http.calls import COALESCER_KEY, authorization_of, call, peer_of, upstream
from gateway.http.errors import INVALID_HEADER, INVALID_QUERY, REQUEST_ID_KEY, broken_reply, item_error
from gateway.http.transfer_json import TransferReader, transfer_json, transfers_json
from shardbank import errors
from shardbank.v1 import bank_pb2, ledger_pb2, types_pb2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Fields of a Transfer a client sets on a single-transfer route: the kind
# comes from the route, the rest are outputs.
TRANSFER_INPUT_FIELDS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "currency",
    "memo",
    "reference",
)
# PATCH /v1/accounts/{account_id}: the id comes from the path.
CONTACT_INPUT_FIELDS = ("phone", "name")
# POST /v1/accounts/{account_id}:freeze|:unfreeze|:close.
STATUS_INPUT_FIELDS = ("reason",)
_UINT64_MAX = 2**64 - 1
_SINGLE_TRANSFER = TransferReader(TRANSFER_INPUT_FIELDS)
# A batch item may also set its kind.
BATCH_ITEM_INPUT_FIELDS = (*TRANSFER_INPUT_FIELDS, "kind")
_BATCH_ITEM = TransferReader(BATCH_ITEM_INPUT_FIELDS)


def json_response(msg: message.Message, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return codec.json_body(codec.to_json(msg), status, headers)


def account_id_of(request: web.Request) -> int:
    """The path's account id: decimal digits of a uint64 (the Luhn check is the gateway's)."""
    text = request.match_info["account_id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > _UINT64_MAX:
        raise errors.invalid(errors.INVALID_ACCOUNT_ID, "the account id must be a decimal number")
    return int(text)


def one_account(reply: ledger_pb2.AccountsResponse) -> types_pb2.Account:
    if len(reply.results) != 1:
        raise broken_reply(f"{len(reply.results)} account results for one item")
    result = reply.results[0]
    if result.code != 0:
        raise item_error(result.code, result.reason, result.message)
    if not result.HasField("account"):
        raise broken_reply("an account result without the account")
    return result.account


def transfer_response(outcome: types_pb2.Transfer) -> web.Response:
    """201 when committed, 202 when pending (cross-shard, decision not yet
    made); a refused or unsettled item is an error with the transfer's id and
    status in `details` (ABORTED is final for the id, REJECTED leaves it free,
    PENDING/UNSPECIFIED mean resend the same id)."""
    location = f"/v1/transfers/{outcome.id}"
    if outcome.code != 0:
        failure = item_error(outcome.code, outcome.reason, outcome.message)
        failure.metadata["transfer_id"] = outcome.id
        failure.metadata["transfer_status"] = types_pb2.TransferStatus.Name(outcome.status)
        raise failure
    if outcome.status == types_pb2.TRANSFER_STATUS_COMMITTED:
        return codec.json_body(transfer_json(outcome), 201, {"Location": location})
    if outcome.status == types_pb2.TRANSFER_STATUS_PENDING:
        return codec.json_body(transfer_json(outcome), 202, {"Location": location})
    raise broken_reply(f"code 0 with status {types_pb2.TransferStatus.Name(outcome.status)}")


def _same_id(first: str, second: str) -> bool:
    try:
        return uuid.UUID(first) == uuid.UUID(second)
    except ValueError:
        return first == second


def transfer_id_of(request: web.Request, body_id: str) -> str:
    """The transfer id from the body or the Idempotency-Key header.

    Ids are the client's (retrying with the same id is how a client makes a
    transfer happen once), so we never make one up: neither -> 400; both and
    different -> 400 (which one did they mean?). The body's wins when equal.
    """
    keys = request.headers.getall("Idempotency-Key", [])
    if len(keys) > 1:
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "Idempotency-Key given more than once")
    key = keys[0] if keys else ""
    if len(key) > limits.IDEMPOTENCY_KEY_LENGTH_MAX or not key.isascii():
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "Idempotency-Key is not a transfer id")
    if key and body_id and not _same_id(key, body_id):
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "the body's id and the Idempotency-Key differ")
    chosen = body_id or key
    if not chosen:
        raise errors.invalid(
            errors.INVALID_TRANSFER_ID,
            "a transfer id is required: the body's id or an Idempotency-Key header",
        )
    return chosen


def single_query_value(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise errors.invalid(INVALID_QUERY, f"{name} given more than once")
    return values[0] if values else None


def page_size_of(request: web.Request) -> int:
    """1..PAGE_SIZE_MAX; absent -> 0, which the API reads as its default."""
    text = single_query_value(request, "page_size")
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or not (
        limits.PAGE_SIZE_MIN <= int(text) <= limits.PAGE_SIZE_MAX
    ):
        raise errors.invalid(
            errors.INVALID_PAGE_SIZE, f"page_size must be {limits.PAGE_SIZE_MIN}..{limits.PAGE_SIZE_MAX}"
        )
    return int(text)


# Accounts.


async def open_account(request: web.Request) -> web.StreamResponse:
    item = codec.parse_message(await codec.read_json_object(request), bank_pb2.OpenAccountRequest())
    reply: ledger_pb2.AccountsResponse = await call(
        request, upstream(request).bank.OpenAccounts, bank_pb2.OpenAccountsRequest(accounts=[item])
    )
    account = one_account(reply)
    return json_response(account, 201, f"/v1/accounts/{account.id}")


async def get_account(request: web.Request) -> web.StreamResponse:
    account_id = account_id_of(request)
    account: types_pb2.Account = await call(
        request, upstream(request).bank.GetAccount, bank_pb2.GetAccountRequest(account_id=account_id)
    )
    return json_response(account)


async def update_contacts(request: web.Request) -> web.StreamResponse:
    account_id = account_id_of(request)
    body = await codec.read_json_object(request)
    update = codec.parse_message(body, ledger_pb2.ContactUpdate(), CONTACT_INPUT_FIELDS)
    update.account_id = account_id
    reply: ledger_pb2.AccountsResponse = await call(
        request, upstream(request).bank.UpdateContacts, ledger_pb2.UpdateContactsRequest(updates=[update])
    )
    return json_response(one_account(reply))


def change_status(action: ledger_pb2.StatusAction.ValueType) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        account_id = account_id_of(request)
        body = await codec.read_json_object(request)
        item = codec.parse_message(body, ledger_pb2.StatusRequestItem(), STATUS_INPUT_FIELDS)
        item.account_id = account_id
        item.action = action
        reply: ledger_pb2.AccountsResponse = await call(
            request, upstream(request).bank.ChangeAccountStatus, ledger_pb2.ChangeStatusRequest(items=[item])
        )
        return json_response(one_account(reply))

    return handler


async def list_history(request: web.Request) -> web.StreamResponse:
    account_id = account_id_of(request)
    page_size = page_size_of(request)
    page_token = single_query_value(request, "page_token") or ""
    if len(page_token) > limits.PAGE_TOKEN_LENGTH_MAX:
        raise errors.invalid(errors.INVALID_PAGE_TOKEN, "page_token is not one this service issued")
    reply: ledger_pb2.ListHistoryResponse = await call(
        request,
        upstream(request).bank.ListHistory,
        ledger_pb2.ListHistoryRequest(account_id=account_id, page_size=page_size, page_token=page_token),
    )
    return json_response(reply)


# Transfers.


def submit_one(kind: types_pb2.TransferKind.ValueType) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await codec.read_json_object(request)
        transfer = _SINGLE_TRANSFER.read(body) or codec.parse_message(
            body, types_pb2.Transfer(), TRANSFER_INPUT_FIELDS
        )
        transfer.id = transfer_id_of(request, transfer.id)
        transfer.kind = kind
        coalescer = request.app[COALESCER_KEY]
        outcome = await coalescer.submit(
            transfer, authorization_of(request), request[REQUEST_ID_KEY], peer_of(request)
        )
        return transfer_response(outcome)

    return handler


def _check_batch_length(body: dict[str, Any]) -> None:
    """Before parsing: a body of 100k tiny items must not be parsed at all."""
    items = body.get("transfers", [])
    count = len(items) if isinstance(items, list) else 1
    if count == 0:
        raise errors.invalid(errors.BATCH_EMPTY, "the batch has no transfers")
    if count > limits.BATCH_ITEMS_MAX:
        raise errors.BankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors.BATCH_TOO_LARGE,
            f"{count} transfers; at most {limits.BATCH_ITEMS_MAX} per HTTP request",
        )


def _parse_batch(body: dict[str, Any]) -> bank_pb2.SubmitTransfersRequest:
    items = body.get("transfers")
    if body.keys() == {"transfers"} and isinstance(items, list):
        fast = [t for t in map(_BATCH_ITEM.read, items) if t is not None]
        if len(fast) == len(items):
            return bank_pb2.SubmitTransfersRequest(transfers=fast)
    if isinstance(items, list):
        # Like the single routes, a batch item may set only input fields (and
        # its kind): a client must not believe it set `status` or `code`.
        for item in items:
            if isinstance(item, dict):
                codec.parse_message(item, types_pb2.Transfer(), BATCH_ITEM_INPUT_FIELDS)
    return codec.parse_message(body, bank_pb2.SubmitTransfersRequest())


async def submit_batch(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Idempotency-Key") is not None:
        raise errors.invalid(INVALID_HEADER, "a batch carries one id per transfer, not an Idempotency-Key")
    body = await codec.read_json_object(request)
    _check_batch_length(body)
    batch = _parse_batch(body)
    reply: ledger_pb2.TransfersResponse = await call(request, upstream(request).bank.SubmitTransfers, batch)
    return codec.json_body(transfers_json(reply))


async def get_transfer(request: web.Request) -> web.StreamResponse:
    transfer_id = request.match_info["transfer_id"]
    if len(transfer_id) > limits.IDEMPOTENCY_KEY_LENGTH_MAX:
        raise errors.invalid(errors.INVALID_TRANSFER_ID, "not a transfer id")
    transfer: types_pb2.Transfer = await call(
        request, upstream(request).bank.GetTransfer, bank_pb2.GetTransferRequest(transfer_id=transfer_id)
    )
    return json_response(transfer)


# Cluster.


async def get_cluster(request: web.Request) -> web.StreamResponse:
    info: bank_pb2.ClusterInfo = await call(
        request, upstream(request).bank.GetClusterInfo, bank_pb2.GetClusterInfoRequest()
    )
    return json_response(info)
