"""Hand-built record bytes are exactly what the generated classes serialize."""

from __future__ import annotations

import random
import re

import pytest

from ledger_node import journal, keys, records
from ledger_node.state import AccountState, InvariantViolation, check_account_invariants
from ledger_node.testing import MemoryLedger, account, deposit, move, transfer, withdrawal
from shardbank.v1 import ledger_pb2, types_pb2

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def interesting_ints(rng: random.Random) -> list[int]:
    return [
        0,
        1,
        -1,
        127,
        128,
        -128,
        300,
        2**62,
        -(2**62),
        INT64_MAX,
        INT64_MIN,
        rng.randint(-(10**15), 10**15),
    ]


@pytest.mark.parametrize("seed", range(20))
def test_varint_matches_the_generated_encoding(seed: int) -> None:
    rng = random.Random(seed)
    for value in interesting_ints(rng):
        expected = types_pb2.Posting(balance_delta=value).SerializeToString()
        assert records.varint(value) == expected[1:] if value else expected == b""


def test_varint_at_every_table_boundary() -> None:
    """Each branch of the table-driven encoder, at and around its edges
    (2**7, 2**14, 2**28, 2**42, 2**56 and the negative fast path down to -2**42)."""
    edges = [2**bits + step for bits in (7, 14, 28, 42, 56, 63) for step in (-2, -1, 0, 1)]
    values = {value for edge in edges for value in (edge, -edge)} | {0, 1, -1, INT64_MIN, INT64_MAX}
    for value in sorted(v for v in values if INT64_MIN <= v <= INT64_MAX):
        expected = types_pb2.Posting(balance_delta=value).SerializeToString()
        assert records.varint(value) == (expected[1:] if value else b"\x00"), value


def test_record_messages_have_no_map_field() -> None:
    """The node serializes Transfer, Leg and StatusChange without
    `deterministic=True` (its keyword parsing cost ~0.6 us a call): that is the
    same bytes only while no message inside them has a map field, whose
    entries are the one thing deterministic serialization orders."""

    def has_map(descriptor: object, seen: set[str]) -> bool:
        full_name = descriptor.full_name  # type: ignore[attr-defined]
        if full_name in seen:
            return False
        seen.add(full_name)
        for one in descriptor.fields:  # type: ignore[attr-defined]
            if one.message_type is None:
                continue
            if one.message_type.GetOptions().map_entry or has_map(one.message_type, seen):
                return True
        return False

    for message_class in (types_pb2.Transfer, ledger_pb2.Leg, types_pb2.StatusChange, types_pb2.Account):
        assert not has_map(message_class.DESCRIPTOR, set()), message_class


def _random_transfer(rng: random.Random) -> types_pb2.Transfer:
    """A Transfer with each field either unset (zero) or a random value."""

    def maybe(value: object) -> object:
        return value if rng.random() < 0.6 else None

    fields = {
        "id": maybe(str(move(1, 2, 1).id)),
        "kind": maybe(rng.randint(1, 4)),
        "debit_account_id": maybe(rng.choice([1156, 10**15 + rng.randint(0, 10**14), 2**64 - 1])),
        "credit_account_id": maybe(rng.choice([2156, 10**15 + rng.randint(0, 10**14)])),
        "amount": maybe(rng.randint(1, 10**15)),
        "currency": maybe(rng.choice(["CNY", "USD", "JPY"])),
        "memo": maybe(rng.choice(["rent", "é" * 70, "x" * 200])),
        "reference": maybe("INV-" + str(rng.randint(0, 10**9))),
        "status": maybe(rng.randint(1, 4)),
        "code": maybe(rng.randint(1, 16)),
        "reason": maybe("INSUFFICIENT_FUNDS"),
        "message": maybe("available balance is too low"),
        "review_deadline_unix_ms": maybe(1_760_000_000_000 + rng.randint(0, 10**9)),
    }
    transfer = types_pb2.Transfer(**{name: value for name, value in fields.items() if value is not None})
    at = maybe(1_760_000_000_000 + rng.randint(0, 10**6))
    if at is not None:
        transfer.created_at_unix_ms = transfer.updated_at_unix_ms = at  # type: ignore[assignment]
    transfer.cross_shard = rng.random() < 0.5
    if rng.random() < 0.5:
        transfer.risk.decision = rng.choice([0, 1, 2, 3])  # type: ignore[assignment]
        if rng.random() < 0.5:
            transfer.risk.score = rng.randint(0, 500)
            transfer.risk.rules.extend(["velocity", "new_payee"])
    return transfer


