"""Start-up load of a shard: the sped-up account path reads exactly what the
plain protobuf path read, every check still fires, and scans keep their bounds."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from ledger_node import keys
from ledger_node.state import AccountState, InvariantViolation, check_account_invariants
from ledger_node.store import Store
from shardbank.v1 import types_pb2

_HOLDER_FIELDS = {
    "name": "Zhāng Wěi 张伟",
    "id_type": types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID,
    "id_number": "110105199001010010",
    "phone": "+8613812345678",
    "customer_id": "cust-42",
    "country": "CN",
}
_CHANGE = types_pb2.StatusChange(
    from_status=types_pb2.ACCOUNT_STATUS_ACTIVE,
    to_status=types_pb2.ACCOUNT_STATUS_FROZEN,
    actor="ops-1",
    reason="KYC review",
    at_unix_ms=1_764_000_000_123,
)


def reference_from_proto(account: types_pb2.Account) -> AccountState:
    """`AccountState.from_proto` as it was before start-up was tuned."""
    return AccountState(
        id=account.id,
        currency=account.currency,
        type=account.type,
        status=account.status,
        overdraft_limit=account.overdraft_limit,
        created_at_ms=account.created_at_unix_ms,
        updated_at_ms=account.updated_at_unix_ms,
        holder_bytes=account.holder.SerializeToString(deterministic=True),
        balance=account.balance,
        held=account.held,
        pending_credit=account.pending_credit,
        status_history=list(account.status_history),
    )


def holders() -> Iterator[types_pb2.Holder]:
    """Every subset of the holder's fields (64), empty holder included."""
    names = list(_HOLDER_FIELDS)
    for size in range(len(names) + 1):
        for chosen in itertools.combinations(names, size):
            yield types_pb2.Holder(**{name: _HOLDER_FIELDS[name] for name in chosen})  # type: ignore[arg-type]


def accounts() -> Iterator[types_pb2.Account]:
    """Varied accounts: ids at both ends, each type and status, negative,
    zero and extreme amounts, no/one/many status changes, every holder shape."""
    amounts = [(0, 0, 0), (-5_000, 0, 10_000), (10**15, 3, 7), (-(10**15), 0, 0), (1, 1, 0)]
    blank = types_pb2.StatusChange()
    histories: list[list[types_pb2.StatusChange]] = [[], [_CHANGE], [_CHANGE, blank, _CHANGE]]
    ids = [1, 2**63 - 1, 2**63, 2**64 - 1, 4_242_424_242_424_242]
    for index, holder in enumerate(holders()):
        balance, held, pending_credit = amounts[index % len(amounts)]
        yield types_pb2.Account(
            id=ids[index % len(ids)],
            currency=["CNY", "USD", ""][index % 3],
            type=types_pb2.AccountType.values()[index % len(types_pb2.AccountType.values())],
            holder=holder,
            status=types_pb2.AccountStatus.values()[index % len(types_pb2.AccountStatus.values())],
            balance=balance,
            held=held,
            overdraft_limit=[0, 10_000, 2**62][index % 3],
            pending_credit=pending_credit,
            created_at_unix_ms=[0, 1_764_000_000_000][index % 2],
            updated_at_unix_ms=[0, 1_764_000_000_999, 2**63 - 1][index % 3],
            status_history=histories[index % len(histories)],
        )


def test_holder_has_no_map_so_plain_serialization_is_deterministic() -> None:
    # from_proto serializes the holder without `deterministic=True`, which
    # only orders map entries: sound while Holder holds no message (so no map).
    assert all(field.message_type is None for field in types_pb2.Holder.DESCRIPTOR.fields)


@pytest.mark.parametrize("account", list(accounts()), ids=lambda account: str(account.id))
def test_from_proto_of_a_stored_record_is_exactly_the_reference(account: types_pb2.Account) -> None:
    record = reference_from_proto(account).record_bytes()
    parsed = types_pb2.Account.FromString(record)
    state = AccountState.from_proto(parsed)
    expected = reference_from_proto(parsed)
    assert state == expected
    assert state.holder_bytes == expected.holder_bytes
    assert state.status_history == list(account.status_history)
    assert state.record_bytes() == record


def test_status_history_is_the_accounts_own_list() -> None:
    # An empty history must still be a fresh list: the ledger appends to it.
    first = AccountState.from_proto(types_pb2.Account(id=1))
    second = AccountState.from_proto(types_pb2.Account(id=2))
    first.status_history.append(_CHANGE)
    assert second.status_history == []


def _store(path: Path, pairs: list[tuple[bytes, bytes]]) -> Store:
    store = Store(str(path))
    store.write(pairs)
    return store


def _passes_checks(state: AccountState) -> bool:
    try:
        check_account_invariants(state)
    except InvariantViolation:
        return False
    return True


