"""The node's report read side (ReadJournal, ListAccounts) on an in-process
node, and `ledger_scan` over the pages it returns, untouched and tampered."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.reports import day
from clients.reports.journal_reader import ShardAddress
from clients.reports.ledger_scan import ShardScan, books, scan_shard
from ledger_node.server import create_server
from ledger_node.testing import account, deposit, move, withdrawal
from shardbank import errors, limits
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

DEADLINE_S = 10.0


class PagesReader:
    """A ShardReader over pages already read, in the given page sizes."""

    def __init__(
        self, entries: list[ledger_pb2.StoredJournalEntry], pages: list[ledger_pb2.ListAccountsResponse]
    ):
        self.shard = ShardAddress("shard-1", "memory")
        self._entries, self._pages = entries, pages

    def journal(self, from_seq: int = 1) -> Iterator[ledger_pb2.StoredJournalEntry]:
        return iter([e for e in self._entries if e.seq >= from_seq])

    def account_pages(self) -> Iterator[ledger_pb2.ListAccountsResponse]:
        return iter(self._pages)


async def _read_all(tmp_path: Path) -> dict[str, Any]:
    node = await create_server("shard-1", "127.0.0.1:0", str(tmp_path / "shard-1"), "")
    await node.start()
    alice, bob, shop = account(), account(), account(types_pb2.ACCOUNT_TYPE_BUSINESS)
    try:
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = ledger_pb2_grpc.LedgerNodeStub(channel)
            await stub.CreateAccounts(
                ledger_pb2.CreateAccountsRequest(accounts=[alice, bob, shop]), timeout=DEADLINE_S
            )
            payment = move(alice.id, shop.id, 300)
            payment.kind = types_pb2.TRANSFER_KIND_PAYMENT
            items = [
                deposit(alice.id, 10_000),
                move(alice.id, bob.id, 2_500),
                payment,
                withdrawal(bob.id, 500),
            ]
            await stub.ApplyTransfers(ledger_pb2.ApplyTransfersRequest(transfers=items), timeout=DEADLINE_S)
            entries: list[ledger_pb2.StoredJournalEntry] = []
            from_seq = 1
            while True:
                page = await stub.ReadJournal(
                    ledger_pb2.ReadJournalRequest(from_seq=from_seq, limit=3), timeout=DEADLINE_S
                )
                if not page.entries:
                    break
                assert len(page.entries) <= 3 and page.head_seq == node.ledger.journal_seq
                entries.extend(page.entries)
                from_seq = page.entries[-1].seq + 1
            pages, after = [], 0
            while True:
                listed = await stub.ListAccounts(
                    ledger_pb2.ListAccountsRequest(after_id=after, limit=2), timeout=DEADLINE_S
                )
                pages.append(listed)
                if listed.done:
                    break
                after = listed.accounts[-1].id
            too_big = []
            for request in (
                stub.ReadJournal(ledger_pb2.ReadJournalRequest(limit=limits.JOURNAL_PAGE_ENTRIES_MAX + 1)),
                stub.ListAccounts(ledger_pb2.ListAccountsRequest(limit=limits.ACCOUNTS_PAGE_SIZE_MAX + 1)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await request
                too_big.append(errors.from_rpc_error(caught.value))
        return {"entries": entries, "pages": pages, "too_big": too_big, "ids": (alice.id, bob.id, shop.id)}
    finally:
        await node.stop()


@pytest.fixture(scope="module")
def read(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return asyncio.run(_read_all(tmp_path_factory.mktemp("node")))


def _scan(
    entries: list[ledger_pb2.StoredJournalEntry], pages: list[ledger_pb2.ListAccountsResponse]
) -> ShardScan:
    window = day.day_window(day.today("UTC"), "UTC")
    return scan_shard(PagesReader(entries, pages), window, window.end_ms, compare_accounts=True)  # type: ignore[arg-type]


def test_pages_are_bounded_and_cover_everything(read: dict[str, Any]) -> None:
    entries = read["entries"]
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    listed = [a.id for page in read["pages"] for a in page.accounts]
    assert listed == sorted(listed) and set(read["ids"]) <= set(listed)
    assert len(listed) == 4  # three customers and the CNY cash account
    assert [(e.code, e.reason) for e in read["too_big"]] == [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_PAGE_SIZE)
    ] * 2


def test_scan_of_an_untouched_shard_balances_and_finds_the_day(read: dict[str, Any]) -> None:
    scan = _scan(read["entries"], read["pages"])

    assert scan.discrepancies == [] and scan.chain_ok
    assert scan.accounts_compared == 4
    kinds = sorted((t.kind_name, t.amount) for t in scan.transfers)
    assert kinds == [("DEPOSIT", 10_000), ("PAYMENT", 300), ("TRANSFER", 2_500), ("WITHDRAWAL", 500)]
    assert books([scan]) == ({"CNY": 0}, [])
    assert scan.directory[read["ids"][2]].account_type == types_pb2.ACCOUNT_TYPE_BUSINESS


def test_scan_names_a_stored_balance_that_differs_from_the_journal(read: dict[str, Any]) -> None:
    pages = [ledger_pb2.ListAccountsResponse.FromString(p.SerializeToString()) for p in read["pages"]]
    pages[0].accounts[0].balance += 1

    scan = _scan(read["entries"], pages)

    assert len(scan.discrepancies) == 1
    assert scan.discrepancies[0].startswith(f"shard-1 account {pages[0].accounts[0].id}: stored")


def test_scan_names_a_missing_account_record(read: dict[str, Any]) -> None:
    pages = [ledger_pb2.ListAccountsResponse.FromString(p.SerializeToString()) for p in read["pages"]]
    gone = pages[0].accounts[1].id
    del pages[0].accounts[1]

    scan = _scan(read["entries"], pages)

    assert scan.discrepancies == [f"shard-1 account {gone}: opened in the journal but its record is missing"]


def test_scan_names_an_altered_journal_entry(read: dict[str, Any]) -> None:
    entries = [ledger_pb2.StoredJournalEntry.FromString(e.SerializeToString()) for e in read["entries"]]
    changed = bytearray(entries[4].entry)
    changed[-1] ^= 1
    entries[4].entry = bytes(changed)

    scan = _scan(entries, read["pages"])

    assert not scan.chain_ok
    assert scan.discrepancies == [
        "shard-1 journal seq 5 (key j/0000000000000005): hash chain broken: the entry or its hash was altered"
    ]


def test_the_cut_leaves_out_later_entries(read: dict[str, Any]) -> None:
    window = day.day_window(dt.date(2000, 1, 1), "UTC")  # everything happened after this day

    scan = scan_shard(PagesReader(read["entries"], []), window, window.end_ms, compare_accounts=False)  # type: ignore[arg-type]

    assert scan.transfers == []
    assert dict(scan.cut.balances) == {}
