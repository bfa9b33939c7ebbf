"""Hostile input at the HTTP/JSON edge, against a real cluster.

Every case is sent to the running gateway's HTTP port and must be refused
with the exact HTTP status and `reason`, as a clean JSON error (the edge's
`{"code", "reason", "message", "details"}`, never a traceback). After every
case the ledger is checked:

- the balances of all set-up accounts are exactly what set-up left;
- for input refused before the ledger (4xx INVALID_ARGUMENT and friends),
  no shard's journal moved (`GET /v1/cluster` -> shards[].info.journal_seq);
- business refusals (insufficient funds, frozen, currency mismatch, unknown
  account...) are recorded as ABORTED by design (final for the id), so for
  those the transfer must read back ABORTED with the same reason instead.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from clients.local_cluster import LocalCluster
from gateway.http import limits as http_limits
from shardbank import ids, limits
from tests.factories import mobile, resident_id
from tests.integration.http_support import Api, Reply, assert_clean_json_error, start_cluster

pytestmark = pytest.mark.integration

# Balances set up (minor units); nothing any case sends may change them.
FUNDED = {"a1": 100_000, "a2": 50_000, "c1": 70_000, "frozen": 30_000, "usd": 40_000}
# The amount of the committed transfer whose id the replay cases reuse.
REPLAYED_AMOUNT = 1_000


@dataclass
class World:
    api: Api
    accounts: dict[str, str]  # a1, a2 (shard-1), c1 (shard-2), frozen (shard-1), usd
    never: str  # a valid 16-digit Luhn id that was never opened
    replayed: dict[str, Any]  # body of a committed transfer a1 -> a2
    balances: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> str:
        try:
            return self.accounts[name]
        except KeyError:
            raise AttributeError(name) from None

    def snapshot(self) -> dict[str, tuple[str, ...]]:
        """Per account: balance, held, pending_credit, available, status."""
        return {name: self.api.state(account) for name, account in self.accounts.items()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory, "hostile")


@pytest.fixture(scope="module")
def world(cluster: LocalCluster) -> World:
    api = Api.of(cluster)
    accounts = {
        "a1": api.open_on_shard(cluster, "shard-1"),
        "a2": api.open_on_shard(cluster, "shard-1"),
        "c1": api.open_on_shard(cluster, "shard-2"),
        "frozen": api.open_on_shard(cluster, "shard-1"),
        "usd": str(api.open_account("USD")["id"]),
    }
    for name, amount in FUNDED.items():
        api.deposit(accounts[name], amount, "USD" if name == "usd" else "CNY")
    api.freeze(accounts["frozen"])
    replayed = transfer_body(accounts["a1"], accounts["a2"], amount=str(REPLAYED_AMOUNT))
    api.ok(api.post("/v1/transfers", replayed), 201)
    never = str(ids.new_account_id())
    assert api.get(f"/v1/accounts/{never}").status == 404
    world = World(api, accounts, never, replayed)
    world.balances = world.snapshot()
    expected = dict(FUNDED, a1=FUNDED["a1"] - REPLAYED_AMOUNT, a2=FUNDED["a2"] + REPLAYED_AMOUNT)
    assert {name: int(state[0]) for name, state in world.balances.items()} == expected
    return world


def transfer_body(debit: str, credit: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": "100",
        "currency": "CNY",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()  # an override that removes the field


def open_body(**holder: Any) -> dict[str, Any]:
    base = {
        "name": "Li Lei",
        "id_type": "ID_DOCUMENT_TYPE_CN_RESIDENT_ID",
        "id_number": resident_id(),
        "phone": mobile(),
    }
    base.update(holder)
    return {"currency": "CNY", "type": "ACCOUNT_TYPE_PERSONAL", "holder": base}


def raw_with(body: dict[str, Any], key: str, literal: str) -> bytes:
    """The JSON of `body` with `key`'s value replaced by a raw JSON literal."""
    marker = "__LITERAL__"
    return json.dumps({**body, key: marker}).replace(f'"{marker}"', literal).encode()


Body = Callable[[World], Any]


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # formatted with the world's accounts: {a1}, {never}...
    status: int
    reason: str
    body: Body | None = None  # JSON value
    raw: Callable[[World], bytes] | None = None  # exact bytes
    headers: Callable[[World], dict[str, str]] | None = None
    content_type: str | None = "application/json"
    # Business refusal: recorded ABORTED by design (journal grows, id is final).
    recorded: bool = False
    # A cross-shard conflict found at the record holder after the credit shard
    # prepared its leg in parallel: that leg is prepared and aborted (journal
    # grows on the credit shard, balances/held/pending_credit do not change).
    credit_leg_churn: bool = False


def T(**overrides: Any) -> Body:
    """A transfer a1 -> a2 of 100 CNY with `overrides` (values may be callables of the world)."""

    def build(w: World) -> dict[str, Any]:
        resolved = {k: (v(w) if callable(v) else v) for k, v in overrides.items()}
        return transfer_body(w.a1, w.a2, **resolved)

    return build


