"""HTTP/JSON of the `Risk` service: handlers and their route rows (added to
`gateway.http.routes.ROUTES`, so the router, `/openapi.json` and the fuzz
test all see them). Each handler makes one `Risk` gRPC call; authorization
is the gRPC side's, as for `Bank`."""

from __future__ import annotations

from aiohttp import web

from gateway.http import codec
from gateway.http.calls import call, upstream
from gateway.http.handlers import json_response, single_query_value
from shardbank import alerts, errors
from shardbank.v1 import risk_pb2

# Body fields an officer sets (the id comes from the path).
NOTE_FIELDS = ("note",)
REVIEW_FIELDS = ("action", "note")
FILTERS = ("status", "rule", "decision")
_UINT64_MAX = 2**64 - 1


def _number(request: web.Request, name: str, reason: str, most: int) -> int:
    text = single_query_value(request, name)
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > most:
        raise errors.invalid(reason, f"{name} must be a whole number 0..{most}")
    return int(text)


async def list_alerts(request: web.Request) -> web.StreamResponse:
    size = _number(request, "page_size", errors.INVALID_PAGE_SIZE, alerts.PAGE_SIZE_MAX)
    message = risk_pb2.ListAlertsRequest(
        page_size=size,
        page_token=single_query_value(request, "page_token") or "",
        account_id=_number(request, "account_id", errors.INVALID_ACCOUNT_ID, _UINT64_MAX),
        created_since_unix_ms=_number(request, "created_since_unix_ms", alerts.INVALID_FILTER, 10**13 - 1),
        created_until_unix_ms=_number(request, "created_until_unix_ms", alerts.INVALID_FILTER, 10**13 - 1),
    )
    for name in FILTERS:
        setattr(message, name, single_query_value(request, name) or "")
    reply: risk_pb2.ListAlertsResponse = await call(request, upstream(request).risk.ListAlerts, message)
    return json_response(reply)


def _alert_id(request: web.Request) -> str:
    return alerts.check_alert_id(request.match_info["alert_id"])


async def get_alert(request: web.Request) -> web.StreamResponse:
    message = risk_pb2.GetAlertRequest(alert_id=_alert_id(request))
    reply: risk_pb2.Alert = await call(request, upstream(request).risk.GetAlert, message)
    return json_response(reply)


async def acknowledge_alert(request: web.Request) -> web.StreamResponse:
    return await _alert_action(request, acknowledge=True)


async def resolve_alert(request: web.Request) -> web.StreamResponse:
    return await _alert_action(request, acknowledge=False)


async def _alert_action(request: web.Request, acknowledge: bool) -> web.StreamResponse:
    alert_id = _alert_id(request)
    body = await codec.read_json_object(request)
    message = codec.parse_message(body, risk_pb2.AlertActionRequest(), NOTE_FIELDS)
    message.alert_id = alert_id
    risk = upstream(request).risk
    method = risk.AcknowledgeAlert if acknowledge else risk.ResolveAlert
    reply: risk_pb2.Alert = await call(request, method, message)
    return json_response(reply)


async def review_transfer(request: web.Request) -> web.StreamResponse:
    transfer_id = request.match_info["transfer_id"]
    body = await codec.read_json_object(request)
    message = codec.parse_message(body, risk_pb2.ReviewTransferRequest(), REVIEW_FIELDS)
    message.transfer_id = transfer_id
    reply: risk_pb2.ReviewTransferResponse = await call(
        request, upstream(request).risk.ReviewTransfer, message
    )
    return json_response(reply)
