"""Recent activity per account, for the gateway's risk engine (GetActivity).

The source of truth is the history index (`h/<account><seq>`): durable,
sharded with the account, written in the same WriteBatch as the postings, so
risk state survives any gateway restart, is shared by every gateway and can
never drift from the books. Scanning it per transfer would cost too much, so
an in-memory `ActivityIndex` keeps, per recently used account, the postings
of the last 24 h with running totals per sliding window (1 min, 1 h, 24 h).
The writer feeds it every posting it applies (`observe`); an account not in
memory is loaded from the history index on first use. Bounded: at most
`ACCOUNTS_MAX` accounts (least recently used dropped), `EVENTS_MAX` postings
each, `PAID_MAX` remembered counterparties each.

Pure (no I/O): loading is an injected function, the clock is a parameter.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from shardbank.v1 import ledger_pb2

# Sliding windows, shortest first; the last one is the horizon kept in memory.
WINDOWS_MS = (60_000, 3_600_000, 86_400_000)
HORIZON_MS = WINDOWS_MS[-1]
# Accounts kept in memory: ~1-2 KB each for a normally active account, so a
# node with 1M accounts holds the 100k most recently used in ~100-200 MB worst
# case and the rest are read from RocksDB when they move again.
ACCOUNTS_MAX = 100_000
# Postings kept per account within the horizon; a busier account's totals
# are lower bounds (`truncated`), which only matters far above any threshold.
EVENTS_MAX = 4096
# Distinct payees remembered per account (new-counterparty rule).
PAID_MAX = 256
# History entries read when an account is loaded: the 24 h horizon plus this
# many older entries for the payee lookback.
LOAD_ENTRIES_MAX = 1000
# Accounts of one customer summed for its daily outgoing total.
CUSTOMER_ACCOUNTS_MAX = 64

# (at_ms, signed amount: < 0 money out, counterparty account id)
Event = tuple[int, int, int]
# Loads an account's postings from durable history, NEWEST first.
Loader = Callable[[int], Iterable[Event]]


@dataclass
class Totals:
    count: int = 0
    amount: int = 0


@dataclass
class _Window:
    """Running totals of the postings inside one sliding window."""

    length_ms: int
    start: int = 0  # absolute index of the oldest event inside
    out: Totals = field(default_factory=Totals)
    into: Totals = field(default_factory=Totals)
    payees: collections.Counter[int] = field(default_factory=collections.Counter)
    payers: collections.Counter[int] = field(default_factory=collections.Counter)

    def add(self, event: Event, sign: int) -> None:
        _, amount, counterparty = event
        if amount < 0:
            self.out.count += sign
            self.out.amount += sign * -amount
            _count(self.payees, counterparty, sign)
        else:
            self.into.count += sign
            self.into.amount += sign * amount
            _count(self.payers, counterparty, sign)


def _count(counter: collections.Counter[int], key: int, sign: int) -> None:
    counter[key] += sign
    if counter[key] <= 0:
        del counter[key]


class AccountActivity:
    """One account's postings within the horizon, oldest first, with window totals."""

    def __init__(self, created_at_ms: int) -> None:
        self.created_at_ms = created_at_ms
        self.events: collections.deque[Event] = collections.deque()
        self.base = 0  # absolute index of events[0]
        self.windows = [_Window(length) for length in WINDOWS_MS]
        # Newest posting that has left the horizon (0: none known).
        self.older_last_ms = 0
        self.paid: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.truncated = False
        # Kept up to date per posting for the band and the dormancy period
        # last asked for (a config change recomputes them once): outgoing
        # postings in the band within 24 h; the current run of activity.
        self.band = (0, 0)
        self.near = 0
        self.dormancy_ms = 0
        self.run_started_ms = 0
        self.idle_before_ms = 0

    def _last_ms(self) -> int:
        return self.events[-1][0] if self.events else (self.older_last_ms or self.created_at_ms)

    def add(self, event: Event) -> None:
        last_ms = self._last_ms()
        if self.dormancy_ms and last_ms and event[0] - last_ms >= self.dormancy_ms:
            self.run_started_ms, self.idle_before_ms = event[0], event[0] - last_ms
        self.events.append(event)
        for window in self.windows:
            window.add(event, +1)
        if event[1] < 0:
            self.remember_payee(event[2])
            self.near += self._in_band(event)
        if len(self.events) > EVENTS_MAX:
            self.truncated = True
            self._drop_oldest()

    def _in_band(self, event: Event) -> bool:
        return self.band[0] <= -event[1] < self.band[1]

    def use_band(self, low: int, high: int) -> None:
        """Count outgoing postings in [low, high) from now on (recounted now if new)."""
        if (low, high) == self.band:
            return
        self.band = (low, high)
        start = self.windows[-1].start - self.base
        self.near = sum(1 for i in range(start, len(self.events)) if self._in_band(self.events[i]))

    def use_dormancy(self, dormancy_ms: int) -> None:
        """Follow runs of activity separated by dormancy_ms (recomputed now if new)."""
        if dormancy_ms == self.dormancy_ms:
            return
        self.dormancy_ms = dormancy_ms
        self.run_started_ms = self.idle_before_ms = 0
        previous = self.older_last_ms or self.created_at_ms
        for at_ms, _, _ in self.events:
            if dormancy_ms and previous and at_ms - previous >= dormancy_ms:
                self.run_started_ms, self.idle_before_ms = at_ms, at_ms - previous
            previous = at_ms

    def remember_payee(self, counterparty: int) -> None:
        self.paid[counterparty] = None
        self.paid.move_to_end(counterparty)
        while len(self.paid) > PAID_MAX:
            self.paid.popitem(last=False)

    def advance(self, now_ms: int) -> None:
        """Slide every window to end at now_ms; drop what left the horizon."""
        end = self.base + len(self.events)
        for window in self.windows:
            while window.start < end:
                event = self.events[window.start - self.base]
                if event[0] > now_ms - window.length_ms:
                    break
                window.add(event, -1)
                window.start += 1
                if window is self.windows[-1] and event[1] < 0:
                    self.near -= self._in_band(event)
        horizon_start = self.windows[-1].start
        while self.base < horizon_start:
            self.older_last_ms = self.events.popleft()[0]
            self.base += 1

    def _drop_oldest(self) -> None:
        event = self.events[0]
        for window in self.windows:
            if window.start == self.base:
                window.add(event, -1)
                window.start += 1
                if window is self.windows[-1] and event[1] < 0:
                    self.near -= self._in_band(event)
        self.older_last_ms = max(self.older_last_ms, event[0])
        self.events.popleft()
        self.base += 1

    def newest_first(self) -> Iterator[Event]:
        return reversed(self.events)


