"""Reading a live shard for reports: its journal and stored accounts in
pages (LedgerNode.ReadJournal / ListAccounts) and its in-doubt legs.

Calls go straight to the nodes, signed with the cluster secret
(`shardbank.service_auth`), so a report reads the ledger itself rather than
what the gateway makes of it; the gateway is only asked which shards exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from shardbank import limits, service_auth
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc

# Deadline of one page: a page is at most 1000 entries read from RocksDB.
PAGE_DEADLINE_S = 30.0
# In-doubt legs one report lists per shard; more than this is its own alarm.
IN_DOUBT_LIMIT = 1000
COMPONENT_ID = "report"


@dataclass(frozen=True)
class ShardAddress:
    shard_id: str
    address: str


class ShardReader:
    """One node's read side over a signed channel; use as a context manager."""

    def __init__(self, shard: ShardAddress, secret: bytes) -> None:
        self.shard = shard
        self._channel = service_auth.signed_channel(shard.address, secret, COMPONENT_ID)
        self._stub = ledger_pb2_grpc.LedgerNodeStub(self._channel)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def journal_page(self, from_seq: int) -> ledger_pb2.ReadJournalResponse:
        request = ledger_pb2.ReadJournalRequest(from_seq=from_seq, limit=limits.JOURNAL_PAGE_ENTRIES_MAX)
        page: ledger_pb2.ReadJournalResponse = self._stub.ReadJournal(request, timeout=PAGE_DEADLINE_S)
        return page

    def journal(self, from_seq: int = 1) -> Iterator[ledger_pb2.StoredJournalEntry]:
        """Entries from `from_seq` to the head as it is when the last page is read."""
        while True:
            page = self.journal_page(from_seq)
            yield from page.entries
            if not page.entries:
                return
            from_seq = page.entries[-1].seq + 1

    def account_pages(self) -> Iterator[ledger_pb2.ListAccountsResponse]:
        after_id = 0
        while True:
            request = ledger_pb2.ListAccountsRequest(after_id=after_id, limit=limits.ACCOUNTS_PAGE_SIZE_MAX)
            page: ledger_pb2.ListAccountsResponse = self._stub.ListAccounts(request, timeout=PAGE_DEADLINE_S)
            yield page
            if page.done or not page.accounts:
                return
            after_id = page.accounts[-1].id

    def in_doubt(self, older_than_ms: int) -> list[ledger_pb2.Leg]:
        request = ledger_pb2.ListInDoubtRequest(older_than_ms=older_than_ms, limit=IN_DOUBT_LIMIT)
        response: ledger_pb2.LegsResponse = self._stub.ListInDoubt(request, timeout=PAGE_DEADLINE_S)
        return list(response.legs)


def unreachable(shard: ShardAddress, error: grpc.RpcError) -> str:
    """One discrepancy line for a shard the report could not read."""
    code = error.code() if hasattr(error, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    return f"{shard.shard_id} unreadable at {shard.address}: {name}"
