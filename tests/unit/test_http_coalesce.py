"""Coalescing of concurrent single-transfer requests (gateway.http.coalesce),
against a fake `Bank` servicer over real gRPC (tests.unit.test_http_api).

A lane is held to one call in flight and the fake's first call is slow, so
the requests sent meanwhile are known to wait and leave together: the tests
check who shared a call and that each request still got its own answer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from gateway.http import coalesce
from shardbank import errors
from shardbank.v1 import ledger_pb2, types_pb2
from tests.unit.test_http_api import ACCOUNT, OTHER, Call, FakeBank, Http, Reply, serve

# Seconds the fake holds its first SubmitTransfers call, so that the requests
# sent meanwhile queue behind it.
FIRST_CALL_HOLD_S = 0.3
ADMIN = "Bearer sbk_admin_secret"
TELLER = "Bearer sbk_teller_secret"
DENIED = "Bearer sbk_auditor_secret"

# Amount -> what the fake answers for that item.
COMMITTED, PENDING, NO_FUNDS, CONFLICT = 100, 200, 300, 400


def _outcome(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    outcome = types_pb2.Transfer()
    outcome.CopyFrom(transfer)
    if transfer.amount == PENDING:
        outcome.status = types_pb2.TRANSFER_STATUS_PENDING
        outcome.cross_shard = True
    elif transfer.amount == NO_FUNDS:
        outcome.status = types_pb2.TRANSFER_STATUS_REJECTED
        outcome.code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
        outcome.reason = errors.INSUFFICIENT_FUNDS
        outcome.message = "not enough money"
    elif transfer.amount == CONFLICT:
        outcome.status = types_pb2.TRANSFER_STATUS_REJECTED
        outcome.code = grpc.StatusCode.ALREADY_EXISTS.value[0]
        outcome.reason = errors.TRANSFER_ID_CONFLICT
        outcome.message = "same id, different body"
    else:
        outcome.status = types_pb2.TRANSFER_STATUS_COMMITTED
    return outcome


class SlowFirstBank(FakeBank):
    """Answers per item by amount; refuses DENIED's calls as the interceptor
    would, and every call with `failure` when one is given."""

    def __init__(self, failure: errors.BankError | None = None) -> None:
        super().__init__()
        self.first = True
        self.failure = failure

    async def SubmitTransfers(self, request: Any, context: Any) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        self.calls.append(Call("SubmitTransfers", request, metadata))
        if self.first:
            self.first = False
            await asyncio.sleep(FIRST_CALL_HOLD_S)
        if self.failure is not None:
            await errors.abort(context, self.failure)
        if metadata.get("authorization") == DENIED:
            denied = errors.BankError(
                grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "role auditor may not call it"
            )
            await errors.abort(context, denied)
        return ledger_pb2.TransfersResponse(transfers=[_outcome(t) for t in request.transfers])


@pytest.fixture
def one_call_per_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "CALLS_IN_FLIGHT_MAX", 1)


@pytest.fixture
def http(one_call_per_lane: None) -> Iterator[Http]:
    with serve(SlowFirstBank()) as front:
        yield front


def _body(amount: int, transfer_id: str | None = None) -> dict[str, Any]:
    return {
        "id": transfer_id or str(uuid.uuid4()),
        "debit_account_id": str(ACCOUNT),
        "credit_account_id": str(OTHER),
        "amount": str(amount),
        "currency": "CNY",
    }


def _concurrently(http: Http, requests: list[tuple[str, Any]]) -> list[Reply]:
    """POST /v1/transfers with each (Authorization, body): the first goes
    ahead, the rest are sent while its call is held."""

    async def one(authorization: str, body: Any) -> Reply:
        headers = {"Content-Type": "application/json", "Authorization": authorization}
        data = body if isinstance(body, str) else json.dumps(body)
        return await http._request("POST", "/v1/transfers", data=data, headers=headers)

    async def run() -> list[Reply]:
        first = asyncio.ensure_future(one(*requests[0]))
        await asyncio.sleep(FIRST_CALL_HOLD_S / 3)
        rest = await asyncio.gather(*(one(a, b) for a, b in requests[1:]))
        return [await first, *rest]

    return http.loop.run_until_complete(run())


def _items(call: Any) -> list[str]:
    return [t.id for t in call.request.transfers]


def test_queued_requests_share_a_call_and_each_gets_its_own_outcome(http: Http) -> None:
    bodies = [_body(COMMITTED), _body(COMMITTED), _body(PENDING), _body(NO_FUNDS), _body(CONFLICT)]
    replies = _concurrently(http, [(ADMIN, b) for b in bodies])
    calls = http.fake.calls
    assert [len(c.request.transfers) for c in calls] == [1, 4]  # type: ignore[attr-defined]
    assert replies[0].status == 201 and replies[1].status == 201
    for reply, body in zip(replies[:2], bodies, strict=False):
        assert reply.json["id"] == body["id"]
        assert reply.headers["Location"] == f"/v1/transfers/{body['id']}"
    assert replies[2].status == 202 and replies[2].json["status"] == "TRANSFER_STATUS_PENDING"
    funds = replies[3].error(422, "FAILED_PRECONDITION", errors.INSUFFICIENT_FUNDS)
    assert funds["message"] == "not enough money"
    assert funds["details"]["transfer_id"] == bodies[3]["id"]
    assert funds["details"]["transfer_status"] == "TRANSFER_STATUS_REJECTED"
    conflict = replies[4].error(409, "ALREADY_EXISTS", errors.TRANSFER_ID_CONFLICT)
    assert conflict["details"]["transfer_id"] == bodies[4]["id"]
    assert len({r.headers["X-Request-Id"] for r in replies}) == len(replies)


def test_different_credentials_never_share_a_call_and_a_refusal_is_each_callers(http: Http) -> None:
    requests = [
        (ADMIN, _body(COMMITTED)),
        (TELLER, _body(COMMITTED)),
        (DENIED, _body(COMMITTED)),
        (ADMIN, _body(COMMITTED)),
        (DENIED, _body(COMMITTED)),
        (TELLER, _body(NO_FUNDS)),
    ]
    replies = _concurrently(http, requests)
    owner = {body["id"]: authorization for authorization, body in requests}
    for call in http.fake.calls:
        assert {owner[i] for i in _items(call)} == {call.metadata["authorization"]}
    statuses = [r.status for r in replies]
    assert statuses == [201, 201, 403, 201, 403, 422]
    for reply in (replies[2], replies[4]):
        reply.error(403, "PERMISSION_DENIED", "PERMISSION_DENIED")
    # The two denied requests shared one call, yet each answer names its own request.
    assert replies[2].json["details"]["request_id"] != replies[4].json["details"]["request_id"]


def test_a_bad_request_among_good_ones_is_refused_alone(http: Http) -> None:
    bad = {**_body(COMMITTED), "amount": "12.5"}
    replies = _concurrently(http, [(ADMIN, _body(COMMITTED)), (ADMIN, _body(COMMITTED)), (ADMIN, bad)])
    assert [r.status for r in replies[:2]] == [201, 201]
    replies[2].error(400, "INVALID_ARGUMENT", "INVALID_BODY")
    sent = [i for c in http.fake.calls for i in _items(c)]
    assert bad["id"] not in sent and len(sent) == 2


def test_an_id_already_waiting_makes_its_own_call(http: Http) -> None:
    same = str(uuid.uuid4())
    replies = _concurrently(
        http,
        [(ADMIN, _body(COMMITTED)), (ADMIN, _body(COMMITTED, same)), (ADMIN, _body(COMMITTED, same.upper()))],
    )
    assert [r.status for r in replies] == [201, 201, 201]
    for call in http.fake.calls:
        ids = [uuid.UUID(i) for i in _items(call)]
        assert len(ids) == len(set(ids)), ids


def test_request_ids_reach_the_gateway_alone_and_through_the_coalesced_log_line(http: Http) -> None:
    bodies = [_body(COMMITTED) for _ in range(3)]
    with capture_logs() as logs:
        replies = _concurrently(http, [(ADMIN, b) for b in bodies])
    alone, shared = http.fake.calls
    assert alone.metadata["x-request-id"] == replies[0].headers["X-Request-Id"]
    assert coalesce.COALESCED_REQUESTS_METADATA not in alone.metadata
    assert shared.metadata[coalesce.COALESCED_REQUESTS_METADATA] == "2"
    (line,) = [entry for entry in logs if entry["event"] == "http_transfers_coalesced"]
    assert line["request_id"] == shared.metadata["x-request-id"]
    assert line["member_request_ids"] == [r.headers["X-Request-Id"] for r in replies[1:]]
    assert line["transfer_ids"] == [b["id"] for b in bodies[1:]]


def test_a_call_level_failure_reaches_every_member(one_call_per_lane: None) -> None:
    unavailable = errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "down")
    with serve(SlowFirstBank(unavailable)) as http:
        replies = _concurrently(http, [(ADMIN, _body(COMMITTED)) for _ in range(4)])
        assert [len(c.request.transfers) for c in http.fake.calls] == [1, 3]  # type: ignore[attr-defined]
    for reply in replies:
        reply.error(503, "UNAVAILABLE", errors.SHARD_UNAVAILABLE)
        assert reply.headers["Retry-After"]


def test_past_the_queue_limit_a_request_makes_its_own_call(
    http: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coalesce, "QUEUE_ITEMS_MAX", 1)
    replies = _concurrently(http, [(ADMIN, _body(COMMITTED)) for _ in range(4)])
    assert [r.status for r in replies] == [201] * 4
    # Without the limit the three sent during the held call would share one.
    assert [len(c.request.transfers) for c in http.fake.calls] == [1, 1, 1, 1]  # type: ignore[attr-defined]


def test_deposits_and_withdrawals_never_share_a_call(http: Http) -> None:
    """They are audited per item with the call's request id, which must stay the request's own."""

    async def run() -> list[Reply]:
        async def one(path: str) -> Reply:
            headers = {"Content-Type": "application/json", "Authorization": TELLER}
            return await http._request("POST", path, data=json.dumps(_body(COMMITTED)), headers=headers)

        first = asyncio.ensure_future(one("/v1/deposits"))
        await asyncio.sleep(FIRST_CALL_HOLD_S / 3)
        rest = await asyncio.gather(*(one(p) for p in ["/v1/deposits", "/v1/withdrawals"] * 2))
        return [await first, *rest]

    replies = http.loop.run_until_complete(run())
    assert [r.status for r in replies] == [201] * 5
    calls = http.fake.calls
    assert [len(c.request.transfers) for c in calls] == [1] * 5  # type: ignore[attr-defined]
    assert {c.metadata["x-request-id"] for c in calls} == {r.headers["X-Request-Id"] for r in replies}
