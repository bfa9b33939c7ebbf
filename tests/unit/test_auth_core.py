"""Pure parts of gateway authentication: tokens, permissions, masking,
the audit chain, the rate limiter."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway import convert
from gateway.auth import audit, interceptor, keys, permissions
from gateway.auth import principal as principals
from gateway.auth.principal import Principal
from gateway.auth.ratelimit import RateLimiter, retry_after_s
from shardbank.v1 import ledger_pb2, types_pb2

# Tokens.


def test_token_round_trip_and_hash() -> None:
    token = keys.new_token()
    assert len(token.key_id) == 12 and len(token.text) == keys.TOKEN_LENGTH
    assert keys.parse_token(token.text) == token
    assert keys.parse_authorization(f"Bearer {token.text}") == token
    assert keys.parse_authorization(f"bearer {token.text}") == token
    assert keys.hash_secret(token.secret) == hashlib.sha256(token.secret.encode()).hexdigest()
    key = keys.ApiKey(token.key_id, "teller", "", keys.hash_secret(token.secret), 1)
    assert keys.matches(key, token)
    assert keys.ApiKey.from_json(key.to_json()) == key


@pytest.mark.parametrize(
    "text",
    ["", "sbk_", "Basic abc", "sbk_0123456789ab_short", "sbk_XYZ456789abc_" + "a" * 43,
     "sbk_0123456789ab-" + "a" * 43, "sbk_0123456789ab_" + "a" * 42 + "!", "sbk_0123456789ab_" + "a" * 44],
)  # fmt: skip
def test_malformed_tokens_are_refused(text: str) -> None:
    assert keys.parse_token(text) is None
    assert keys.parse_authorization(f"Bearer {text}") is None


def test_wrong_secret_and_revoked_do_not_match() -> None:
    token = keys.new_token()
    other = keys.new_token()
    key = keys.ApiKey(token.key_id, "admin", "", keys.hash_secret(token.secret), 1)
    assert not keys.matches(key, keys.Token(token.key_id, other.secret))
    assert not keys.matches(keys.ApiKey(**{**key.__dict__, "revoked": True}), token)


def test_roles_and_customer_ids() -> None:
    keys.check_role("customer", "cust-1")
    keys.check_role("teller", "")
    for role, customer in (("customer", ""), ("teller", "cust-1"), ("root", ""), ("customer", "a b")):
        with pytest.raises(ValueError):
            keys.check_role(role, customer)


# Permissions.


def test_permission_table() -> None:
    assert permissions.may_call("customer", "OpenAccounts")
    assert not permissions.may_call("customer", "ChangeAccountStatus")
    assert not permissions.may_call("customer", "GetClusterInfo")
    assert not permissions.may_call("teller", "ChangeAccountStatus")
    assert permissions.may_call("risk_officer", "ChangeAccountStatus")
    assert not permissions.may_call("risk_officer", "SubmitTransfers")
    assert not permissions.may_call("auditor", "SubmitTransfers")
    assert permissions.may_call("auditor", "ListAudit")
    assert not permissions.may_call("operator", "ListAudit")
    assert permissions.may_call("operator", "GetClusterInfo")
    assert not permissions.may_call("service", "CreateApiKey")
    assert all(permissions.may_call("admin", rpc) for rpc in permissions.RPC_ROLES)
    assert not permissions.may_call("admin", "NoSuchRpc")
    assert not permissions.may_submit("customer", types_pb2.TRANSFER_KIND_DEPOSIT)
    assert permissions.may_submit("customer", types_pb2.TRANSFER_KIND_PAYMENT)
    assert not permissions.may_submit("teller", types_pb2.TRANSFER_KIND_TRANSFER)
    assert permissions.may_submit("teller", types_pb2.TRANSFER_KIND_WITHDRAWAL)
    assert permissions.may_change_status("risk_officer", ledger_pb2.STATUS_ACTION_FREEZE)
    assert not permissions.may_change_status("risk_officer", ledger_pb2.STATUS_ACTION_CLOSE)
    assert permissions.rpc_name("/shardbank.v1.Bank/GetAccount") == "GetAccount"
    assert permissions.rpc_name("/grpc.health.v1.Health/Check") is None


def test_service_and_admin_keys_get_the_high_limit() -> None:
    assert permissions.RATE_LIMITS["service"].requests_per_second >= 10_000
    assert permissions.RATE_LIMITS["admin"].requests_per_second >= 10_000
    assert permissions.RATE_LIMITS["customer"].requests_per_second == permissions.REQUESTS_PER_SECOND_PER_KEY


# Masking.


def _account() -> types_pb2.Account:
    holder = types_pb2.Holder(name="Li Lei", id_number="11010519491231002X", phone="+8613812345678")
    return types_pb2.Account(id=1, holder=holder)


@pytest.mark.parametrize("role", permissions.ROLES)
def test_masking_by_role(role: str) -> None:
    bound = principals.bind(Principal("0123456789ab", role))
    try:
        shown = convert.public_account(_account())
    finally:
        principals.unbind(bound)
    if role in ("teller", "auditor", "admin", "service"):
        assert shown.holder.id_number == "11010519491231002X"
        assert shown.holder.phone == "+8613812345678"
    else:
        assert shown.holder.id_number == "110***********002X"
        assert shown.holder.phone == "+86 138****5678"
        assert shown.holder.name == "Li Lei"


def test_masking_explicit() -> None:
    assert convert.public_account(_account(), reveal_identity=False).holder.phone.startswith("+86 138*")
    assert convert.public_account(_account(), reveal_identity=True) == _account()


# Audit chain.


def _entries(count: int) -> list[audit.Entry]:
    return [audit.Entry("0123456789ab", "admin", "account.freeze", str(i), 0, "") for i in range(count)]


def test_chain_verifies_and_links() -> None:
    first = audit.chain(_entries(3), 0, audit.GENESIS_HASH, 1000)
    second = audit.chain(_entries(2), 3, first[-1]["hash"], 2000)
    records = first + second
    head = {"seq": 5, "hash": records[-1]["hash"]}
    assert audit.verify_records(records, head) == 5
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev_hash"] == audit.GENESIS_HASH


@pytest.mark.parametrize(
    ("index", "field", "value"),
    [(1, "target", "999"), (2, "code", 7), (0, "actor_role", "customer"), (3, "prev_hash", "0" * 64)],
)
def test_tampering_breaks_the_chain(index: int, field: str, value: Any) -> None:
    records = audit.chain(_entries(4), 0, audit.GENESIS_HASH, 1000)
    records[index][field] = value
    with pytest.raises(audit.AuditChainBroken) as broken:
        audit.verify_records(records)
    assert broken.value.seq == index + 1


def test_removed_reordered_or_rehashed_records_break_the_chain() -> None:
    records = audit.chain(_entries(4), 0, audit.GENESIS_HASH, 1000)
    with pytest.raises(audit.AuditChainBroken):
        audit.verify_records(records[:1] + records[2:])
    with pytest.raises(audit.AuditChainBroken):
        audit.verify_records([records[1], records[0], *records[2:]])
    forged = dict(records[1], target="999")
    forged["hash"] = audit.record_hash(forged)  # rehashing one record breaks the next link
    with pytest.raises(audit.AuditChainBroken) as broken:
        audit.verify_records([records[0], forged, *records[2:]])
    assert broken.value.seq == 3
    with pytest.raises(audit.AuditChainBroken):  # truncated tail: the head names a later record
        audit.verify_records(records[:3], {"seq": 4, "hash": records[3]["hash"]})


# Rate limiter.


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = permissions.RateLimit(requests_per_second=2.0, burst=3)
    assert [limiter.take("k", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait_s = limiter.take("k", limit)
    assert wait_s == pytest.approx(0.5)
    assert limiter.take("other", limit) == 0.0  # per key
    now[0] += 0.5
    assert limiter.take("k", limit) == 0.0
    assert limiter.take("k", limit) > 0
    now[0] += 100
    assert [limiter.take("k", limit) for _ in range(3)] == [0.0, 0.0, 0.0]  # refills to the burst only
    assert limiter.take("k", limit) > 0
    assert retry_after_s(0.01) == 1 and retry_after_s(1.2) == 2


def test_a_shared_call_costs_one_token_per_request_it_carries() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = permissions.RateLimit(requests_per_second=2.0, burst=5)
    assert limiter.take("k", limit, cost=3) == 0.0
    assert limiter.take("k", limit, cost=3) == pytest.approx(0.5)  # 2 left, 3 needed: nothing taken
    assert limiter.take("k", limit, cost=2) == 0.0
    assert limiter.take("k", limit, cost=0) > 0  # at least one token, whatever the count says
    now[0] += 100
    assert limiter.take("k", limit, cost=50) == 0.0  # more than the burst costs the burst: never stuck
    assert limiter.take("k", limit) > 0


def test_coalesced_request_count_from_metadata() -> None:
    key = interceptor.COALESCED_REQUESTS_METADATA
    assert interceptor.coalesced_requests(None) == 1
    assert interceptor.coalesced_requests([(key, "17")]) == 17
    assert interceptor.coalesced_requests([(key, "0")]) == 1
    for bad in ("-3", "1.5", "", "x", "9" * 7):
        assert interceptor.coalesced_requests([(key, bad)]) == 1
    assert interceptor.coalesced_requests([(key, "2"), (key, "3")]) == 1