def post(path: str, status: int, reason: str, body: Body, **kwargs: Any) -> Case:
    return Case("POST", path, status, reason, body=body, **kwargs)


def transfer(status: int, reason: str, /, **overrides: Any) -> Case:
    return post("/v1/transfers", status, reason, T(**overrides))


def transfer_raw(status: int, reason: str, key: str, literal: str) -> Case:
    return Case("POST", "/v1/transfers", status, reason, raw=lambda w: raw_with(T()(w), key, literal))


def opening(reason: str, /, **holder: Any) -> Case:
    return post("/v1/accounts", 400, reason, lambda w: open_body(**holder))


def _bad_luhn(account: str) -> str:
    return account[:-1] + str((int(account[-1]) + 1) % 10)


def _oversize_body(w: World) -> bytes:
    padding = "x" * (http_limits.BODY_BYTES_MAX + 1)
    return json.dumps(T(memo=padding)(w)).encode()


def _batch(count: int) -> Body:
    return lambda w: {
        "transfers": [dict(T()(w), id=str(uuid.uuid4()), kind="TRANSFER_KIND_TRANSFER") for _ in range(count)]
    }


INVALID = "INVALID_BODY"
CASES: dict[str, Case] = {
    # Not JSON, or not a JSON object.
    "malformed-json": Case("POST", "/v1/transfers", 400, "MALFORMED_JSON", raw=lambda w: b'{"amount": '),
    "truncated-string": Case("POST", "/v1/transfers", 400, "MALFORMED_JSON", raw=lambda w: b'{"memo": "ab'),
    "duplicate-key": Case(
        "POST",
        "/v1/transfers",
        400,
        "MALFORMED_JSON",
        raw=lambda w: raw_with(T()(w), "amount", '"1", "amount": "2"'),
    ),
    "nan-literal": transfer_raw(400, "MALFORMED_JSON", "amount", "NaN"),
    "infinity-literal": transfer_raw(400, "MALFORMED_JSON", "amount", "Infinity"),
    "invalid-utf8": Case(
        "POST", "/v1/transfers", 400, "MALFORMED_JSON", raw=lambda w: b'{"memo": "\xff\xfe"}'
    ),
    "5000-digit-number": transfer_raw(400, "MALFORMED_JSON", "amount", "1" * 5000),
    "deeply-nested-array": Case(
        "POST", "/v1/transfers", 400, "MALFORMED_JSON", raw=lambda w: b"[" * 50_000 + b"]" * 50_000
    ),
    "deeply-nested-object": Case(
        "POST",
        "/v1/transfers",
        400,
        "MALFORMED_JSON",
        raw=lambda w: b'{"memo":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
    ),
    "json-array-body": post("/v1/transfers", 400, INVALID, lambda w: [T()(w)]),
    "json-null-body": Case("POST", "/v1/transfers", 400, INVALID, raw=lambda w: b"null"),
    "json-string-body": post("/v1/transfers", 400, INVALID, lambda w: "transfer"),
    # Wrong JSON types.
    "amount-object": transfer(400, INVALID, amount={"value": 1}),
    "amount-bool": transfer(400, INVALID, amount=True),
    "amount-float-1.5": transfer(400, INVALID, amount=1.5),
    "amount-string-12abc": transfer(400, INVALID, amount="12abc"),
    "amount-array": transfer(400, INVALID, amount=[100]),
    "amount-string-hex": transfer(400, INVALID, amount="0x10"),
    "amount-string-spaces": transfer(400, INVALID, amount=" 100"),
    "amount-string-inf": transfer(400, INVALID, amount="inf"),
    "amount-number-1e400": transfer_raw(400, INVALID, "amount", "1e400"),
    "memo-number": transfer(400, INVALID, memo=5),
    "memo-lone-surrogate": transfer(400, INVALID, memo="\ud800"),
    "account-id-object": transfer(400, INVALID, credit_account_id={"id": 1}),
    # Integers must be integers in plain decimal digits (the OpenAPI pattern
    # ^-?[0-9]+$): nothing may be rounded, truncated or re-read.
    "amount-string-fraction-beyond-float": transfer(400, INVALID, amount="100.0000000000000001"),
    "amount-number-fraction-beyond-float": transfer_raw(400, INVALID, "amount", "100.0000000000000001"),
    "amount-string-exponent": transfer(400, INVALID, amount="1e3"),
    "amount-string-underscore": transfer(400, INVALID, amount="1_000"),
    "amount-string-arabic-indic-digits": transfer(400, INVALID, amount="١٠٠"),
    "amount-string-plus-sign": transfer(400, INVALID, amount="+100"),
    "account-id-string-fraction": transfer(400, INVALID, credit_account_id=lambda w: w.a2 + ".4"),
    "account-id-number-fraction": Case(
        "POST",
        "/v1/transfers",
        400,
        INVALID,
        raw=lambda w: raw_with(T()(w), "credit_account_id", w.a2 + ".4"),
    ),
    # Missing fields.
    "missing-amount": transfer(400, "INVALID_AMOUNT", amount=_DROP),
    "null-amount": transfer(400, "INVALID_AMOUNT", amount=None),
    "missing-debit-account": transfer(400, "INVALID_ACCOUNT_ID", debit_account_id=_DROP),
    "missing-credit-account": transfer(400, "INVALID_ACCOUNT_ID", credit_account_id=_DROP),
    "missing-currency": transfer(400, "INVALID_CURRENCY", currency=_DROP),
    "missing-id": transfer(400, "INVALID_TRANSFER_ID", id=_DROP),
    "empty-id": transfer(400, "INVALID_TRANSFER_ID", id=""),
    "empty-body": post("/v1/transfers", 400, "INVALID_TRANSFER_ID", lambda w: {}),
    "deposit-missing-credit": post(
        "/v1/deposits",
        400,
        "INVALID_ACCOUNT_ID",
        lambda w: {"id": str(uuid.uuid4()), "amount": "1", "currency": "CNY"},
    ),
    # Unknown fields and fields this route does not take.
    "unknown-field": transfer(400, INVALID, foo=1),
    "unknown-field-camel-typo": transfer(400, INVALID, creditAccountID="1"),
    "output-field-status": transfer(400, INVALID, status="TRANSFER_STATUS_COMMITTED"),
    "route-field-kind": transfer(400, INVALID, kind="TRANSFER_KIND_DEPOSIT"),
    "unknown-holder-field": post(
        "/v1/accounts", 400, INVALID, lambda w: {**open_body(), "holder": {**open_body()["holder"], "x": 1}}
    ),
    "freeze-account-id-in-body": post(
        "/v1/accounts/{a2}:freeze", 400, INVALID, lambda w: {"reason": "r", "account_id": w.a1}
    ),
    "patch-account-id-in-body": Case(
        "PATCH", "/v1/accounts/{a2}", 400, INVALID, body=lambda w: {"account_id": w.a1, "name": "X"}
    ),
    # Amounts.
    "amount-zero": transfer(400, "INVALID_AMOUNT", amount="0"),
    "amount-negative": transfer(400, "INVALID_AMOUNT", amount="-5"),
    "amount-negative-number": transfer(400, "INVALID_AMOUNT", amount=-5),
    "amount-fractional-string": transfer(400, INVALID, amount="1.5"),
    "amount-huge-10^15+1": transfer(400, "INVALID_AMOUNT", amount=str(10**15 + 1)),
    "amount-int64-overflow-string": transfer(400, INVALID, amount="9223372036854775808"),
    "amount-int64-overflow-number": transfer(400, INVALID, amount=2**63),
    "amount-int64-underflow": transfer(400, INVALID, amount=str(-(2**63) - 1)),
    "account-id-uint64-overflow": transfer(400, INVALID, debit_account_id=str(2**64)),
    "account-id-negative": transfer(400, INVALID, credit_account_id="-1"),
    "deposit-amount-huge": post(
        "/v1/deposits",
        400,
        "INVALID_AMOUNT",
        lambda w: {
            "id": str(uuid.uuid4()),
            "credit_account_id": w.a1,
            "amount": str(10**15 + 1),
            "currency": "CNY",
        },
    ),
    "withdrawal-amount-zero": post(
        "/v1/withdrawals",
        400,
        "INVALID_AMOUNT",
        lambda w: {"id": str(uuid.uuid4()), "debit_account_id": w.a1, "amount": "0", "currency": "CNY"},
    ),
    # Account ids.
    "account-id-bad-luhn": transfer(400, "INVALID_ACCOUNT_ID", credit_account_id=lambda w: _bad_luhn(w.a2)),
    "account-id-letters": transfer(400, INVALID, credit_account_id="62220200000000AB"),
    "account-id-17-digits": transfer(400, "INVALID_ACCOUNT_ID", credit_account_id=lambda w: w.a2 + "0"),
    # Below 10^15 is the system (cash) range: a dropped digit reads as a cash account.
    "account-id-15-digits": transfer(400, "SYSTEM_ACCOUNT", credit_account_id=lambda w: w.a2[:-1]),
    "account-id-system-cash": transfer(400, "SYSTEM_ACCOUNT", credit_account_id="1156"),
    "same-account-both-sides": transfer(400, "SAME_ACCOUNT", credit_account_id=lambda w: w.a1),
    "deposit-sets-cash-side": post(
        "/v1/deposits",
        400,
        "INVALID_ACCOUNT_ID",
        lambda w: {
            "id": str(uuid.uuid4()),
            "debit_account_id": "1156",
            "credit_account_id": w.a1,
            "amount": "1",
            "currency": "CNY",
        },
    ),
    "get-account-letters": Case("GET", "/v1/accounts/abc", 400, "INVALID_ACCOUNT_ID"),
    "get-account-bad-luhn": Case("GET", "/v1/accounts/{a1_bad_luhn}", 400, "INVALID_ACCOUNT_ID"),
    "get-account-21-digits": Case("GET", "/v1/accounts/" + "1" * 21, 400, "INVALID_ACCOUNT_ID"),
    "get-account-uint64-overflow": Case("GET", f"/v1/accounts/{2**64}", 400, "INVALID_ACCOUNT_ID"),
    "get-account-superscript-digit": Case("GET", "/v1/accounts/%C2%B2", 400, "INVALID_ACCOUNT_ID"),
    "get-account-zero": Case("GET", "/v1/accounts/0", 400, "INVALID_ACCOUNT_ID"),
    # Cash account ids are shard index * 1000 + ISO numeric: 105 is no currency.
    "get-account-cash-unknown-currency": Case("GET", "/v1/accounts/6105", 400, "INVALID_ACCOUNT_ID"),
    "get-account-cash-of-unknown-shard": Case("GET", "/v1/accounts/999156", 404, "ACCOUNT_NOT_FOUND"),
    # Unknown account (valid Luhn, never opened): 404 ACCOUNT_NOT_FOUND.
    "get-unknown-account": Case("GET", "/v1/accounts/{never}", 404, "ACCOUNT_NOT_FOUND"),
    "history-unknown-account": Case("GET", "/v1/accounts/{never}/transfers", 404, "ACCOUNT_NOT_FOUND"),
    "freeze-unknown-account": post(
        "/v1/accounts/{never}:freeze", 404, "ACCOUNT_NOT_FOUND", lambda w: {"reason": "r"}
    ),
    "patch-unknown-account": Case(
        "PATCH", "/v1/accounts/{never}", 404, "ACCOUNT_NOT_FOUND", body=lambda w: {"phone": "+8613900000000"}
    ),
    "transfer-to-unknown-account": Case(
        "POST",
        "/v1/transfers",
        404,
        "ACCOUNT_NOT_FOUND",
        body=T(credit_account_id=lambda w: w.never),
        recorded=True,
    ),
    "transfer-from-unknown-account": Case(
        "POST",
        "/v1/transfers",
        404,
        "ACCOUNT_NOT_FOUND",
        body=T(debit_account_id=lambda w: w.never),
        recorded=True,
    ),
    "deposit-to-unknown-account": Case(
        "POST",
        "/v1/deposits",
        404,
        "ACCOUNT_NOT_FOUND",
        body=lambda w: {
            "id": str(uuid.uuid4()),
            "credit_account_id": w.never,
            "amount": "1",
            "currency": "CNY",
        },
        recorded=True,
    ),
    # Currencies.
    "currency-unknown": transfer(400, "INVALID_CURRENCY", currency="XYZ"),
    "currency-lowercase": transfer(400, "INVALID_CURRENCY", currency="cny"),
    "currency-empty": transfer(400, "INVALID_CURRENCY", currency=""),
    "currency-control-char": transfer(400, "INVALID_CURRENCY", currency="CN\x00"),
    "currency-mismatch-credit": Case(
        "POST",
        "/v1/transfers",
        422,
        "CURRENCY_MISMATCH",
        body=T(credit_account_id=lambda w: w.usd),
        recorded=True,
    ),
    "currency-mismatch-both": Case(
        "POST", "/v1/transfers", 422, "CURRENCY_MISMATCH", body=T(currency="USD"), recorded=True
    ),
    # Other business refusals (recorded ABORTED). Overdrafts ten times the
    # balance but below every amount the risk rules look at (config/risk.toml:
    # RMB 50,000+ to a new payee or at night, RMB 1,000,000+ blocked outright,
    # all decided before any balance is looked at).
    "insufficient-funds": Case(
        "POST", "/v1/transfers", 422, "INSUFFICIENT_FUNDS", body=T(amount=str(10**6)), recorded=True
    ),
    "insufficient-funds-cross-shard": Case(
        "POST",
        "/v1/transfers",
        422,
        "INSUFFICIENT_FUNDS",
        body=T(credit_account_id=lambda w: w.c1, amount=str(10**6)),
        recorded=True,
    ),
    "debit-frozen": Case(
        "POST",
        "/v1/transfers",
        422,
        "ACCOUNT_FROZEN",
        body=T(debit_account_id=lambda w: w.frozen),
        recorded=True,
    ),
    "credit-frozen": Case(
        "POST",
        "/v1/transfers",
        422,
        "ACCOUNT_FROZEN",
        body=T(credit_account_id=lambda w: w.frozen),
        recorded=True,
    ),
    "withdraw-frozen": Case(
        "POST",
        "/v1/withdrawals",
        422,
        "ACCOUNT_FROZEN",
        body=lambda w: {
            "id": str(uuid.uuid4()),
            "debit_account_id": w.frozen,
            "amount": "1",
            "currency": "CNY",
        },
        recorded=True,
    ),
    "payment-to-personal": Case("POST", "/v1/payments", 422, "NOT_A_MERCHANT", body=T(), recorded=True),
    # Account state refusals (refused before anything is written).
    "freeze-already-frozen": post(
        "/v1/accounts/{frozen}:freeze", 422, "ACCOUNT_ALREADY_FROZEN", lambda w: {"reason": "r"}
    ),
    "unfreeze-active": post(
        "/v1/accounts/{a1}:unfreeze", 422, "ACCOUNT_NOT_FROZEN", lambda w: {"reason": "r"}
    ),
    "close-with-balance": post("/v1/accounts/{a1}:close", 422, "BALANCE_NOT_ZERO", lambda w: {"reason": "r"}),
    # Control characters and over-long text.
    "memo-nul": transfer(400, "INVALID_ARGUMENT", memo="a\x00b"),
    "memo-escape": transfer(400, "INVALID_ARGUMENT", memo="\x1b[31mred"),
    "memo-bidi-override": transfer(400, "INVALID_ARGUMENT", memo="pay \u202egnp.exe"),
    "memo-line-separator": transfer(400, "INVALID_ARGUMENT", memo="a\u2028b"),
    "memo-newline": transfer(400, "INVALID_ARGUMENT", memo="rent\nmore"),
    "memo-141-chars": transfer(400, "INVALID_ARGUMENT", memo="m" * (limits.MEMO_LENGTH_MAX + 1)),
    "memo-over-edge-limit": transfer(400, INVALID, memo="m" * (http_limits.STRING_LENGTH_MAX + 1)),
    "reference-65-chars": transfer(
        400, "INVALID_ARGUMENT", reference="r" * (limits.REFERENCE_LENGTH_MAX + 1)
    ),
    "reference-tab": transfer(400, "INVALID_ARGUMENT", reference="a\tb"),
    "name-control-char": opening("INVALID_NAME", name="Li\x07Lei"),
    "name-bidi": opening("INVALID_NAME", name="Li\u202eLei"),
    "name-101-chars": opening("INVALID_NAME", name="L" * 101),
    "name-empty": opening("INVALID_NAME", name=""),
    "name-edge-spaces": opening("INVALID_NAME", name=" Li Lei "),
    "name-over-edge-limit": opening(INVALID, name="L" * (http_limits.STRING_LENGTH_MAX + 1)),
    "freeze-reason-control": post(
        "/v1/accounts/{a2}:freeze", 400, "INVALID_REASON", lambda w: {"reason": "a\x1bb"}
    ),
    "freeze-reason-201-chars": post(
        "/v1/accounts/{a2}:freeze", 400, "INVALID_REASON", lambda w: {"reason": "r" * 201}
    ),
    "freeze-reason-missing": post("/v1/accounts/{a2}:freeze", 400, "INVALID_REASON", lambda w: {}),
    "patch-name-control": Case(
        "PATCH", "/v1/accounts/{a2}", 400, "INVALID_NAME", body=lambda w: {"name": "a\x00"}
    ),
    "patch-nothing": Case("PATCH", "/v1/accounts/{a2}", 400, "INVALID_ARGUMENT", body=lambda w: {}),
    # Holder identity.
    "resident-id-bad-check-digit": opening("INVALID_ID_NUMBER", id_number="110105199001011231"),
    "resident-id-impossible-birth-date": opening("INVALID_ID_NUMBER", id_number="110105199002301234"),
    "resident-id-future-birth-date": opening("INVALID_ID_NUMBER", id_number="110105209901011234"),
    "resident-id-17-chars": opening("INVALID_ID_NUMBER", id_number="11010519900101123"),
    "resident-id-19-chars": opening("INVALID_ID_NUMBER", id_number="1101051990010112345"),
    "resident-id-letters": opening("INVALID_ID_NUMBER", id_number="11010519900101ABCD"),
    "id-type-unspecified": opening("INVALID_ID_NUMBER", id_type="ID_DOCUMENT_TYPE_UNSPECIFIED"),
    "id-type-unknown-name": opening(INVALID, id_type="ID_DOCUMENT_TYPE_DRIVING_LICENCE"),
    "passport-bad": opening("INVALID_ID_NUMBER", id_type="ID_DOCUMENT_TYPE_PASSPORT", id_number="AB-12"),
    "phone-no-plus": opening("INVALID_PHONE", phone="13812345678"),
    "phone-cn-too-short": opening("INVALID_PHONE", phone="+861381234567"),
    "phone-cn-landline-prefix": opening("INVALID_PHONE", phone="+8621234567890"),
    "phone-letters": opening("INVALID_PHONE", phone="+86138abcd5678"),
    "phone-nul": opening("INVALID_PHONE", phone="+86138\x0012345678"),
    "phone-empty": opening("INVALID_PHONE", phone=""),
    "patch-phone-bad": Case(
        "PATCH", "/v1/accounts/{a2}", 400, "INVALID_PHONE", body=lambda w: {"phone": "123"}
    ),
    "open-type-system": post(
        "/v1/accounts", 400, "INVALID_ACCOUNT_TYPE", lambda w: {**open_body(), "type": "ACCOUNT_TYPE_SYSTEM"}
    ),
    "open-currency-unknown": post(
        "/v1/accounts", 400, "INVALID_CURRENCY", lambda w: {**open_body(), "currency": "XXX"}
    ),
    "open-overdraft-negative": post(
        "/v1/accounts", 400, "INVALID_OVERDRAFT_LIMIT", lambda w: {**open_body(), "overdraft_limit": "-1"}
    ),
    "open-overdraft-huge": post(
        "/v1/accounts",
        400,
        "INVALID_OVERDRAFT_LIMIT",
        lambda w: {**open_body(), "overdraft_limit": str(10**13)},
    ),
    "open-empty-body": post("/v1/accounts", 400, "INVALID_CURRENCY", lambda w: {}),
    # Size limits.
    "body-over-1MiB": Case("POST", "/v1/transfers", 413, "BODY_TOO_LARGE", raw=_oversize_body),
    "batch-over-limit": post(
        "/v1/transfers:batch", 429, "BATCH_TOO_LARGE", _batch(http_limits.BATCH_ITEMS_MAX + 1)
    ),
    # The single routes refuse output fields; a batch item must too (else a
    # client believes it set `status`, and the transfer is applied regardless).
    "batch-item-output-field": post(
        "/v1/transfers:batch",
        400,
        INVALID,
        lambda w: {
            "transfers": [
                dict(T(amount="1")(w), kind="TRANSFER_KIND_TRANSFER", status="TRANSFER_STATUS_ABORTED")
            ]
        },
    ),
    "batch-empty": post("/v1/transfers:batch", 400, "BATCH_EMPTY", lambda w: {"transfers": []}),
    "batch-no-transfers-field": post("/v1/transfers:batch", 400, "BATCH_EMPTY", lambda w: {}),
    "batch-transfers-object": post("/v1/transfers:batch", 400, INVALID, lambda w: {"transfers": {"a": 1}}),
    "batch-with-idempotency-key": post(
        "/v1/transfers:batch",
        400,
        "INVALID_HEADER",
        _batch(1),
        headers=lambda w: {"Idempotency-Key": str(uuid.uuid4())},
    ),
    # Transfer ids and idempotency.
    "replayed-id-different-amount": post(
        "/v1/transfers",
        409,
        "TRANSFER_ID_CONFLICT",
        lambda w: {**w.replayed, "amount": str(REPLAYED_AMOUNT + 1)},
    ),
    "replayed-id-different-memo": post(
        "/v1/transfers", 409, "TRANSFER_ID_CONFLICT", lambda w: {**w.replayed, "memo": "x"}
    ),
    "replayed-id-different-credit": post(
        "/v1/transfers",
        409,
        "TRANSFER_ID_CONFLICT",
        lambda w: {**w.replayed, "credit_account_id": w.c1},
        credit_leg_churn=True,
    ),
    "replayed-id-as-deposit": post(
        "/v1/deposits",
        409,
        "TRANSFER_ID_CONFLICT",
        lambda w: {"id": w.replayed["id"], "credit_account_id": w.a1, "amount": "1", "currency": "CNY"},
    ),
    "idempotency-key-differs-from-body-id": post(
        "/v1/transfers",
        400,
        "INVALID_TRANSFER_ID",
        T(),
        headers=lambda w: {"Idempotency-Key": str(uuid.uuid4())},
    ),
    "idempotency-key-not-uuid": post(
        "/v1/transfers", 400, "INVALID_TRANSFER_ID", T(id=_DROP), headers=lambda w: {"Idempotency-Key": "abc"}
    ),
    "idempotency-key-too-long": post(
        "/v1/transfers",
        400,
        "INVALID_TRANSFER_ID",
        T(id=_DROP),
        headers=lambda w: {"Idempotency-Key": "a" * 65},
    ),
    "id-not-uuid": transfer(400, "INVALID_TRANSFER_ID", id="not-a-uuid"),
    "id-uuid-in-braces": transfer(400, "INVALID_TRANSFER_ID", id=lambda w: "{" + str(uuid.uuid4()) + "}"),
    "id-uuid-no-dashes": transfer(400, "INVALID_TRANSFER_ID", id=lambda w: uuid.uuid4().hex),
    "id-sql-ish": transfer(400, "INVALID_TRANSFER_ID", id="'; DROP TABLE transfers; --"),
    "get-transfer-not-uuid": Case("GET", "/v1/transfers/not-a-uuid", 400, "INVALID_TRANSFER_ID"),
    "get-transfer-too-long": Case("GET", "/v1/transfers/" + "a" * 65, 400, "INVALID_TRANSFER_ID"),
    "get-transfer-unknown": Case("GET", f"/v1/transfers/{uuid.UUID(int=7)}", 404, "TRANSFER_NOT_FOUND"),
    # History paging.
    "page-size-0": Case("GET", "/v1/accounts/{a1}/transfers?page_size=0", 400, "INVALID_PAGE_SIZE"),
    "page-size-1001": Case("GET", "/v1/accounts/{a1}/transfers?page_size=1001", 400, "INVALID_PAGE_SIZE"),
    "page-size-minus-1": Case("GET", "/v1/accounts/{a1}/transfers?page_size=-1", 400, "INVALID_PAGE_SIZE"),
    "page-size-abc": Case("GET", "/v1/accounts/{a1}/transfers?page_size=abc", 400, "INVALID_PAGE_SIZE"),
    "page-size-huge": Case(
        "GET", "/v1/accounts/{a1}/transfers?page_size=" + "9" * 30, 400, "INVALID_PAGE_SIZE"
    ),
    "page-size-twice": Case(
        "GET", "/v1/accounts/{a1}/transfers?page_size=1&page_size=2", 400, "INVALID_QUERY"
    ),
    "page-token-junk": Case("GET", "/v1/accounts/{a1}/transfers?page_token=junk", 400, "INVALID_PAGE_TOKEN"),
    "page-token-too-long": Case(
        "GET", "/v1/accounts/{a1}/transfers?page_token=" + "a" * 513, 400, "INVALID_PAGE_TOKEN"
    ),
    "unknown-query-parameter": Case("GET", "/v1/accounts/{a1}/transfers?pagesize=1", 400, "INVALID_QUERY"),
    # Routing, methods, media types, headers.
    "unknown-route": Case("GET", "/v1/nope", 404, "ROUTE_NOT_FOUND"),
    "unknown-route-post": post("/v1/transfer", 404, "ROUTE_NOT_FOUND", T()),
    "post-to-get-only-route": post("/v1/transfers/batch", 405, "METHOD_NOT_ALLOWED", T()),
    "unknown-verb": post("/v1/accounts/{a1}:delete", 404, "ROUTE_NOT_FOUND", lambda w: {"reason": "r"}),
    "path-traversal": Case("GET", "/v1/accounts/..%2F..%2Fetc%2Fpasswd", 400, "INVALID_ACCOUNT_ID"),
    "wrong-method-delete-account": Case("DELETE", "/v1/accounts/{a1}", 405, "METHOD_NOT_ALLOWED"),
    "wrong-method-get-transfers": Case("GET", "/v1/transfers", 405, "METHOD_NOT_ALLOWED"),
    "wrong-method-put-transfer": Case("PUT", "/v1/transfers", 405, "METHOD_NOT_ALLOWED", body=T()),
    "content-type-text-plain": post(
        "/v1/transfers", 415, "UNSUPPORTED_MEDIA_TYPE", T(), content_type="text/plain"
    ),
    "content-type-form": post(
        "/v1/transfers", 415, "UNSUPPORTED_MEDIA_TYPE", T(), content_type="application/x-www-form-urlencoded"
    ),
    "content-type-xml": post(
        "/v1/accounts", 415, "UNSUPPORTED_MEDIA_TYPE", lambda w: open_body(), content_type="application/xml"
    ),
    "authorization-non-ascii": Case(
        "GET", "/v1/cluster", 400, "INVALID_HEADER", headers=lambda w: {"Authorization": "Bearer é"}
    ),
    "authorization-too-long": Case(
        "GET",
        "/v1/cluster",
        400,
        "INVALID_HEADER",
        headers=lambda w: {"Authorization": "Bearer " + "a" * 5000},
    ),
}


