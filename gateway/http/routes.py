"""The route table: the one list that drives both the aiohttp router
(`register`) and the OpenAPI document (`openapi.document`), so the two cannot
drift. Each row names the handler, the proto message of the body (narrowed to
the fields a client may set there) and of each success reply; the schemas
themselves come from the proto descriptors, never from text here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2

from gateway.auth import audit as auth_audit
from gateway.auth import http as auth_http
from gateway.http import handlers, limits, meta
from gateway.http.errors import INVALID_QUERY
from gateway.http.handlers import Handler
from gateway.review import http as review_http
from shardbank import alerts, errors
from shardbank.v1 import bank_pb2, ledger_pb2, risk_pb2, types_pb2

EXAMPLE_ACCOUNT_ID = "6222020000000015"
EXAMPLE_OTHER_ACCOUNT_ID = "6222020000000023"
EXAMPLE_TRANSFER_ID = "0b6f1c1e-6a57-4c8e-9d0a-3f6c2b1d9e42"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" | "query" | "header"
    schema: Mapping[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Body:
    message: descriptor.Descriptor
    # Component name of the body schema; the message's own name when `allowed` is None.
    schema_name: str
    # Top-level fields a client may set here (None: all); handlers enforce the same tuple.
    allowed: tuple[str, ...] | None
    example: Mapping[str, Any]


@dataclass(frozen=True)
class Reply:
    status: int
    description: str
    message: descriptor.Descriptor | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI path template
    operation_id: str
    summary: str
    description: str
    handler: Handler
    replies: tuple[Reply, ...]
    tag: str
    body: Body | None = None
    params: tuple[Param, ...] = ()
    # Error statuses particular to this route (every route may also give the common ones).
    errors: tuple[int, ...] = ()

    @property
    def query_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params if p.where == "query")


ACCOUNT_ID = Param(
    "account_id",
    "path",
    {"type": "string", "pattern": "^[0-9]{1,20}$"},
    "account id, decimal; not a number -> 400 INVALID_ACCOUNT_ID",
    required=True,
)
TRANSFER_ID = Param(
    "transfer_id",
    "path",
    {"type": "string", "maxLength": limits.IDEMPOTENCY_KEY_LENGTH_MAX},
    "the transfer's client-chosen UUID",
    required=True,
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "maxLength": limits.IDEMPOTENCY_KEY_LENGTH_MAX},
    "the transfer id (a UUID) when the body has no `id`; both given and different -> 400 INVALID_TRANSFER_ID",
)
PAGE_SIZE = Param(
    "page_size",
    "query",
    {"type": "integer", "minimum": limits.PAGE_SIZE_MIN, "maximum": limits.PAGE_SIZE_MAX},
    "entries per page; absent -> the server default",
)
PAGE_TOKEN = Param(
    "page_token",
    "query",
    {"type": "string", "maxLength": limits.PAGE_TOKEN_LENGTH_MAX},
    "next_page_token of the previous page",
)

_ACCOUNT = types_pb2.Account.DESCRIPTOR
_TRANSFER = types_pb2.Transfer.DESCRIPTOR
_TRANSFER_EXAMPLE = {
    "id": EXAMPLE_TRANSFER_ID,
    "debit_account_id": EXAMPLE_ACCOUNT_ID,
    "credit_account_id": EXAMPLE_OTHER_ACCOUNT_ID,
    "amount": "10050",
    "currency": "CNY",
    "memo": "rent",
}
_STATUS_BODY = Body(
    ledger_pb2.StatusRequestItem.DESCRIPTOR,
    "StatusChangeBody",
    handlers.STATUS_INPUT_FIELDS,
    {"reason": "KYC"},
)
_ACCOUNT_REPLY = (Reply(200, "the account", _ACCOUNT),)
_TRANSFER_REPLIES = (
    Reply(201, "committed", _TRANSFER),
    Reply(202, "pending: cross-shard, decision not made yet; GET the transfer later", _TRANSFER),
)


def _transfer_route(
    path: str, kind: types_pb2.TransferKind.ValueType, noun: str, example: dict[str, Any]
) -> Route:
    return Route(
        "POST",
        path,
        f"create{noun.title()}",
        f"Submit a {noun}",
        f"A {noun} (kind {types_pb2.TransferKind.Name(kind)}, implied by the route). The id is the "
        "client's: resending the same id with the same body returns the first outcome and moves "
        "nothing again. A refused transfer is an error whose details carry transfer_id and "
        "transfer_status (ABORTED: final for the id; REJECTED: the id stays free).",
        handlers.submit_one(kind),
        _TRANSFER_REPLIES,
        "transfers",
        body=Body(_TRANSFER, "TransferInput", handlers.TRANSFER_INPUT_FIELDS, example),
        params=(IDEMPOTENCY_KEY,),
        errors=(404, 409, 413, 415, 422),
    )


def _status_route(verb: str, action: ledger_pb2.StatusAction.ValueType) -> Route:
    return Route(
        "POST",
        f"/v1/accounts/{{account_id}}:{verb}",
        f"{verb}Account",
        f"{verb.title()} an account",
        f"Change the account's status ({ledger_pb2.StatusAction.Name(action)}); the reason is recorded "
        "in its status history.",
        handlers.change_status(action),
        _ACCOUNT_REPLY,
        "accounts",
        body=_STATUS_BODY,
        params=(ACCOUNT_ID,),
        errors=(404, 413, 415, 422),
    )


KEY_ID = Param(
    "key_id", "path", {"type": "string", "pattern": "^[0-9a-f]{12}$"}, "the API key's id", required=True
)
AUDIT_PAGE_SIZE = Param(
    "page_size",
    "query",
    {"type": "integer", "minimum": 1, "maximum": auth_audit.PAGE_SIZE_MAX},
    "records per page; absent -> the server default",
)
AUDIT_FILTER_PARAMS = tuple(
    Param(name, "query", {"type": "string", "maxLength": 64}, f"only records with this {name}")
    for name in auth_http.AUDIT_FILTERS
)
_API_KEY = bank_pb2.ApiKey.DESCRIPTOR

AUTH_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/keys",
        "createApiKey",
        "Create an API key",
        "Role admin. The reply's token (sbk_<key id>_<secret>) is shown once; only a hash is kept. "
        "customer_id is required for role customer and refused for the others.",
        auth_http.create_key,
        (Reply(201, "created", bank_pb2.CreateApiKeyResponse.DESCRIPTOR),),
        "keys",
        body=Body(
            bank_pb2.CreateApiKeyRequest.DESCRIPTOR,
            "CreateApiKeyRequest",
            None,
            {"role": "customer", "customer_id": "cust-42"},
        ),
        errors=(413, 415),
    ),
    Route(
        "DELETE",
        "/v1/keys/{key_id}",
        "revokeApiKey",
        "Revoke an API key",
        "Role admin. Takes effect at once on this gateway and within about a second on the others.",
        auth_http.revoke_key,
        (Reply(200, "revoked", _API_KEY),),
        "keys",
        params=(KEY_ID,),
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/keys",
        "listApiKeys",
        "List API keys",
        "Roles admin, auditor. Ids, roles and state; never secrets or hashes.",
        auth_http.list_keys,
        (Reply(200, "the keys", bank_pb2.ListApiKeysResponse.DESCRIPTOR),),
        "keys",
    ),
    Route(
        "GET",
        "/v1/audit",
        "listAudit",
        "The audit log of privileged actions",
        "Roles admin, auditor. Newest first; hash-chained (each record's prev_hash is the previous "
        "record's hash).",
        auth_http.list_audit,
        (Reply(200, "one page", bank_pb2.ListAuditResponse.DESCRIPTOR),),
        "audit",
        params=(AUDIT_PAGE_SIZE, PAGE_TOKEN, *AUDIT_FILTER_PARAMS),
    ),
)

ALERT_ID = Param(
    "alert_id",
    "path",
    {"type": "string", "pattern": "^[0-9]{13}-[0-9a-f]{12}$"},
    "the alert's id (<created_at_unix_ms, 13 digits>-<12 hex>); else 400 INVALID_ALERT_ID",
    required=True,
)
_ALERT = risk_pb2.Alert.DESCRIPTOR
_NOTE_BODY = Body(
    risk_pb2.AlertActionRequest.DESCRIPTOR,
    "AlertNoteBody",
    review_http.NOTE_FIELDS,
    {"note": "called the customer"},
)
ALERT_FILTER_PARAMS = (
    Param("status", "query", {"type": "string", "enum": list(alerts.STATUSES)}, "only alerts in this status"),
    Param(
        "rule",
        "query",
        {"type": "string", "maxLength": alerts.RULE_LENGTH_MAX},
        "only alerts this rule raised",
    ),
    Param("decision", "query", {"type": "string", "enum": list(alerts.DECISIONS)}, "only this decision"),
    Param(
        "account_id",
        "query",
        {"type": "string", "pattern": "^[0-9]{1,20}$"},
        "only alerts about this account (either side, or the one the rule looked at)",
    ),
    Param(
        "created_since_unix_ms",
        "query",
        {"type": "string", "pattern": "^[0-9]{1,13}$"},
        "created at or after (unix ms)",
    ),
    Param(
        "created_until_unix_ms",
        "query",
        {"type": "string", "pattern": "^[0-9]{1,13}$"},
        "created at or before (unix ms)",
    ),
    Param(
        "page_size",
        "query",
        {"type": "integer", "minimum": 1, "maximum": alerts.PAGE_SIZE_MAX},
        "alerts per page; absent -> the server default",
    ),
    Param("page_token", "query", {"type": "string", "maxLength": 64}, "next_page_token of the previous page"),
)


def _alert_action_route(verb: str, handler: Handler, what: str) -> Route:
    return Route(
        "POST",
        f"/v1/risk/alerts/{{alert_id}}:{verb}",
        f"{verb}Alert",
        f"{verb.title()} an alert",
        f"Roles risk_officer, admin. {what} Audited with the actor.",
        handler,
        (Reply(200, "the alert", _ALERT),),
        "risk",
        body=_NOTE_BODY,
        params=(ALERT_ID,),
        errors=(404, 409, 413, 415, 422),
    )


RISK_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/risk/alerts",
        "listAlerts",
        "List risk alerts, newest first",
        "Roles risk_officer, auditor, admin. Filters combine; an empty next_page_token means the last "
        "page. review_state EXPIRED: the hold's deadline passed and the transfer was rejected automatically.",
        review_http.list_alerts,
        (Reply(200, "one page", risk_pb2.ListAlertsResponse.DESCRIPTOR),),
        "risk",
        params=ALERT_FILTER_PARAMS,
    ),
    Route(
        "GET",
        "/v1/risk/alerts/{alert_id}",
        "getAlert",
        "Show an alert",
        "Roles risk_officer, auditor, admin.",
        review_http.get_alert,
        (Reply(200, "the alert", _ALERT),),
        "risk",
        params=(ALERT_ID,),
        errors=(404,),
    ),
    _alert_action_route(
        "acknowledge",
        review_http.acknowledge_alert,
        "OPEN -> ACKNOWLEDGED (again: unchanged); a RESOLVED one is 422 ALERT_RESOLVED.",
    ),
    _alert_action_route(
        "resolve",
        review_http.resolve_alert,
        "A note is required. Compare-and-swap: two officers resolving at once cannot overwrite each "
        "other (the second gets 422 ALERT_RESOLVED).",
    ),
    Route(
        "POST",
        "/v1/risk/transfers/{transfer_id}:review",
        "reviewTransfer",
        "Approve or reject a transfer held for review",
        "Roles risk_officer, admin. APPROVE: the transfer completes; REJECT: it is aborted "
        "(RISK_REJECTED) and the hold released. The same decision again answers the same transfer; "
        "the other one on a decided transfer, or any past the deadline, is 422 with the reason "
        "(REVIEW_APPROVED, RISK_REJECTED, REVIEW_EXPIRED, NOT_UNDER_REVIEW). Audited with the actor.",
        review_http.review_transfer,
        (Reply(200, "the transfer after the decision", risk_pb2.ReviewTransferResponse.DESCRIPTOR),),
        "risk",
        body=Body(
            risk_pb2.ReviewTransferRequest.DESCRIPTOR,
            "ReviewBody",
            review_http.REVIEW_FIELDS,
            {"action": "REVIEW_ACTION_APPROVE", "note": "customer confirmed by phone"},
        ),
        params=(TRANSFER_ID,),
        errors=(404, 413, 415, 422),
    ),
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/accounts",
        "openAccount",
        "Open an account",
        "The gateway chooses the id (16 digits, Luhn); the reply's Location names the account.",
        handlers.open_account,
        (Reply(201, "opened", _ACCOUNT),),
        "accounts",
        body=Body(
            bank_pb2.OpenAccountRequest.DESCRIPTOR,
            "OpenAccountRequest",
            None,
            {
                "currency": "CNY",
                "type": "ACCOUNT_TYPE_PERSONAL",
                "holder": {
                    "name": "张三",
                    "id_type": "ID_DOCUMENT_TYPE_CN_RESIDENT_ID",
                    "id_number": "11010519491231002X",
                    "phone": "+8613812345678",
                },
            },
        ),
        errors=(409, 413, 415, 422),
    ),
    Route(
        "GET",
        "/v1/accounts/{account_id}",
        "getAccount",
        "Show an account",
        "Balance, held, available (balance - held + overdraft_limit), status and its history.",
        handlers.get_account,
        _ACCOUNT_REPLY,
        "accounts",
        params=(ACCOUNT_ID,),
        errors=(404,),
    ),
    Route(
        "PATCH",
        "/v1/accounts/{account_id}",
        "updateContacts",
        "Update the holder's contact details",
        "Empty fields are left unchanged.",
        handlers.update_contacts,
        _ACCOUNT_REPLY,
        "accounts",
        body=Body(
            ledger_pb2.ContactUpdate.DESCRIPTOR,
            "ContactUpdateBody",
            handlers.CONTACT_INPUT_FIELDS,
            {"phone": "+8613900000000"},
        ),
        params=(ACCOUNT_ID,),
        errors=(404, 413, 415, 422),
    ),
    _status_route("freeze", ledger_pb2.STATUS_ACTION_FREEZE),
    _status_route("unfreeze", ledger_pb2.STATUS_ACTION_UNFREEZE),
    _status_route("close", ledger_pb2.STATUS_ACTION_CLOSE),
    Route(
        "GET",
        "/v1/accounts/{account_id}/transfers",
        "listHistory",
        "An account's history, newest first",
        "Pages with page_size/page_token; an empty next_page_token means the last page.",
        handlers.list_history,
        (Reply(200, "one page", ledger_pb2.ListHistoryResponse.DESCRIPTOR),),
        "accounts",
        params=(ACCOUNT_ID, PAGE_SIZE, PAGE_TOKEN),
        errors=(404,),
    ),
    _transfer_route(
        "/v1/deposits",
        types_pb2.TRANSFER_KIND_DEPOSIT,
        "deposit",
        {
            "id": EXAMPLE_TRANSFER_ID,
            "credit_account_id": EXAMPLE_ACCOUNT_ID,
            "amount": "10050",
            "currency": "CNY",
        },
    ),
    _transfer_route(
        "/v1/withdrawals",
        types_pb2.TRANSFER_KIND_WITHDRAWAL,
        "withdrawal",
        {
            "id": EXAMPLE_TRANSFER_ID,
            "debit_account_id": EXAMPLE_ACCOUNT_ID,
            "amount": "5000",
            "currency": "CNY",
        },
    ),
    _transfer_route("/v1/transfers", types_pb2.TRANSFER_KIND_TRANSFER, "transfer", _TRANSFER_EXAMPLE),
    _transfer_route("/v1/payments", types_pb2.TRANSFER_KIND_PAYMENT, "payment", _TRANSFER_EXAMPLE),
    Route(
        "POST",
        "/v1/transfers:batch",
        "submitTransfers",
        "Submit a batch of transfers",
        f"Up to {limits.BATCH_ITEMS_MAX} transfers, each with its own id and kind. 200 with one outcome "
        "per item (status, code, reason): a refused item does not fail its neighbours.",
        handlers.submit_batch,
        (Reply(200, "per-item outcomes", ledger_pb2.TransfersResponse.DESCRIPTOR),),
        "transfers",
        body=Body(
            bank_pb2.SubmitTransfersRequest.DESCRIPTOR,
            "SubmitTransfersRequest",
            None,
            {"transfers": [dict(_TRANSFER_EXAMPLE, kind="TRANSFER_KIND_TRANSFER")]},
        ),
        errors=(413, 415),
    ),
    Route(
        "GET",
        "/v1/transfers/{transfer_id}",
        "getTransfer",
        "Show a transfer",
        "Its current status: PENDING until a cross-shard decision, then COMMITTED or ABORTED.",
        handlers.get_transfer,
        (Reply(200, "the transfer", _TRANSFER),),
        "transfers",
        params=(TRANSFER_ID,),
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/cluster",
        "getClusterInfo",
        "Cluster status",
        "Slot map version, shards and the coordinator leader.",
        handlers.get_cluster,
        (Reply(200, "the cluster", bank_pb2.ClusterInfo.DESCRIPTOR),),
        "cluster",
    ),
    *AUTH_ROUTES,
    *RISK_ROUTES,
    Route(
        "GET",
        "/healthz",
        "health",
        "Health",
        "200 while the gRPC gateway reports SERVING for shardbank.v1.Bank, else 503 NOT_SERVING.",
        meta.healthz,
        (Reply(200, "serving", health_pb2.HealthCheckResponse.DESCRIPTOR),),
        "meta",
    ),
    Route(
        "GET",
        "/openapi.json",
        "openapi",
        "This OpenAPI document",
        "Generated at start-up from the proto descriptors and the route table.",
        meta.openapi_json,
        (Reply(200, "OpenAPI 3.1 document"),),
        "meta",
    ),
    Route(
        "GET",
        "/docs",
        "docs",
        "Browsable documentation",
        "A static HTML rendering of this document.",
        meta.docs_page,
        (Reply(200, "HTML", content_type="text/html"),),
        "meta",
    ),
)

_PARAM_RE = re.compile(r"\{([a-z_]+)\}")


def aiohttp_path(template: str) -> str:
    """`{name}` -> `{name:[^/:]+}`: a segment never swallows `:verb`, so
    /v1/accounts/1:freeze cannot match /v1/accounts/{account_id}."""
    return _PARAM_RE.sub(r"{\1:[^/:]+}", template)


def _only_declared_query(route: Route) -> Handler:
    """Unknown query parameters are refused like unknown body fields: a typo
    (?pagesize=) must not silently mean the default."""
    allowed = route.query_names

    @functools.wraps(route.handler)
    async def handler(request: web.Request) -> web.StreamResponse:
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            raise errors.invalid(INVALID_QUERY, f"unknown query parameter(s): {', '.join(unknown)}")
        return await route.handler(request)

    return handler


def register(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    for route in routes:
        app.router.add_route(route.method, aiohttp_path(route.path), _only_declared_query(route))
