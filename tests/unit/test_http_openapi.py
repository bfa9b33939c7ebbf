"""The OpenAPI document is generated from the proto descriptors and the one
route table: it is a valid OpenAPI 3.1 document, names every route the router
serves, and its schemas describe what json_format actually reads and writes."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format, message_factory

from gateway.http import LocalChannel, codec, create_app, limits, openapi
from gateway.http.routes import ROUTES, aiohttp_path
from shardbank.v1 import bank_pb2, ledger_pb2, types_pb2


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.document()


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(document["components"]["schemas"][name])


def _validator(document: dict[str, Any], name: str) -> Any:
    validators = pytest.importorskip("openapi_schema_validator")
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return validators.OAS31Validator(root)


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(json.loads(json.dumps(document)))
    assert document["openapi"] == "3.1.0"


def test_every_route_is_documented_and_nothing_else(document: dict[str, Any]) -> None:
    documented = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    assert documented == {(route.path, route.method) for route in ROUTES}
    expected = {
        ("/v1/accounts", "POST"),
        ("/v1/accounts/{account_id}", "GET"),
        ("/v1/accounts/{account_id}", "PATCH"),
        ("/v1/accounts/{account_id}:freeze", "POST"),
        ("/v1/accounts/{account_id}:unfreeze", "POST"),
        ("/v1/accounts/{account_id}:close", "POST"),
        ("/v1/accounts/{account_id}/transfers", "GET"),
        ("/v1/deposits", "POST"),
        ("/v1/withdrawals", "POST"),
        ("/v1/transfers", "POST"),
        ("/v1/payments", "POST"),
        ("/v1/transfers:batch", "POST"),
        ("/v1/transfers/{transfer_id}", "GET"),
        ("/v1/cluster", "GET"),
        ("/v1/keys", "POST"),
        ("/v1/keys", "GET"),
        ("/v1/keys/{key_id}", "DELETE"),
        ("/v1/audit", "GET"),
        ("/v1/risk/alerts", "GET"),
        ("/v1/risk/alerts/{alert_id}", "GET"),
        ("/v1/risk/alerts/{alert_id}:acknowledge", "POST"),
        ("/v1/risk/alerts/{alert_id}:resolve", "POST"),
        ("/v1/risk/transfers/{transfer_id}:review", "POST"),
        ("/openapi.json", "GET"),
        ("/docs", "GET"),
        ("/healthz", "GET"),
    }
    assert documented == expected
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_router_serves_exactly_the_table() -> None:
    app = create_app(LocalChannel())
    served = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    # canonical drops the segment regexes aiohttp_path adds, leaving the template
    assert served == {(route.path, route.method) for route in ROUTES}
    assert aiohttp_path("/v1/accounts/{account_id}:freeze") == "/v1/accounts/{account_id:[^/:]+}:freeze"


def test_schemas_for_every_message_used(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in (
        "Account",
        "Holder",
        "StatusChange",
        "Transfer",
        "TransferInput",
        "OpenAccountRequest",
        "ContactUpdateBody",
        "StatusChangeBody",
        "SubmitTransfersRequest",
        "TransfersResponse",
        "ListHistoryResponse",
        "HistoryEntry",
        "ClusterInfo",
        "ShardStatus",
        "NodeInfo",
        "AccountType",
        "AccountStatus",
        "TransferKind",
        "TransferStatus",
        "Error",
    ):
        assert name in schemas, name
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs <= set(schemas)


def test_schemas_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    account = _schema(document, "Account")["properties"]
    assert account["id"] == {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
    assert account["balance"] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
    assert account["status"] == {"$ref": "#/components/schemas/AccountStatus"}
    assert account["status_history"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/StatusChange"},
    }
    assert account["holder"] == {"$ref": "#/components/schemas/Holder"}
    assert _schema(document, "AccountStatus")["enum"] == list(types_pb2.AccountStatus.keys())
    transfer = _schema(document, "Transfer")["properties"]
    assert transfer["code"]["type"] == "integer"
    assert transfer["cross_shard"] == {"type": "boolean"}
    assert transfer["memo"]["maxLength"] == 140
    assert _schema(document, "NodeInfo")["properties"]["journal_head_hash"]["contentEncoding"] == "base64"
    assert set(_schema(document, "Transfer")["properties"]) == {
        f.name for f in types_pb2.Transfer.DESCRIPTOR.fields
    }


def test_bodies_are_narrowed_to_settable_fields(document: dict[str, Any]) -> None:
    assert set(_schema(document, "TransferInput")["properties"]) == {
        "id",
        "debit_account_id",
        "credit_account_id",
        "amount",
        "currency",
        "memo",
        "reference",
    }
    assert set(_schema(document, "ContactUpdateBody")["properties"]) == {"phone", "name"}
    assert set(_schema(document, "StatusChangeBody")["properties"]) == {"reason"}
    assert _schema(document, "StatusChangeBody")["properties"]["reason"]["maxLength"] == 200


def test_json_format_output_validates_against_the_schemas(document: dict[str, Any]) -> None:
    account = types_pb2.Account(
        id=6222020000000015,
        balance=-5,
        status=types_pb2.ACCOUNT_STATUS_FROZEN,
        holder=types_pb2.Holder(name="张三"),
        status_history=[types_pb2.StatusChange(at_unix_ms=2**40)],
    )
    history = ledger_pb2.ListHistoryResponse(
        entries=[types_pb2.HistoryEntry(transfer=types_pb2.Transfer(amount=1), journal_seq=2**63)]
    )
    cluster = bank_pb2.ClusterInfo(
        shards=[bank_pb2.ShardStatus(info=ledger_pb2.NodeInfo(journal_head_hash=b"\x00"))]
    )
    for name, msg in (("Account", account), ("ListHistoryResponse", history), ("ClusterInfo", cluster)):
        _validator(document, name).validate(codec.to_json(msg))
    with pytest.raises(Exception, match="unexpected"):
        _validator(document, "Account").validate({"colour": "red"})


def test_examples_parse_and_validate(document: dict[str, Any]) -> None:
    for route in ROUTES:
        if route.body is None:
            continue
        target = message_factory.GetMessageClass(route.body.message)()
        codec.parse_message(dict(route.body.example), target, route.body.allowed)
        operation = document["paths"][route.path][route.method.lower()]
        media = operation["requestBody"]["content"]["application/json"]
        name = media["schema"]["$ref"].rsplit("/", 1)[-1]
        _validator(document, name).validate(media["example"])
        json_format.ParseDict(media["example"], message_factory.GetMessageClass(route.body.message)())


def test_limits_are_in_the_document(document: dict[str, Any]) -> None:
    names = {limit["name"] for limit in document["x-shardbank-limits"]}
    assert {"BODY_BYTES_MAX", "BATCH_ITEMS_MAX", "PAGE_SIZE_MAX", "CALL_DEADLINE_S"} <= names
    statuses = {row["code"]: row["http_status"] for row in document["x-shardbank-status-codes"]}
    assert statuses["FAILED_PRECONDITION"] == 422
    assert statuses["ABORTED"] == 409


async def _fetch(paths: list[str]) -> list[tuple[int, str, str]]:
    app: web.Application = create_app(LocalChannel())
    async with TestClient(TestServer(app)) as client:
        results = []
        for path in paths:
            async with client.get(path) as response:
                results.append((response.status, response.content_type, await response.text()))
        return results


def test_served_document_and_docs_page(document: dict[str, Any]) -> None:
    (spec, docs) = asyncio.run(_fetch(["/openapi.json", "/docs"]))
    assert spec[:2] == (200, "application/json")
    assert json.loads(spec[2]) == json.loads(json.dumps(document))
    status, content_type, html = docs
    assert (status, content_type) == (200, "text/html")
    for route in ROUTES:
        assert route.path in html
    for limit in limits.LIMITS:
        assert limit.name in html
    assert "TransferInput" in html and "6222020000000015" in html
    assert not re.search(r"<script|https?://", html), "the docs page must not load anything from elsewhere"