def _send(world: World, case: Case) -> Reply:
    names = dict(world.accounts, never=world.never, a1_bad_luhn=_bad_luhn(world.a1))
    path = case.path.format(**names)
    raw = case.raw(world) if case.raw is not None else None
    body = case.body(world) if case.body is not None else None
    headers = dict(case.headers(world)) if case.headers is not None else {}
    # A hostile Authorization replaces the real one: that is the case.
    return world.api.request(
        case.method, path, body, raw=raw, content_type=case.content_type, headers=headers
    )


# Cases that fail because of a product bug not fixed yet (strict: they must fail).
KNOWN_BUGS: dict[str, str] = {}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
        if name in KNOWN_BUGS
        else name
        for name in CASES
    ]


def test_case_count() -> None:
    print(f"\nhostile HTTP cases: {len(CASES)}")
    assert len(CASES) >= 100


@pytest.mark.parametrize("name", _params())
def test_hostile_input_is_refused_and_changes_nothing(world: World, name: str) -> None:
    case = CASES[name]
    api = world.api
    seqs_before = api.journal_seqs()

    reply = _send(world, case)
    balances_before, world.balances = world.balances, world.snapshot()  # one failure, not a cascade
    seqs_after = api.journal_seqs()

    assert (reply.status, reply.reason) == (case.status, case.reason), reply.describe()
    assert_clean_json_error(reply)
    if case.status == 405:
        assert reply.headers.get("Allow"), reply.headers
    if case.reason in ("BATCH_TOO_LARGE", "BODY_TOO_LARGE"):
        assert "Retry-After" not in reply.headers, "waiting does not make it smaller"
    assert world.balances == balances_before, f"{name} moved money"
    if case.recorded:
        # A business refusal: recorded ABORTED, final for this id (by design).
        details = reply.body["details"]
        assert details.get("transfer_status") == "TRANSFER_STATUS_ABORTED", details
        stored = api.ok(api.get(f"/v1/transfers/{details['transfer_id']}"))
        assert (stored["status"], stored["reason"]) == ("TRANSFER_STATUS_ABORTED", case.reason), stored
        assert sum(seqs_after.values()) > sum(seqs_before.values()), (seqs_before, seqs_after)
    elif case.credit_leg_churn:
        assert seqs_after["shard-1"] == seqs_before["shard-1"], (seqs_before, seqs_after)
    else:
        assert seqs_after == seqs_before, f"{name} wrote to a journal"


