"""Offline verify and the end-of-day books across a slot move, at each
durable stop of it: staged copies, fenced originals, then the release. Books
stay 0 (each account and record counted once, though two shards hold it
mid-move) and every journal replays to the stored state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from clients.reports import day
from clients.reports.journal_reader import ShardAddress
from clients.reports.ledger_scan import books, scan_shard
from ledger_node import journal, keys, slot_export, verify
from ledger_node.state import Ledger
from ledger_node.store import Store
from ledger_node.testing import NOW_MS, account, deposit
from shardbank.slots import slot_of
from shardbank.v1 import ledger_pb2

T = TypeVar("T")
MOVE_ID = "mv-000000000001"


def on_shard(path: Path, shard_id: str, work: Callable[[Store, Ledger], T]) -> T:
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
            in_doubt=loaded.in_doubt,
            fenced=loaded.fenced,
            staged=loaded.staged,
            checkpoint=loaded.checkpoint,
        )
        return work(store, ledger)
    finally:
        store.close()


def apply(path: Path, shard_id: str, *requests: object) -> list[object]:
    def run(store: Store, ledger: Ledger) -> list[object]:
        responses, writes = ledger.apply(list(requests), NOW_MS)  # type: ignore[arg-type]
        store.write(writes)
        return list(responses)

    return on_shard(path, shard_id, run)


class StoredJournal:
    """A ShardReader over a stopped shard's journal (no account pages)."""

    def __init__(self, path: Path, shard_id: str) -> None:
        self.shard = ShardAddress(shard_id, "memory")

        def read(store: Store, _ledger: Ledger) -> list[ledger_pb2.StoredJournalEntry]:
            entries = []
            for key, value in store.scan(keys.JOURNAL):
                stored_hash, entry = journal.decode(value)
                seq = keys.read_u64(key[len(keys.JOURNAL) :])
                entries.append(ledger_pb2.StoredJournalEntry(seq=seq, hash=stored_hash, entry=entry))
            return entries

        self._entries = on_shard(path, shard_id, read)

    def journal(self, from_seq: int = 1) -> Iterator[ledger_pb2.StoredJournalEntry]:
        return iter([e for e in self._entries if e.seq >= from_seq])

    def account_pages(self) -> Iterator[ledger_pb2.ListAccountsResponse]:
        return iter([])


def eod_books(tmp_path: Path) -> tuple[dict[str, int], list[str]]:
    """The end-of-day trial balance over both shards, cut after everything."""
    window = day.day_window(dt.datetime.fromtimestamp(NOW_MS / 1000, dt.UTC).date(), "UTC")
    scans = [
        scan_shard(StoredJournal(tmp_path / s, s), window, window.end_ms, compare_accounts=False)  # type: ignore[arg-type]
        for s in ("shard-1", "shard-2")
    ]
    assert all(scan.chain_ok and not scan.discrepancies for scan in scans)
    return books(scans)


def test_books_balance_and_journals_replay_at_every_stop_of_a_move(tmp_path: Path) -> None:
    source, target = tmp_path / "shard-1", tmp_path / "shard-2"
    mover, stayer = account(), account()
    while slot_of(stayer.id) == slot_of(mover.id):  # random ids share a slot 1 time in 4096
        stayer = account()
    apply(
        source,
        "shard-1",
        ledger_pb2.CreateAccountsRequest(accounts=[mover, stayer]),
        ledger_pb2.ApplyTransfersRequest(transfers=[deposit(mover.id, 1_000), deposit(stayer.id, 50)]),
    )
    apply(target, "shard-2", ledger_pb2.CreateAccountsRequest(accounts=[account()]))
    slots = [slot_of(mover.id)]
    data_dir = str(tmp_path)
    assert verify.main(["--data-dir", data_dir]) == 0

    page = on_shard(source, "shard-1", lambda s, led: slot_export.full_page(s, led, set(slots), b"", 0, 100))
    assert [a.id for a in page.accounts] == [mover.id]
    checkpoint = ledger_pb2.ImportCheckpoint(
        move_id=MOVE_ID, copy_done=True, watermark_seq=page.watermark_seq
    )
    stage = ledger_pb2.MarkSlotsRequest(
        epoch=1, move_id=MOVE_ID, slots=slots, mark=ledger_pb2.SLOT_MARK_STAGED
    )
    imported = ledger_pb2.ImportSlotsRequest(
        epoch=1,
        move_id=MOVE_ID,
        slots=slots,
        accounts=page.accounts,
        records=page.records,
        history=page.history,
        checkpoint=checkpoint,
    )
    apply(target, "shard-2", stage, imported)
    assert verify.main(["--data-dir", data_dir]) == 0  # the staged copy is not counted
    assert eod_books(tmp_path) == ({"CNY": 0}, [])

    fence = ledger_pb2.MarkSlotsRequest(
        epoch=1, move_id=MOVE_ID, slots=slots, mark=ledger_pb2.SLOT_MARK_FENCED
    )
    apply(source, "shard-1", fence)
    activate = ledger_pb2.MarkSlotsRequest(
        epoch=1, move_id=MOVE_ID, slots=slots, mark=ledger_pb2.SLOT_MARK_NONE
    )
    apply(target, "shard-2", activate)
    assert verify.main(["--data-dir", data_dir]) == 0  # the fenced original is not counted
    assert eod_books(tmp_path) == ({"CNY": 0}, [])

    plan = on_shard(
        source, "shard-1", lambda s, led: slot_export.release_plan(s, led, MOVE_ID, set(slots), 100)
    )
    assert plan.done and plan.accounts == [mover.id]
    plan.epoch = 1
    apply(source, "shard-1", plan)
    assert verify.main(["--data-dir", data_dir]) == 0
    assert eod_books(tmp_path) == ({"CNY": 0}, [])
    digest = on_shard(target, "shard-2", lambda s, led: slot_export.digest(s, led, set(slots)))
    assert (digest.accounts, digest.balances["CNY"], digest.in_doubt_legs) == (1, 1_000, 0)
    gone = on_shard(source, "shard-1", lambda s, led: slot_export.digest(s, led, set(slots)))
    assert (gone.accounts, gone.records, gone.history) == (0, 0, 0)