@dataclass
class Summary:
    """What GetActivity answers for one account (see ActivitySummary in ledger.proto)."""

    out: tuple[Totals, Totals, Totals]
    into: tuple[Totals, Totals, Totals]
    distinct_in_1h: int
    distinct_out_1h: int
    distinct_in_24h: int
    distinct_out_24h: int
    near_threshold_out_24h: int
    idle_before_ms: int
    run_started_ms: int
    counterparty_known: bool
    truncated: bool


def summarize(
    activity: AccountActivity,
    now_ms: int,
    *,
    counterparty: int = 0,
    dormancy_ms: int = 0,
    near_low: int = 0,
    near_high: int = 0,
) -> Summary:
    activity.advance(now_ms)
    windows = activity.windows
    activity.use_band(near_low, near_high)
    activity.use_dormancy(dormancy_ms)
    idle_ms, run_started_ms = activity.idle_before_ms, activity.run_started_ms
    last_ms = activity._last_ms()
    if dormancy_ms and last_ms and now_ms - last_ms >= dormancy_ms:
        idle_ms, run_started_ms = now_ms - last_ms, now_ms  # this transfer starts a new run
    near = activity.near if near_high > near_low else 0
    return Summary(
        out=(_copy(windows[0].out), _copy(windows[1].out), _copy(windows[2].out)),
        into=(_copy(windows[0].into), _copy(windows[1].into), _copy(windows[2].into)),
        distinct_in_1h=len(windows[1].payers),
        distinct_out_1h=len(windows[1].payees),
        distinct_in_24h=len(windows[2].payers),
        distinct_out_24h=len(windows[2].payees),
        near_threshold_out_24h=near,
        idle_before_ms=idle_ms,
        run_started_ms=run_started_ms,
        counterparty_known=counterparty != 0 and counterparty in activity.paid,
        truncated=activity.truncated,
    )


