"""Property-based fuzzing of the HTTP/JSON edge from its own OpenAPI document.

Schemathesis loads `/openapi.json` from the running gateway and generates
requests for every operation (schema-valid and schema-violating ones); each
response must not be a 5xx (`not_a_server_error`) and must match the document
(`response_schema_conformance`, plus the status code and content type being
documented ones). Bounded for CI: a fixed `max_examples` per operation,
`derandomize=True` (the same examples every run, so a failure reproduces),
no per-example deadline.

Afterwards the books must still balance: the accounts set up before fuzzing
hold exactly what was deposited, every shard is up with no transfer left in
doubt, and each shard's cash account mirrors its customers' deposits.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from clients.local_cluster import LocalCluster
from gateway.http import openapi
from tests.integration.http_support import Api, start_cluster

pytestmark = pytest.mark.integration

# Examples per operation: ~18 operations x this many requests stays well
# inside the CI budget (~90 s) on 2 cores.
MAX_EXAMPLES = 25
# Each shard's set-up deposits (minor units, CNY) and how many accounts.
DEPOSITS = (123_456, 7_890, 100_000)
# Seconds to wait for cross-shard transfers the fuzzer started to settle.
SETTLE_TIMEOUT_S = 15.0


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """`not_a_server_error`: no 5xx for any generated input."""
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory, "fuzz")


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Api:
    return Api.of(cluster)


@pytest.fixture(scope="module")
def books(cluster: LocalCluster, api: Api) -> dict[str, dict[str, int]]:
    """shard id -> {account id: deposited}: funded before any fuzzing."""
    funded: dict[str, dict[str, int]] = {}
    for shard in ("shard-1", "shard-2"):
        funded[shard] = {}
        for amount in DEPOSITS:
            account = api.open_on_shard(cluster, shard)
            api.deposit(account, amount)
            funded[shard][account] = amount
    return funded


@pytest.fixture(scope="module")
def api_schema(api: Api, books: dict[str, dict[str, int]]) -> Any:
    # `books` first: the fuzzer must not run before the set-up it is checked against.
    return schemathesis.openapi.from_url(f"{api.base}/openapi.json", headers=api.auth_headers, timeout=10)


# The operations, known at collection time from the same generator the gateway
# serves (the live document is what is fuzzed). Not `schemathesis.pytest.
# from_fixture(...).parametrize()`: schemathesis 4.32's lazy loader sets
# `request.node._nodeid`, which pytest 9 no longer has (AttributeError).
OPERATIONS = sorted(
    op["operationId"] for methods in openapi.document()["paths"].values() for op in methods.values()
)
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# Operations whose replies are exempt from schema conformance (none now; a
# rejected batch item no longer echoes input that breaks the reply schema).
SCHEMA_GAPS: set[tuple[str, GenerationMode]] = set()
# (operation id, HTTP status) -> responses seen, printed by the books check.
SEEN: Counter[tuple[str, int]] = Counter()


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_every_operation_survives_fuzzing(
    api_schema: Any, api: Api, operation_id: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_id(operation_id)
    checks = CHECKS
    if (operation_id, mode) in SCHEMA_GAPS:
        checks = [check for check in CHECKS if check is not response_schema_conformance]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(
            base_url=api.base, headers=api.auth_headers, checks=checks, timeout=20
        )
        SEEN[operation_id, response.status_code] += 1

    fuzz()
    assert sum(n for (op, _), n in SEEN.items() if op == operation_id), "no request was made"


def _cash_account(shard: str) -> str:
    """System cash account of `shard` in CNY: shard index * 1000 + 156."""
    return str(int(shard.rsplit("-", 1)[1]) * 1000 + 156)


def test_books_still_balance_after_fuzzing(api: Api, books: dict[str, dict[str, int]]) -> None:
    by_operation: dict[str, dict[int, int]] = {}
    for (operation_id, status), count in sorted(SEEN.items()):
        by_operation.setdefault(operation_id, {})[status] = count
    print(f"\nfuzzed {sum(SEEN.values())} requests:", json.dumps(by_operation))
    assert api.get("/healthz").status == 200
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        shards = api.cluster_info()["shards"]
        assert len(shards) == 2 and all(s["up"] for s in shards), shards
        in_doubt = {s["shard_id"]: s["info"]["in_doubt_legs"] for s in shards}
        if not any(in_doubt.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(in_doubt.values()), f"cross-shard transfers left in doubt: {in_doubt}"

    for shard, funded in books.items():
        for account, amount in funded.items():
            state = api.state(account)
            assert state == (str(amount), "0", "0", str(amount), "ACCOUNT_STATUS_ACTIVE"), (account, state)
        total = sum(api.balance(account) for account in funded)
        assert total == sum(DEPOSITS)
        # Cash goes negative by what its customers hold; fuzzed deposits into
        # accounts the fuzzer opened itself could only make it more negative.
        cash = api.balance(_cash_account(shard))
        assert cash <= -total, (shard, cash, total)


def test_rejected_batch_item_reply_conforms(api: Api, books: dict[str, dict[str, int]]) -> None:
    debit, credit = list(books["shard-1"])[:2]
    item = {
        "id": "00000000-0000-4000-8000-000000000001",
        "kind": "TRANSFER_KIND_TRANSFER",
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": "1",
        "currency": "CNY",
        "reference": "r" * 65,
    }
    reply = api.post("/v1/transfers:batch", {"transfers": [item]})
    assert reply.status == 200, reply.describe()
    (outcome,) = reply.body["transfers"]
    assert (outcome["status"], outcome["reason"]) == ("TRANSFER_STATUS_REJECTED", "INVALID_ARGUMENT")
    limit = openapi.document()["components"]["schemas"]["Transfer"]["properties"]["reference"]["maxLength"]
    assert len(outcome["reference"]) <= limit, "the reply carries a reference its own schema refuses"