def _records() -> list[tuple[bytes, bytes]]:
    """Stored records of accounts that may be loaded: one per id, all checks passing."""
    states = {state.id: state for state in map(reference_from_proto, accounts()) if _passes_checks(state)}
    assert len(states) >= 3, "the varied accounts must give the load tests several ids"
    return [(keys.account_key(state.id), state.record_bytes()) for state in states.values()]


def test_load_reads_every_account_as_protobuf_does_and_nothing_around_them(tmp_path: Path) -> None:
    records = _records()
    # Keys sorting just before and just after the account range.
    neighbours = [(b"Z", b"x"), (b"a.", b"x"), (b"a0", b"x"), (keys.HISTORY + bytes(16), b"x")]
    store = _store(tmp_path, records + neighbours)
    try:
        loaded = store.load()
    finally:
        store.close()
    expected = {types_pb2.Account.FromString(value).id: value for _, value in records}
    assert sorted(loaded.accounts) == sorted(expected)
    for account_id, value in expected.items():
        assert loaded.accounts[account_id] == reference_from_proto(types_pb2.Account.FromString(value))


def test_load_refuses_an_account_under_another_id(tmp_path: Path) -> None:
    _, value = _records()[0]
    store = _store(tmp_path, [(keys.account_key(12345), value)])
    try:
        with pytest.raises(InvariantViolation, match="wrong key"):
            store.load()
    finally:
        store.close()


def test_load_refuses_an_account_that_breaks_an_invariant(tmp_path: Path) -> None:
    broken = types_pb2.Account(id=7, currency="CNY", type=types_pb2.ACCOUNT_TYPE_PERSONAL, balance=5, held=-1)
    store = _store(tmp_path, [(keys.account_key(7), broken.SerializeToString())])
    try:
        with pytest.raises(InvariantViolation, match="held -1 < 0"):
            store.load()
    finally:
        store.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_load_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path, enabled: bool) -> None:
    store = _store(tmp_path, [(keys.account_key(9), b"\xff not a record")])
    was_enabled = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.raises(DecodeError):
            store.load()
        assert gc.isenabled() is enabled
        store.write([(keys.account_key(9), None), *_records()])
        assert len(store.load().accounts) == len(_records())
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was_enabled else gc.disable)()
        store.close()


def test_scan_stays_inside_its_prefix_even_where_the_prefix_ends_in_0xff(tmp_path: Path) -> None:
    low = keys.HISTORY + (0xFF).to_bytes(8, "big")
    high = keys.HISTORY + (0x100).to_bytes(8, "big")
    pairs = [(low + keys.u64(seq), b"l%d" % seq) for seq in (1, 2, 3)]
    pairs += [(high + keys.u64(1), b"h1"), (low[:-1], b"shorter"), (keys.JOURNAL + keys.u64(1), b"j")]
    store = _store(tmp_path, pairs)
    try:
        assert [value for _, value in store.scan(low)] == [b"l1", b"l2", b"l3"]
        assert [value for _, value in store.scan(low, low + keys.u64(2))] == [b"l2", b"l3"]
        assert [value for _, value in store.scan(high)] == [b"h1"]
        assert list(store.scan(keys.HISTORY + b"\x01")) == []
        # A start before the prefix ends the scan at the first foreign key, as before.
        assert list(store.scan(low, keys.HISTORY)) == []
    finally:
        store.close()


def test_load_freezes_nothing_however_many_accounts_it_reads(tmp_path: Path) -> None:
    """The start-up pause and freeze belong to the node process
    (`ledger_node.__main__.start_up_collector`), not to `Store.load`, which
    `verify` and tests call too."""
    store = _store(tmp_path, _records())
    frozen_before, enabled_before = gc.get_freeze_count(), gc.isenabled()
    try:
        assert len(store.load().accounts) == len(_records())
        assert gc.get_freeze_count() == frozen_before
        assert gc.isenabled() is enabled_before
    finally:
        store.close()


def test_write_puts_a_drain_in_any_order_and_deletes(tmp_path: Path) -> None:
    """`Store.write` sorts a drain's writes by key before the batch (cheaper
    memtable inserts): what lands is the same whatever order they came in."""
    store = _store(tmp_path, [(keys.account_key(5), b"old"), (keys.journal_key(1), b"gone")])
    try:
        writes = {
            keys.journal_key(3): b"j3",
            keys.account_key(9): b"a9",
            keys.journal_key(1): None,
            keys.history_key(9, 3): b"h",
            keys.account_key(5): b"new",
            keys.META_APPLIED: keys.u64(3),
        }
        store.write(writes.items())
        for key, value in writes.items():
            assert store.get(key) == value
    finally:
        store.close()