# Batches: malformed items are refused one by one (REJECTED, nothing
# recorded) without failing their neighbours or the request.
BATCH_ITEMS: dict[str, tuple[dict[str, Any], str]] = {
    "zero-amount": ({"amount": "0"}, "INVALID_AMOUNT"),
    "same-account": ({"credit_account_id": "{a1}"}, "SAME_ACCOUNT"),
    "bad-id": ({"id": "x"}, "INVALID_TRANSFER_ID"),
    "kind-unspecified": ({"kind": "TRANSFER_KIND_UNSPECIFIED"}, "INVALID_TRANSFER_KIND"),
    "unknown-currency": ({"currency": "ZZZ"}, "INVALID_CURRENCY"),
    "memo-control": ({"memo": "\x00"}, "INVALID_ARGUMENT"),
    "bad-luhn": ({"credit_account_id": "{a2_bad_luhn}"}, "INVALID_ACCOUNT_ID"),
}


def test_batch_of_malformed_items_rejects_each_and_records_nothing(world: World) -> None:
    api = world.api
    names = dict(world.accounts, a2_bad_luhn=_bad_luhn(world.a2))
    items, reasons = [], []
    for overrides, reason in BATCH_ITEMS.values():
        item = dict(T()(world), kind="TRANSFER_KIND_TRANSFER")
        item.update({k: v.format(**names) if isinstance(v, str) else v for k, v in overrides.items()})
        items.append(item)
        reasons.append(reason)
    seqs_before = api.journal_seqs()
    reply = api.post("/v1/transfers:batch", {"transfers": items})
    assert reply.status == 200, reply.describe()
    outcomes = [(o["status"], o["reason"], o["code"]) for o in reply.body["transfers"]]
    assert outcomes == [("TRANSFER_STATUS_REJECTED", reason, 3) for reason in reasons]
    assert api.journal_seqs() == seqs_before
    assert world.snapshot() == world.balances


