"""GetActivity: the risk engine's view of this shard's accounts.

Glue between the ledger (accounts in memory, history index in RocksDB) and
`shardbank.activity` (pure sliding windows): loads an account's postings
from the history index, keeps a customer -> accounts index, and turns
summaries into `ActivitySummary` messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from ledger_node import keys
from ledger_node.state import CUSTOMER_ID_LENGTH_MAX, AccountState
from ledger_node.store import Store
from shardbank import activity, errors, limits
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2, types_pb2

# The band and the dormancy period a caller may ask for: beyond a year
# nothing in memory could answer it anyway.
DORMANCY_MS_MAX = 366 * 86_400_000


def history_events(store: Store, account_id: int) -> Iterator[activity.Event]:
    """An account's postings from the history index, newest first."""
    prefix = keys.HISTORY + keys.u64(account_id)
    for _, value in store.scan_back(prefix):
        entry = types_pb2.HistoryEntry.FromString(value)
        transfer = entry.transfer
        delta = entry.balance_delta
        counterparty = transfer.credit_account_id if delta < 0 else transfer.debit_account_id
        yield transfer.updated_at_unix_ms, delta, counterparty


class RiskActivity:
    """The activity index of one node plus who owns which accounts."""

    def __init__(
        self,
        accounts: dict[int, AccountState],
        load: activity.Loader,
        accounts_max: int = activity.ACCOUNTS_MAX,
    ) -> None:
        """`accounts_max=0`: nothing cached, every answer read from the history
        index (for a ledger that does not feed `index.observe`)."""
        self._accounts = accounts
        self.index = activity.ActivityIndex(load, self._created_at, accounts_max)
        # customer id -> its accounts on this shard; built on first use, kept
        # current by `opened`, rebuilt after a slot move (`slots_moved`).
        self._customers: dict[str, list[int]] | None = None

    def _created_at(self, account_id: int) -> int:
        account = self._accounts.get(account_id)
        return 0 if account is None else account.created_at_ms

    def slots_moved(self) -> None:
        """Accounts came in (import) or left (release) with their history: the
        customer index and the cached windows are rebuilt on next use, so a
        customer's total counts exactly the accounts this shard holds now."""
        self._customers = None
        self.index.clear()

    def opened(self, account: AccountState) -> None:
        if self._customers is not None and account.type != types_pb2.ACCOUNT_TYPE_SYSTEM:
            customer = account.holder().customer_id
            if customer:
                self._customers.setdefault(customer, []).append(account.id)

    def _accounts_of(self, customer_id: str) -> list[int]:
        if self._customers is None:
            built: dict[str, list[int]] = {}
            for account in self._accounts.values():
                if account.type == types_pb2.ACCOUNT_TYPE_SYSTEM:
                    continue
                customer = account.holder().customer_id
                if customer:
                    built.setdefault(customer, []).append(account.id)
            self._customers = built
        return self._customers.get(customer_id, [])[: activity.CUSTOMER_ACCOUNTS_MAX]

    def answer(
        self, request: ledger_pb2.GetActivityRequest, owns: Callable[[int], bool], now_ms: int
    ) -> ledger_pb2.GetActivityResponse:
        check_request(request)
        return ledger_pb2.GetActivityResponse(
            summaries=[self._summary(q, request, owns, now_ms) for q in request.queries],
            now_unix_ms=now_ms,
            customers=[self._customer_total(c, owns, now_ms) for c in request.customer_ids],
        )

    def _summary(
        self,
        query: ledger_pb2.ActivityQuery,
        request: ledger_pb2.GetActivityRequest,
        owns: Callable[[int], bool],
        now_ms: int,
    ) -> ledger_pb2.ActivitySummary:
        account_id = query.account_id
        if not owns(account_id):
            return _refused(account_id, grpc.StatusCode.ABORTED, errors.SLOT_MOVED)
        account = self._accounts.get(account_id)
        if account is None or account.type == types_pb2.ACCOUNT_TYPE_SYSTEM:
            return _refused(account_id, grpc.StatusCode.NOT_FOUND, errors.ACCOUNT_NOT_FOUND)
        found = activity.summarize(
            self.index.get(account_id, now_ms),
            now_ms,
            counterparty=query.counterparty_id,
            dormancy_ms=request.dormancy_ms,
            near_low=request.near_amount_low,
            near_high=request.near_amount_high,
        )
        customer_id = account.holder().customer_id
        out = activity.summary_message(account_id, account.type, customer_id, account.created_at_ms, found)
        out.customer_out_24h.CopyFrom(self._customer_out(customer_id, account_id, found, owns, now_ms))
        return out

    def _customer_out(
        self,
        customer_id: str,
        account_id: int,
        own: activity.Summary,
        owns: Callable[[int], bool],
        now_ms: int,
    ) -> ledger_pb2.WindowTotals:
        """The customer's money out in 24 h over its accounts this shard owns."""
        total = ledger_pb2.WindowTotals(count=own.out[2].count, amount=own.out[2].amount)
        if not customer_id:
            return total
        self._add_out_24h(total, customer_id, owns, now_ms, skip=account_id)
        return total

    def _customer_total(
        self, customer_id: str, owns: Callable[[int], bool], now_ms: int
    ) -> ledger_pb2.CustomerTotal:
        """One `GetActivityRequest.customer_ids` answer. Owned accounts only:
        a staged copy (a move's target before the flip) or a released one is
        the other shard's to count, so the gateway's sum counts each once."""
        total = ledger_pb2.CustomerTotal(customer_id=customer_id)
        total.truncated = self._add_out_24h(total.out_24h, customer_id, owns, now_ms, skip=0)
        return total

    def _add_out_24h(
        self,
        total: ledger_pb2.WindowTotals,
        customer_id: str,
        owns: Callable[[int], bool],
        now_ms: int,
        skip: int,
    ) -> bool:
        """Add the 24 h money out of the customer's owned accounts (but `skip`)
        to `total`; True if one of them kept fewer postings than it had."""
        truncated = False
        for other in self._accounts_of(customer_id):
            if other == skip or not owns(other):
                continue
            window = self.index.get(other, now_ms)
            window.advance(now_ms)
            total.count += window.windows[-1].out.count
            total.amount += window.windows[-1].out.amount
            truncated |= window.truncated
        return truncated


