"""What the rules look at: one account's recent activity, as the ledger
shards report it (ledger.proto ActivitySummary), plus the transfers of the
same batch assessed before it (so a burst inside one call counts too).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardbank.v1 import ledger_pb2, types_pb2


@dataclass(frozen=True)
class Window:
    count: int = 0
    amount: int = 0

    def plus(self, amount: int) -> Window:
        return Window(self.count + 1, self.amount + amount)


@dataclass
class AccountActivity:
    """One account's activity before the transfer being assessed; amounts in
    minor units. Built fresh per batch from the shards' answer and updated in
    place as the batch's items are let through (`paid_out`, `paid_in`)."""

    account_id: int
    account_type: int = types_pb2.ACCOUNT_TYPE_PERSONAL
    customer_id: str = ""
    created_at_ms: int = 0
    out_1m: Window = Window()
    out_1h: Window = Window()
    out_24h: Window = Window()
    in_1m: Window = Window()
    in_1h: Window = Window()
    in_24h: Window = Window()
    payees_1h: frozenset[int] = frozenset()
    payers_1h: frozenset[int] = frozenset()
    # Distinct counts from the shard (the sets above hold this batch's additions).
    distinct_in_1h: int = 0
    distinct_out_1h: int = 0
    distinct_in_24h: int = 0
    distinct_out_24h: int = 0
    near_threshold_out_24h: int = 0
    idle_before_ms: int = 0
    run_started_ms: int = 0
    customer_out_24h: Window = Window()
    # Payees known to have been paid before (the shard's answer for this
    # batch's counterparty, plus this batch's own earlier payments).
    known_payees: frozenset[int] = frozenset()

    def window_out(self, name: str) -> Window:
        return {"1m": self.out_1m, "1h": self.out_1h, "24h": self.out_24h}[name]

    def paid_out(self, amount: int, payee: int, in_band: bool) -> None:
        """An earlier item of the batch paid `amount` out of this account."""
        new_payee = payee not in self.payees_1h and payee not in self.known_payees
        self.out_1m = self.out_1m.plus(amount)
        self.out_1h = self.out_1h.plus(amount)
        self.out_24h = self.out_24h.plus(amount)
        self.customer_out_24h = self.customer_out_24h.plus(amount)
        self.payees_1h = self.payees_1h | {payee}
        self.distinct_out_1h += new_payee
        self.distinct_out_24h += new_payee
        self.near_threshold_out_24h += in_band
        self.known_payees = self.known_payees | {payee}

    def paid_in(self, amount: int, payer: int) -> None:
        """An earlier item of the batch paid `amount` into this account."""
        new_payer = payer not in self.payers_1h
        self.in_1m = self.in_1m.plus(amount)
        self.in_1h = self.in_1h.plus(amount)
        self.in_24h = self.in_24h.plus(amount)
        self.payers_1h = self.payers_1h | {payer}
        self.distinct_in_1h += new_payer
        self.distinct_in_24h += new_payer


@dataclass(frozen=True)
class Features:
    """Everything a rule may look at for one transfer."""

    transfer: types_pb2.Transfer
    now_ms: int
    # The account paying (None for a deposit: cash has no risk profile).
    debit: AccountActivity | None
    # The account receiving (None for a withdrawal).
    credit: AccountActivity | None
    # The credit account was paid from the debit account before (lookback:
    # shardbank.activity.PAID_MAX payees, LOAD_ENTRIES_MAX history entries).
    counterparty_known: bool = False


def _window(totals: ledger_pb2.WindowTotals) -> Window:
    return Window(totals.count, totals.amount)


def from_summary(summary: ledger_pb2.ActivitySummary) -> AccountActivity:
    return AccountActivity(
        account_id=summary.account_id,
        account_type=summary.account_type,
        customer_id=summary.customer_id,
        created_at_ms=summary.created_at_unix_ms,
        out_1m=_window(summary.out_1m),
        out_1h=_window(summary.out_1h),
        out_24h=_window(summary.out_24h),
        in_1m=_window(summary.in_1m),
        in_1h=_window(summary.in_1h),
        in_24h=_window(summary.in_24h),
        distinct_in_1h=summary.distinct_in_1h,
        distinct_out_1h=summary.distinct_out_1h,
        distinct_in_24h=summary.distinct_in_24h,
        distinct_out_24h=summary.distinct_out_24h,
        near_threshold_out_24h=summary.near_threshold_out_24h,
        idle_before_ms=summary.idle_before_ms,
        run_started_ms=summary.run_started_unix_ms,
        customer_out_24h=_window(summary.customer_out_24h),
    )
