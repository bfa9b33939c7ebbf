"""Offline verify over real RocksDB shards written through the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ledger_node import keys, verify
from ledger_node.state import Ledger, Response
from ledger_node.store import Store
from ledger_node.testing import NOW_MS, account, deposit, move, withdrawal
from shardbank.v1 import ledger_pb2, types_pb2


def write_shard(path: Path, shard_id: str, *requests: object) -> list[Response]:
    """Apply requests through a Ledger over a real Store, then close it."""
    store = Store(str(path))
    try:
        loaded = store.load()
        ledger = Ledger(
            shard_id,
            store.get,
            lambda _account_id: True,
            accounts=loaded.accounts,
            journal_seq=loaded.journal_seq,
            journal_hash=loaded.journal_hash,
            max_epoch=loaded.max_epoch,
            in_doubt=loaded.in_doubt,
        )
        responses, writes = ledger.apply(list(requests), NOW_MS)  # type: ignore[arg-type]
        store.write(writes)
        return responses
    finally:
        store.close()


def rewrite(path: Path, key: bytes, change: Callable[[bytes], bytes]) -> None:
    store = Store(str(path))
    try:
        value = store.get(key)
        assert value is not None
        store.write([(key, change(value))])
    finally:
        store.close()


@pytest.fixture
def shard(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "shard-1"
    a, b = account(), account()
    write_shard(
        path,
        "shard-1",
        ledger_pb2.CreateAccountsRequest(accounts=[a, b]),
        ledger_pb2.ApplyTransfersRequest(
            transfers=[
                deposit(a.id, 1_000),
                move(a.id, b.id, 300),
                withdrawal(b.id, 5_000),
                withdrawal(b.id, 100),
            ]
        ),
    )
    return path, a.id


def test_untouched_shard_verifies(shard: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = shard
    assert verify.main(["--data-dir", str(path)]) == 0
    out = capsys.readouterr().out
    assert "shard-1: ok" in out and "books: CNY sums to 0" in out and "verify: OK" in out


def test_flipped_byte_in_a_journal_value_is_named(
    shard: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = shard
    rewrite(path, keys.journal_key(4), lambda v: v[:40] + bytes([v[40] ^ 0x01]) + v[41:])
    assert verify.main(["--data-dir", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "shard-1" in out and "journal seq 4" in out and "hash chain broken" in out


def test_altered_balance_is_named(shard: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    path, account_id = shard

    def richer(value: bytes) -> bytes:
        stored = types_pb2.Account.FromString(value)
        stored.balance += 1
        return stored.SerializeToString()

    rewrite(path, keys.account_key(account_id), richer)
    assert verify.main(["--data-dir", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"account {account_id}" in out and "journal replay" in out


def test_altered_transfer_record_is_named(shard: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = shard
    store = Store(str(path), read_only=True)
    key = next(k for k, _ in store.scan(keys.TRANSFER))
    store.close()

    def flipped(value: bytes) -> bytes:
        record = ledger_pb2.Leg.FromString(value)
        record.state = ledger_pb2.LEG_STATE_ABORTED if record.state != ledger_pb2.LEG_STATE_ABORTED else 2
        return record.SerializeToString()

    rewrite(path, key, flipped)
    with pytest.raises(verify.Corrupt, match="journal says"):
        verify.verify_shard(path, "shard-1")


def test_cluster_books_count_committed_transfers_whose_credit_is_still_prepared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = account(), account()
    item = move(a.id, b.id, 400)
    write_shard(
        tmp_path / "shard-1",
        "shard-1",
        ledger_pb2.CreateAccountsRequest(accounts=[a]),
        ledger_pb2.ApplyTransfersRequest(transfers=[deposit(a.id, 1_000)]),
        ledger_pb2.PrepareRequest(epoch=1, items=[ledger_pb2.PrepareItem(transfer=item, role=1)]),
        ledger_pb2.DecideRequest(epoch=1, items=[ledger_pb2.DecideItem(transfer_id=item.id, decision=1)]),
    )
    write_shard(
        tmp_path / "shard-2",
        "shard-2",
        ledger_pb2.CreateAccountsRequest(accounts=[b]),
        ledger_pb2.PrepareRequest(epoch=1, items=[ledger_pb2.PrepareItem(transfer=item, role=2)]),
    )
    assert verify.main(["--data-dir", str(tmp_path)]) == 0
    assert "books: CNY sums to 0" in capsys.readouterr().out
    # A shard on its own cannot balance with cross-shard transfers: books skipped, not failed.
    assert verify.main(["--data-dir", str(tmp_path / "shard-2")]) == 0
    write_shard(
        tmp_path / "shard-2",
        "shard-2",
        ledger_pb2.FinishRequest(epoch=1, items=[ledger_pb2.DecideItem(transfer_id=item.id, decision=1)]),
    )
    assert verify.main(["--data-dir", str(tmp_path)]) == 0
    # A commit at the record holder with no credit leg anywhere: money left
    # shard-1 and arrived nowhere. Each shard is consistent; the books are not.
    lost = move(a.id, b.id, 50)
    write_shard(
        tmp_path / "shard-1",
        "shard-1",
        ledger_pb2.PrepareRequest(epoch=2, items=[ledger_pb2.PrepareItem(transfer=lost, role=1)]),
        ledger_pb2.DecideRequest(epoch=2, items=[ledger_pb2.DecideItem(transfer_id=lost.id, decision=1)]),
    )
    capsys.readouterr()
    assert verify.main(["--data-dir", str(tmp_path)]) == 1
    assert "books CNY: balances sum to -50" in capsys.readouterr().out


def test_missing_data_dir_is_a_usage_error(tmp_path: Path) -> None:
    assert verify.main(["--data-dir", str(tmp_path / "nothing")]) == 2