@pytest.mark.parametrize("seed", range(200))
def test_transfer_bytes_match_the_generated_encoding(seed: int) -> None:
    given = _random_transfer(random.Random(seed))
    risk = given.risk.SerializeToString() if given.HasField("risk") else None
    got = records.transfer(
        given.id,
        given.kind,
        given.debit_account_id,
        given.credit_account_id,
        given.amount,
        given.currency,
        given.memo,
        given.reference,
        given.status,
        given.code,
        given.reason,
        given.message,
        given.created_at_unix_ms,
        given.cross_shard,
        risk,
        given.review_deadline_unix_ms,
    )
    assert got == given.SerializeToString(deterministic=True)


def test_answers_parse_to_the_messages_they_frame() -> None:
    rng = random.Random(7)
    transfers = [_random_transfer(rng) for _ in range(50)] + [types_pb2.Transfer()]
    framed = records.answers([t.SerializeToString() for t in transfers])
    assert list(ledger_pb2.TransfersResponse.FromString(framed).transfers) == transfers
    legs = [ledger_pb2.Leg(transfer=t, role=1, state=2, code=9, reason="X") for t in transfers[:5]]
    framed = records.answers([leg.SerializeToString() for leg in legs])
    assert list(ledger_pb2.LegsResponse.FromString(framed).legs) == legs
    assert records.answers([]) == b""


