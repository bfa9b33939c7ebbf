"""Routes about the service rather than the bank: health, the OpenAPI
document and the docs page (both built once at start-up by `app`)."""

from __future__ import annotations

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2

from gateway.http import codec, limits
from gateway.http.calls import call_metadata, upstream
from gateway.http.errors import NOT_SERVING, rpc_failure
from shardbank import errors
from shardbank.v1 import bank_pb2

# The health service name the gateway sets (gateway.server sets "" and this).
BANK_SERVICE = bank_pb2.DESCRIPTOR.services_by_name["Bank"].full_name

OPENAPI_KEY = web.AppKey("openapi", dict)
DOCS_HTML_KEY = web.AppKey("docs_html", str)


async def healthz(request: web.Request) -> web.StreamResponse:
    """200 only while the gRPC gateway says SERVING for `Bank`: a load
    balancer must not send HTTP traffic to an edge whose backend cannot serve."""
    try:
        reply = await upstream(request).health.Check(
            health_pb2.HealthCheckRequest(service=BANK_SERVICE),
            timeout=limits.HEALTH_DEADLINE_S,
            metadata=call_metadata(request),
        )
    except grpc.RpcError as exc:
        failure = rpc_failure(exc)
        raise errors.BankError(grpc.StatusCode.UNAVAILABLE, NOT_SERVING, failure.message) from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise errors.BankError(grpc.StatusCode.UNAVAILABLE, NOT_SERVING, f"the gRPC gateway is {name}")
    return web.json_response(codec.to_json(reply))


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[OPENAPI_KEY])


async def docs_page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[DOCS_HTML_KEY], content_type="text/html", charset="utf-8")