def check_request(request: ledger_pb2.GetActivityRequest) -> None:
    count, customers = len(request.queries), len(request.customer_ids)
    if count == 0 and customers == 0:
        raise errors.invalid(errors.BATCH_EMPTY, "no queries and no customer ids")
    if count > limits.BATCH_ITEMS_MAX or customers > limits.BATCH_ITEMS_MAX:
        raise BankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors.BATCH_TOO_LARGE,
            f"at most {limits.BATCH_ITEMS_MAX} queries and {limits.BATCH_ITEMS_MAX} customer ids",
        )
    for customer_id in request.customer_ids:
        if not 0 < len(customer_id) <= CUSTOMER_ID_LENGTH_MAX:
            raise errors.invalid(
                errors.INVALID_ARGUMENT, f"a customer id must be 1..{CUSTOMER_ID_LENGTH_MAX} characters"
            )
    if not 0 <= request.dormancy_ms <= DORMANCY_MS_MAX:
        raise errors.invalid(errors.INVALID_ARGUMENT, f"dormancy_ms must be 0..{DORMANCY_MS_MAX}")
    if request.near_amount_low < 0 or request.near_amount_high < 0:
        raise errors.invalid(errors.INVALID_AMOUNT, "the near-threshold band must not be negative")


def _refused(account_id: int, code: grpc.StatusCode, reason: str) -> ledger_pb2.ActivitySummary:
    return ledger_pb2.ActivitySummary(account_id=account_id, code=code.value[0], reason=reason)
