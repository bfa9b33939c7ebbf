"""HTTP/JSON handlers of the admin RPCs (`POST/GET /v1/keys`,
`DELETE /v1/keys/{key_id}`, `GET /v1/audit`); routes in `gateway.http.routes`."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import audit
from gateway.http import codec
from gateway.http.calls import call, upstream
from gateway.http.handlers import json_response, single_query_value
from shardbank import errors
from shardbank.v1 import bank_pb2

AUDIT_FILTERS = ("actor_key_id", "action", "target")


async def create_key(request: web.Request) -> web.StreamResponse:
    body = await codec.read_json_object(request)
    message = codec.parse_message(body, bank_pb2.CreateApiKeyRequest())
    reply: bank_pb2.CreateApiKeyResponse = await call(request, upstream(request).bank.CreateApiKey, message)
    return json_response(reply, 201, f"/v1/keys/{reply.key.key_id}")


async def revoke_key(request: web.Request) -> web.StreamResponse:
    key_id = request.match_info["key_id"]
    reply: bank_pb2.ApiKey = await call(
        request, upstream(request).bank.RevokeApiKey, bank_pb2.RevokeApiKeyRequest(key_id=key_id)
    )
    return json_response(reply)


async def list_keys(request: web.Request) -> web.StreamResponse:
    reply: bank_pb2.ListApiKeysResponse = await call(
        request, upstream(request).bank.ListApiKeys, bank_pb2.ListApiKeysRequest()
    )
    return json_response(reply)


async def list_audit(request: web.Request) -> web.StreamResponse:
    size_text = single_query_value(request, "page_size") or "0"
    if not (size_text.isascii() and size_text.isdigit()) or int(size_text) > audit.PAGE_SIZE_MAX:
        raise errors.invalid(errors.INVALID_PAGE_SIZE, f"page_size must be 1..{audit.PAGE_SIZE_MAX}")
    message = bank_pb2.ListAuditRequest(
        page_size=int(size_text), page_token=single_query_value(request, "page_token") or ""
    )
    for name in AUDIT_FILTERS:
        setattr(message, name, single_query_value(request, name) or "")
    reply: bank_pb2.ListAuditResponse = await call(request, upstream(request).bank.ListAudit, message)
    return json_response(reply)