def test_replay_with_same_body_returns_first_outcome_and_moves_nothing(world: World) -> None:
    api = world.api
    seqs_before = api.journal_seqs()
    for headers in ({}, {"Idempotency-Key": world.replayed["id"].upper()}):
        reply = api.post("/v1/transfers", world.replayed, headers=headers)
        assert reply.status == 201, reply.describe()
        assert (reply.body["id"], reply.body["status"]) == (world.replayed["id"], "TRANSFER_STATUS_COMMITTED")
    assert api.journal_seqs() == seqs_before
    assert world.snapshot() == world.balances


@pytest.mark.xfail(
    strict=True,
    reason="product bug: transfer-id uniqueness is per shard (the debit shard's record), so a "
    "committed id reused with a body whose debit account lives on another shard commits again",
)
def test_replayed_id_with_debit_on_another_shard_is_a_conflict(world: World, cluster: LocalCluster) -> None:
    api = world.api
    c2 = api.open_on_shard(cluster, "shard-2")
    try:
        before = (api.state(world.c1), api.state(c2))
        # world.replayed moved a1 -> a2 on shard-1; same id, debit and credit on shard-2.
        reply = api.post(
            "/v1/transfers", {**world.replayed, "debit_account_id": world.c1, "credit_account_id": c2}
        )
        assert (reply.status, reply.reason) == (409, "TRANSFER_ID_CONFLICT"), reply.describe()
        assert (api.state(world.c1), api.state(c2)) == before, "the reused id moved money a second time"
    finally:
        world.balances = world.snapshot()