@pytest.mark.parametrize("seed", range(20))
def test_posting_leg_history_and_entry_bytes(seed: int) -> None:
    rng = random.Random(seed)
    body = transfer(
        types_pb2.TRANSFER_KIND_TRANSFER,
        10**15 + rng.randint(0, 10**14),
        rng.randint(1000, 9999),
        5,
        memo="é",
    )
    body.status = types_pb2.TRANSFER_STATUS_PENDING
    body_bytes = body.SerializeToString(deterministic=True)
    ints = interesting_ints(rng)
    for account_id in (0, 1156, 2**64 - 1):
        for delta in ints[:4] + ints[-3:]:
            want = types_pb2.Posting(account_id=account_id, balance_delta=delta, held_delta=delta // 3)
            assert records.posting(account_id, delta, held_delta=delta // 3) == want.SerializeToString(
                deterministic=True
            )
    for role, state, epoch, at in ((0, 2, 0, 0), (1, 1, 7, 1_760_000_000_123), (2, 3, 2**40, 0)):
        want_leg = ledger_pb2.Leg(
            transfer=body,
            role=role,
            state=state,
            epoch=epoch,
            prepared_at_unix_ms=at,  # type: ignore[arg-type]
        )
        assert records.leg(body_bytes, role, state, epoch, at) == want_leg.SerializeToString(
            deterministic=True
        )
    for delta in ints:
        after, seq = rng.randint(-(2**62), 2**62), rng.randint(0, 2**40)
        want_history = types_pb2.HistoryEntry(
            transfer=body, balance_delta=delta, balance_after=after, journal_seq=seq
        )
        assert records.history(body_bytes, delta, after, seq) == want_history.SerializeToString(
            deterministic=True
        )
    postings = [
        types_pb2.Posting(account_id=11, balance_delta=-5),
        types_pb2.Posting(account_id=12, balance_delta=5),
    ]
    for kind, epoch, role in ((4, 0, 0), (5, 9, 1), (7, 3, 2), (8, 0, 0)):
        seq = rng.randint(1, 2**40)
        want_entry = types_pb2.JournalEntry(
            seq=seq,
            kind=kind,  # type: ignore[arg-type]
            at_unix_ms=1_760_000_000_000,
            transfer_id=body.id,
            postings=postings,
            epoch=epoch,
            role=role,  # type: ignore[arg-type]
            transfer=body,
        )
        got = records.transfer_entry(
            seq,
            kind,  # type: ignore[arg-type]
            1_760_000_000_000,
            body.id,
            [p.SerializeToString(deterministic=True) for p in postings],
            body_bytes,
            epoch,
            role,
        )
        assert got == want_entry.SerializeToString(deterministic=True)


@pytest.mark.parametrize("seed", range(10))
def test_posted_transfer_is_entry_and_two_histories(seed: int) -> None:
    rng = random.Random(seed)
    body = move(10**15 + 7, 10**15 + 9, rng.randint(1, 10**15)).SerializeToString(deterministic=True)
    transfer_id = types_pb2.Transfer.FromString(body).id
    amount, seq, at = rng.randint(1, 10**15), rng.randint(1, 2**40), 1_760_000_000_000 + seed
    debit_after, credit_after = rng.choice([0, -amount, 10**12]), rng.choice([0, amount, 2**62])
    entry, debit, credit = records.posted_transfer(
        seq, at, transfer_id, body, amount, 1156, debit_after, 10**15 + 9, credit_after
    )
    postings = [records.posting(1156, -amount), records.posting(10**15 + 9, amount)]
    assert entry == records.transfer_entry(
        seq, types_pb2.JOURNAL_KIND_TRANSFER_POSTED, at, transfer_id, postings, body
    )
    assert debit == records.history(body, -amount, debit_after, seq)
    assert credit == records.history(body, amount, credit_after, seq)


@pytest.mark.parametrize("seed", range(10))
def test_account_record_bytes(seed: int) -> None:
    rng = random.Random(seed)
    given = account(account_type=types_pb2.ACCOUNT_TYPE_BUSINESS, overdraft_limit=rng.choice([0, 500]))
    state = AccountState.from_proto(given)
    state.balance = rng.choice([0, -7, 10**12])
    state.held = rng.choice([0, 3])
    state.pending_credit = rng.choice([0, 9])
    state.created_at_ms, state.updated_at_ms = 1_760_000_000_000, rng.choice([0, 1_760_000_000_999])
    state.status = rng.choice([0, 1, 2, 3])  # type: ignore[assignment]
    if seed % 2:
        state.status_history.append(
            types_pb2.StatusChange(from_status=1, to_status=2, actor="op", reason="r")
        )
    want = state.to_proto(with_available=False).SerializeToString(deterministic=True)
    assert state.record_bytes() == want
    state.holder_bytes = types_pb2.Holder(name="Han Meimei").SerializeToString(deterministic=True)
    assert state.record_bytes() == state.to_proto(with_available=False).SerializeToString(deterministic=True)
    cash = AccountState(
        id=1156, currency="CNY", type=3, status=1, overdraft_limit=0, created_at_ms=1, updated_at_ms=2
    )
    assert cash.record_bytes() == cash.to_proto(with_available=False).SerializeToString(deterministic=True)


def test_every_record_a_ledger_writes_reserializes_to_the_same_bytes() -> None:
    """Parse + deterministic re-serialize of each stored value gives it back."""
    node = MemoryLedger()
    a, b, c = account(), account(), account(account_type=types_pb2.ACCOUNT_TYPE_BUSINESS)
    node.open(a, b, c)
    node.transfers(
        deposit(a.id, 1_000), move(a.id, b.id, 300), withdrawal(b.id, 5_000), withdrawal(b.id, 100)
    )
    cross = move(a.id, c.id, 50)
    node.legs(ledger_pb2.PrepareRequest(epoch=3, items=[ledger_pb2.PrepareItem(transfer=cross, role=1)]))
    node.legs(ledger_pb2.PrepareRequest(epoch=3, items=[ledger_pb2.PrepareItem(transfer=cross, role=2)]))
    node.legs(
        ledger_pb2.DecideRequest(epoch=3, items=[ledger_pb2.DecideItem(transfer_id=cross.id, decision=1)])
    )
    node.legs(
        ledger_pb2.FinishRequest(epoch=3, items=[ledger_pb2.DecideItem(transfer_id=cross.id, decision=1)])
    )
    refused = move(a.id, c.id, 10**9)
    node.legs(ledger_pb2.PrepareRequest(epoch=3, items=[ledger_pb2.PrepareItem(transfer=refused, role=1)]))
    node.legs(
        ledger_pb2.DecideRequest(
            epoch=4, items=[ledger_pb2.DecideItem(transfer_id=move(1, 2, 1).id, decision=2)]
        )
    )
    parsers = {
        keys.ACCOUNT: types_pb2.Account,
        keys.TRANSFER: ledger_pb2.Leg,
        keys.LEG: ledger_pb2.Leg,
        keys.HISTORY: types_pb2.HistoryEntry,
    }
    seen = set()
    for key, value in node.kv.items():
        prefix = key[:2]
        if prefix == keys.JOURNAL:
            value = journal.decode(value)[1]
            message_class: type = types_pb2.JournalEntry
        elif prefix in parsers:
            message_class = parsers[prefix]
        else:
            continue
        seen.add(prefix)
        assert message_class.FromString(value).SerializeToString(deterministic=True) == value, key
    assert seen == {keys.ACCOUNT, keys.TRANSFER, keys.LEG, keys.HISTORY, keys.JOURNAL}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"held": -1}, "held -1 < 0"),
        ({"pending_credit": -1}, "pending_credit -1 < 0"),
        ({"balance": 2**62 + 1}, "balance out of range"),
        ({"balance": 2**62, "pending_credit": 1}, "balance + pending_credit out of range"),
        ({"balance": 5, "held": 6}, "available -1 < 0"),
        ({"status": 3, "balance": 1}, "closed with money on it"),
    ],
)
def test_fast_invariant_check_still_names_the_broken_rule(change: dict[str, int], named: str) -> None:
    state = AccountState.from_proto(account())
    check_account_invariants(state)
    for name, value in change.items():
        setattr(state, name, value)
    with pytest.raises(InvariantViolation, match=re.escape(named)):
        check_account_invariants(state)


