"""Shared steps of the HTTP/JSON edge tests: a module's cluster, a small
blocking client on `urllib.request` (bounded timeouts, raw bodies allowed)
and the ledger probes the hostile and fuzz tests check after every case.

The client sends `Authorization: Bearer <cluster.admin_token>` when the
cluster has one (API-key auth), and nothing otherwise, so the tests run the
same before and after authentication lands.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from clients.local_cluster import LocalCluster
from tests.factories import mobile, resident_id
from tests.integration.helpers import OPEN_ATTEMPTS_MAX, slot_map

# Seconds one HTTP request may take before the test fails (the edge's own
# gRPC deadline is 10 s; a hang past this is a bug, not a slow machine).
REQUEST_TIMEOUT_S = 20.0
JSON = "application/json"
# Text that must never reach a client: a Python traceback or a stack frame.
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages", "most recent call last")


def start_cluster(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[LocalCluster]:
    """etcd + 2 shards + 1 coordinator + gateway (gRPC and HTTP), stopped by PID at the end."""
    local = LocalCluster(tmp_path_factory.mktemp(name), shards=2, coordinators=1)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str
    body: Any = None  # the parsed JSON, or None when the body is not JSON

    @property
    def reason(self) -> str | None:
        return self.body.get("reason") if isinstance(self.body, dict) else None

    def describe(self) -> str:
        return f"HTTP {self.status} {self.text[:400]!r}"


@dataclass
class Api:
    """Blocking HTTP client of the edge; never raises on an HTTP status."""

    base: str
    token: str | None = None
    timeout_s: float = REQUEST_TIMEOUT_S
    default_headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, cluster: LocalCluster) -> Api:
        return cls(f"http://{cluster.http_address}", getattr(cluster, "admin_token", None))

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token is not None else {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str | None = JSON,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """`body` is sent as JSON; `raw` as the exact bytes (for malformed input)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {**self.auth_headers, **self.default_headers}
        if data is not None and content_type is not None:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                status, reply_headers, payload = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, reply_headers, payload = exc.code, dict(exc.headers), exc.read()
        text = payload.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Reply(status, reply_headers, text, parsed)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    # Checked steps (set-up and probes): any refusal fails the test at once.

    def ok(self, reply: Reply, *statuses: int) -> Any:
        assert reply.status in (statuses or (200,)), reply.describe()
        return reply.body

    def open_account(
        self, currency: str = "CNY", account_type: str = "ACCOUNT_TYPE_PERSONAL"
    ) -> dict[str, Any]:
        body = {
            "currency": currency,
            "type": account_type,
            "holder": {
                "name": "Li Lei",
                "id_type": "ID_DOCUMENT_TYPE_CN_RESIDENT_ID",
                "id_number": resident_id(),
                "phone": mobile(),
            },
        }
        account: dict[str, Any] = self.ok(self.post("/v1/accounts", body), 201)
        return account

    def open_on_shard(self, cluster: LocalCluster, shard_id: str, currency: str = "CNY") -> str:
        """Open accounts until one lands on `shard_id` (placement is by hash); its id."""
        slots = slot_map(cluster)
        for _ in range(OPEN_ATTEMPTS_MAX):
            account_id = self.open_account(currency)["id"]
            if slots.owner(int(account_id)) == shard_id:
                return str(account_id)
        raise AssertionError(f"no account landed on {shard_id} in {OPEN_ATTEMPTS_MAX} tries")

    def deposit(self, account_id: str, amount: int, currency: str = "CNY") -> None:
        body = {
            "id": str(uuid.uuid4()),
            "credit_account_id": account_id,
            "amount": str(amount),
            "currency": currency,
        }
        self.ok(self.post("/v1/deposits", body), 201)

    def freeze(self, account_id: str) -> None:
        self.ok(self.post(f"/v1/accounts/{account_id}:freeze", {"reason": "hostile-input test"}))

    def balance(self, account_id: str) -> int:
        return int(self.ok(self.get(f"/v1/accounts/{account_id}"))["balance"])

    def state(self, account_id: str) -> tuple[str, ...]:
        """What a refused request must leave alone: balance, held, pending_credit, available, status."""
        account = self.ok(self.get(f"/v1/accounts/{account_id}"))
        return tuple(str(account[k]) for k in ("balance", "held", "pending_credit", "available", "status"))

    def cluster_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.ok(self.get("/v1/cluster"))
        return info

    def journal_seqs(self) -> dict[str, int]:
        """shard id -> journal_seq: unchanged means nothing was recorded anywhere."""
        shards = self.cluster_info()["shards"]
        assert shards and all(s["up"] for s in shards), shards
        return {s["shard_id"]: int(s["info"]["journal_seq"]) for s in shards}


def assert_clean_json_error(reply: Reply) -> None:
    """The edge's error model: a JSON object with code/reason/message/details, no traceback."""
    assert reply.headers.get("Content-Type", "").startswith(JSON), reply.describe()
    assert isinstance(reply.body, dict), reply.describe()
    assert set(reply.body) == {"code", "reason", "message", "details"}, reply.describe()
    assert isinstance(reply.body["details"], dict) and reply.body["details"].get("request_id")
    for marker in TRACEBACK_MARKERS:
        assert marker not in reply.text, reply.describe()
