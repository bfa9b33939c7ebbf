"""The one error model of the HTTP edge: every gRPC status and every refusal
of aiohttp's own (unknown route, wrong method, body too large, malformed
JSON) comes back as the same JSON shape with the documented HTTP status."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from gateway.http import codec, limits
from shardbank import errors
from tests.unit.test_http_api import (
    ACCOUNT,
    HOLDER,
    TRANSFER,
    TRANSFER_ID,
    FakeBank,
    Http,
    Sleep,
    _rich,
    serve,
)


@pytest.fixture
def http() -> Iterator[Http]:
    with serve() as front:
        yield front


STATUSES = [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, errors.INVALID_AMOUNT),
    (grpc.StatusCode.OUT_OF_RANGE, 400, errors.INVALID_ARGUMENT),
    (grpc.StatusCode.UNAUTHENTICATED, 401, "MISSING_CREDENTIALS"),
    (grpc.StatusCode.PERMISSION_DENIED, 403, "NOT_ACCOUNT_OWNER"),
    (grpc.StatusCode.NOT_FOUND, 404, errors.ACCOUNT_NOT_FOUND),
    (grpc.StatusCode.ALREADY_EXISTS, 409, errors.TRANSFER_ID_CONFLICT),
    (grpc.StatusCode.ABORTED, 409, errors.SLOT_MOVED),
    (grpc.StatusCode.FAILED_PRECONDITION, 422, errors.ACCOUNT_FROZEN),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, errors.OVERLOADED),
    (grpc.StatusCode.UNAVAILABLE, 503, errors.SHARD_UNAVAILABLE),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "DEADLINE"),
    (grpc.StatusCode.UNIMPLEMENTED, 501, "UNIMPLEMENTED"),
    (grpc.StatusCode.INTERNAL, 500, errors.INTERNAL),
    (grpc.StatusCode.DATA_LOSS, 500, "DATA_LOSS"),
    (grpc.StatusCode.UNKNOWN, 500, "UNKNOWN"),
]


@pytest.mark.parametrize(("code", "status", "reason"), STATUSES)
def test_every_grpc_status_maps_to_its_http_status(code: grpc.StatusCode, status: int, reason: str) -> None:
    fake = FakeBank(answers={"GetAccount": errors.BankError(code, reason, "told you so")})
    with serve(fake) as http:
        reply = http.request("GET", f"/v1/accounts/{ACCOUNT}")
        body = reply.error(status, code.name, reason)
        if code == grpc.StatusCode.UNKNOWN:  # an uncaught servicer exception's text is not shown
            assert body["message"] == f"internal error; request id {body['details']['request_id']}"
        else:
            assert body["message"] == "told you so"
        if status in (429, 503):
            assert reply.headers["Retry-After"] == str(limits.RETRY_AFTER_S_DEFAULT)
        else:
            assert "Retry-After" not in reply.headers


def test_error_info_metadata_becomes_details_and_retry_info_retry_after() -> None:
    status = _rich(grpc.StatusCode.RESOURCE_EXHAUSTED, errors.OVERLOADED, "slow down", retry_delay_s=7)
    with serve(FakeBank(answers={"GetTransfer": status})) as http:
        reply = http.request("GET", f"/v1/transfers/{TRANSFER_ID}")
        body = reply.error(429, "RESOURCE_EXHAUSTED", errors.OVERLOADED)
        assert body["details"]["shard"] == "shard-2"
        assert reply.headers["Retry-After"] == "7"


def test_a_status_without_rich_details_keeps_its_code_name_as_reason() -> None:
    with serve(FakeBank(answers={"GetClusterInfo": RuntimeError("secret internals")})) as http:
        reply = http.request("GET", "/v1/cluster")
        reply.error(500, "UNKNOWN", "UNKNOWN")
        assert "secret internals" not in reply.text


def test_unauthenticated_and_permission_denied_pass_through_per_item_too() -> None:
    from shardbank.v1 import ledger_pb2

    denied = ledger_pb2.AccountsResponse(
        results=[ledger_pb2.AccountResult(code=7, reason="NOT_ACCOUNT_OWNER", message="not yours")]
    )
    with serve(FakeBank(answers={"UpdateContacts": denied})) as http:
        reply = http.request(
            "PATCH", f"/v1/accounts/{ACCOUNT}", {"name": "x"}, headers={"Authorization": "x"}
        )
        reply.error(403, "PERMISSION_DENIED", "NOT_ACCOUNT_OWNER")
        assert http.fake.last.metadata["authorization"] == "x"


def test_call_deadline_is_504() -> None:
    with serve(FakeBank(answers={"GetAccount": Sleep(2.0)}), call_deadline_s=0.2) as http:
        reply = http.request("GET", f"/v1/accounts/{ACCOUNT}")
        reply.error(504, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")


def test_grpc_own_status_text_is_not_shown_and_healthz_fails_without_a_bank_status() -> None:
    # What grpc says when it cannot reach a backend: no ErrorInfo, internal addresses in the text.
    down = rpc_status.to_status(
        status_pb2.Status(
            code=grpc.StatusCode.UNAVAILABLE.value[0],
            message="failed to connect to all addresses; last error: 127.0.0.1:5",
        )
    )
    with serve(FakeBank(answers={"GetAccount": down}), health=None) as http:
        reply = http.request("GET", f"/v1/accounts/{ACCOUNT}")
        reply.error(503, "UNAVAILABLE", "UNAVAILABLE")
        assert "Retry-After" in reply.headers
        assert "127.0.0.1" not in reply.text, "grpc's own status text names internal addresses"
        health = http.request("GET", "/healthz")  # the health service knows no `Bank` status: NOT_FOUND
        health.error(503, "UNAVAILABLE", "NOT_SERVING")


def test_healthz(http: Http) -> None:
    reply = http.request("GET", "/healthz")
    assert reply.status == 200
    assert reply.json == {"status": "SERVING"}


def test_healthz_not_serving() -> None:
    with serve(health=health_pb2.HealthCheckResponse.NOT_SERVING) as http:
        reply = http.request("GET", "/healthz")
        assert "NOT_SERVING" in reply.error(503, "UNAVAILABLE", "NOT_SERVING")["message"]


# aiohttp's own refusals.


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/accounts/1:frobnicate", "/v1/accounts/1/2", "/v1/transfers:undo", "/v1"]
)
def test_unknown_route_is_json_404(http: Http, path: str) -> None:
    http.request("GET", path).error(404, "NOT_FOUND", "ROUTE_NOT_FOUND")


def test_wrong_method_is_json_405_with_allow(http: Http) -> None:
    reply = http.request("DELETE", f"/v1/accounts/{ACCOUNT}")
    reply.error(405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED")
    assert set(reply.headers["Allow"].split(", ")) == {"GET", "PATCH"}
    http.request("GET", f"/v1/accounts/{ACCOUNT}:freeze").error(405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED")
    http.request("GET", "/v1/deposits").error(405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED")


def test_body_too_large_is_json_413(http: Http) -> None:
    big = '{"memo": "' + "x" * limits.BODY_BYTES_MAX + '"}'
    reply = http.request("POST", "/v1/transfers", big)
    reply.error(413, "RESOURCE_EXHAUSTED", "BODY_TOO_LARGE")
    assert "Retry-After" not in reply.headers
    assert http.fake.calls == []


def test_body_too_large_without_content_length_is_json_413(http: Http) -> None:
    async def chunks() -> object:
        for _ in range(limits.BODY_BYTES_MAX // 65536 + 2):
            yield b"x" * 65536

    reply = http.request("POST", "/v1/transfers", data=chunks(), headers={"Content-Type": "application/json"})
    reply.error(413, "RESOURCE_EXHAUSTED", "BODY_TOO_LARGE")


@pytest.mark.parametrize(
    "body",
    ['{"currency": ', "not json", '{"currency": "CNY", "currency": "USD"}', '{"amount": NaN}', b"\xff\xfe"],
)
def test_malformed_json_is_400(http: Http, body: str | bytes) -> None:
    http.request("POST", "/v1/accounts", body).error(400, "INVALID_ARGUMENT", "MALFORMED_JSON")
    assert http.fake.calls == []


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        '"CNY"',
        {"currency": "CNY", "colour": "red"},
        {"currency": 5},
        {"overdraft_limit": "lots"},
        {"overdraft_limit": True},
        {"overdraft_limit": 1.5},
        {"type": "ACCOUNT_TYPE_PLATINUM"},
        {"holder": {"name": "x", "nickname": "y"}},
        {"holder": "x"},
        {"currency": "x" * (limits.STRING_LENGTH_MAX + 1)},
        {"holder": {"name": "x" * (limits.STRING_LENGTH_MAX + 1)}},
    ],
)
def test_body_not_fitting_the_message_is_400(http: Http, body: object) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    http.request("POST", "/v1/accounts", raw).error(400, "INVALID_ARGUMENT", "INVALID_BODY")
    assert http.fake.calls == []


def test_wrong_json_types_in_a_transfer_are_400(http: Http) -> None:
    body = {**TRANSFER, "id": TRANSFER_ID, "amount": [1]}
    http.request("POST", "/v1/transfers", body).error(400, "INVALID_ARGUMENT", "INVALID_BODY")


def test_body_must_be_json(http: Http) -> None:
    reply = http.request(
        "POST", "/v1/accounts", data='{"currency": "CNY"}', headers={"Content-Type": "text/plain"}
    )
    reply.error(415, "INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE")


def test_empty_body_is_an_empty_message(http: Http) -> None:
    reply = http.request("POST", f"/v1/accounts/{ACCOUNT}:close")
    assert reply.status == 200, reply.text
    assert http.fake.last.request.items[0].reason == ""  # type: ignore[attr-defined]


def test_authorization_header_is_bounded(http: Http) -> None:
    reply = http.request(
        "GET",
        f"/v1/accounts/{ACCOUNT}",
        headers={"Authorization": "x" * (limits.AUTHORIZATION_LENGTH_MAX + 1)},
    )
    reply.error(400, "INVALID_ARGUMENT", "INVALID_HEADER")


def test_request_id_is_made_up_when_absent_or_odd(http: Http) -> None:
    plain = http.request("GET", f"/v1/accounts/{ACCOUNT}")
    assert len(plain.headers["X-Request-Id"]) == 32
    assert http.fake.last.metadata["x-request-id"] == plain.headers["X-Request-Id"]
    odd = http.request("GET", f"/v1/accounts/{ACCOUNT}", headers={"X-Request-Id": "a b<script>"})
    assert odd.headers["X-Request-Id"] != "a b<script>"


def test_unexpected_exception_is_500_with_a_logged_request_id(
    http: Http, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(codec, "to_json", boom)
    reply = http.request("POST", "/v1/accounts", {"currency": "CNY", "holder": HOLDER})
    body = reply.error(500, "INTERNAL", errors.INTERNAL)
    assert "secret internals" not in reply.text
    request_id = body["details"]["request_id"]
    assert request_id in body["message"]
    logged = capsys.readouterr()
    assert request_id in logged.out + logged.err
    assert "secret internals" in logged.out + logged.err