def test_cash_account_may_not_hold() -> None:
    cash = AccountState(
        id=1156, currency="CNY", type=3, status=1, overdraft_limit=0, created_at_ms=1, updated_at_ms=1
    )
    cash.balance = -(10**9)
    check_account_invariants(cash)
    cash.held = 1
    with pytest.raises(InvariantViolation, match="a cash account holds 1"):
        check_account_invariants(cash)


def test_account_record_cache_follows_every_field_it_was_built_from() -> None:
    """`AccountState.record_bytes` caches the rarely changing parts (holder,
    status, overdraft limit, creation time): after a change of any of them,
    or of the money fields and status history around them, the record is
    still exactly the message's serialization."""
    state = AccountState.from_proto(account(overdraft_limit=500))
    state.created_at_ms = state.updated_at_ms = 1_760_000_000_000

    def want() -> bytes:
        return state.to_proto(with_available=False).SerializeToString(deterministic=True)

    changes: list[tuple[str, object]] = [
        ("balance", 10**12),
        ("status", types_pb2.ACCOUNT_STATUS_FROZEN),
        ("overdraft_limit", 0),
        ("held", 3),
        ("overdraft_limit", 2**40),
        ("pending_credit", 9),
        ("created_at_ms", 1_700_000_000_000),
        ("holder_bytes", types_pb2.Holder(name="Han Meimei").SerializeToString()),
        ("status", types_pb2.ACCOUNT_STATUS_ACTIVE),
        ("balance", -7),
        ("updated_at_ms", 1_760_000_000_999),
    ]
    assert state.record_bytes() == want()
    for name, value in changes:
        setattr(state, name, value)
        assert state.record_bytes() == want(), name
    state.status_history.append(types_pb2.StatusChange(from_status=1, to_status=2, actor="op", reason="r"))
    assert state.record_bytes() == want()