def _copy(totals: Totals) -> Totals:
    return Totals(totals.count, totals.amount)


class ActivityIndex:
    """Accounts' recent activity, most recently used kept (see module doc)."""

    def __init__(
        self, load: Loader, created_at: Callable[[int], int], accounts_max: int = ACCOUNTS_MAX
    ) -> None:
        self._load = load
        self._created_at = created_at
        self._accounts_max = accounts_max
        self._cache: collections.OrderedDict[int, AccountActivity] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every window (reloaded from the history index on next use)."""
        self._cache.clear()

    def observe(self, account_id: int, at_ms: int, amount: int, counterparty: int) -> None:
        """A posting just applied. An account not in memory is skipped: its
        history index has the posting and is read on first use."""
        activity = self._cache.get(account_id)
        if activity is not None:
            activity.add((at_ms, amount, counterparty))

    def get(self, account_id: int, now_ms: int) -> AccountActivity:
        activity = self._cache.get(account_id)
        if activity is None:
            activity = self._loaded(account_id, now_ms)
            self._cache[account_id] = activity
            while len(self._cache) > self._accounts_max:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(account_id)
        return activity

    def _loaded(self, account_id: int, now_ms: int) -> AccountActivity:
        activity = AccountActivity(self._created_at(account_id))
        loaded: list[Event] = []
        for event in self._load(account_id):
            if len(loaded) == LOAD_ENTRIES_MAX:
                activity.truncated = event[0] > now_ms - HORIZON_MS
                break
            loaded.append(event)
        for event in reversed(loaded):  # oldest first, as if observed live
            if event[0] > now_ms - HORIZON_MS:
                activity.add(event)
            else:
                activity.older_last_ms = max(activity.older_last_ms, event[0])
                if event[1] < 0:
                    activity.remember_payee(event[2])
        activity.advance(now_ms)
        return activity


def _totals(value: Totals) -> ledger_pb2.WindowTotals:
    return ledger_pb2.WindowTotals(count=value.count, amount=value.amount)


def summary_message(
    account_id: int, account_type: int, customer_id: str, created_at_ms: int, summary: Summary
) -> ledger_pb2.ActivitySummary:
    """The wire form of a summary (customer_out_24h left for the caller)."""
    return ledger_pb2.ActivitySummary(
        account_id=account_id,
        account_type=account_type,  # type: ignore[arg-type]
        customer_id=customer_id,
        created_at_unix_ms=created_at_ms,
        out_1m=_totals(summary.out[0]),
        out_1h=_totals(summary.out[1]),
        out_24h=_totals(summary.out[2]),
        in_1m=_totals(summary.into[0]),
        in_1h=_totals(summary.into[1]),
        in_24h=_totals(summary.into[2]),
        distinct_in_1h=summary.distinct_in_1h,
        distinct_out_1h=summary.distinct_out_1h,
        distinct_in_24h=summary.distinct_in_24h,
        distinct_out_24h=summary.distinct_out_24h,
        near_threshold_out_24h=summary.near_threshold_out_24h,
        idle_before_ms=summary.idle_before_ms,
        run_started_unix_ms=summary.run_started_ms,
        counterparty_known=summary.counterparty_known,
        truncated=summary.truncated,
    )
