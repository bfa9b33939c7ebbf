"""A seeded synthetic banking day: normal behaviour plus planted patterns.

`generate(seed, customers)` is pure and deterministic (one `random.Random`):
the same arguments give the same day, byte for byte. It returns the accounts
(personal and business, with their customers), the history before the day
that makes accounts look normal (each one active within the last weeks;
dormant ones not for a year), the day's transfers in time order with
timestamps, and the planted patterns with the ids of their transfers:

- STRUCTURING: 3-5 transfers out just below RMB 50,000 within a few hours;
- FUNNEL: in from 6-9 accounts within the hour, then 85-95 % of it out again;
- FAN_OUT: a large sum in, then paid out to 6-8 accounts within the hour;
- DORMANT_REACTIVATION: an account idle for a year moves RMB 60,000-150,000;
- VELOCITY_BURST: 15-25 small transfers out, 1-5 s apart;
- ODD_HOURS_LARGE: RMB 60,000-150,000 out between 01:00 and 04:00 Beijing time.

Normal customers pay their usual payees and merchants a few times a day,
mostly in daytime, log-normal amounts (median RMB 300); businesses pay
suppliers. Amounts are fen (int), times unix ms.

Used by the risk engine's precision/recall test and, for AML reports, as a
day whose large transactions are known.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
import zoneinfo
from dataclasses import dataclass

from shardbank import ids
from shardbank.v1 import types_pb2

PERSONAL = types_pb2.ACCOUNT_TYPE_PERSONAL
BUSINESS = types_pb2.ACCOUNT_TYPE_BUSINESS
TRANSFER = types_pb2.TRANSFER_KIND_TRANSFER
PAYMENT = types_pb2.TRANSFER_KIND_PAYMENT

STRUCTURING = "STRUCTURING"
FUNNEL = "FUNNEL"
FAN_OUT = "FAN_OUT"
DORMANT_REACTIVATION = "DORMANT_REACTIVATION"
VELOCITY_BURST = "VELOCITY_BURST"
ODD_HOURS_LARGE = "ODD_HOURS_LARGE"
PATTERN_KINDS = (STRUCTURING, FUNNEL, FAN_OUT, DORMANT_REACTIVATION, VELOCITY_BURST, ODD_HOURS_LARGE)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
YUAN = 100  # fen
TIMEZONE = "Asia/Shanghai"
# Normal amounts: log-normal, median RMB 300, capped far below anything a
# rule looks at except in the rare tail (which is what false positives are).
NORMAL_MEDIAN_MINOR = 300 * YUAN
NORMAL_SIGMA = 1.8
NORMAL_MAX_MINOR = 300_000 * YUAN
CUSTOMERS_MAX = 1_000_000


@dataclass(frozen=True)
class Account:
    account_id: int
    customer_id: str
    account_type: int
    created_at_ms: int


@dataclass(frozen=True)
class Transfer:
    transfer_id: str
    at_ms: int
    kind: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    currency: str = "CNY"
    # The planted pattern this transfer belongs to ("" for normal behaviour).
    pattern_id: str = ""

    def to_proto(self) -> types_pb2.Transfer:
        return types_pb2.Transfer(
            id=self.transfer_id,
            kind=self.kind,  # type: ignore[arg-type]
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            currency=self.currency,
        )


@dataclass(frozen=True)
class Pattern:
    pattern_id: str
    kind: str
    # The account the pattern is about (the mule, the structurer, ...).
    account_id: int
    transfer_ids: tuple[str, ...]


@dataclass(frozen=True)
class SyntheticDay:
    seed: int
    day_start_ms: int
    accounts: tuple[Account, ...]
    # Before the day (so accounts have a past), time order.
    history: tuple[Transfer, ...]
    # The day, time order.
    transfers: tuple[Transfer, ...]
    patterns: tuple[Pattern, ...]

    def labels(self) -> dict[str, str]:
        """transfer id -> pattern id, for the planted transfers."""
        return {t.transfer_id: t.pattern_id for t in self.transfers if t.pattern_id}


class _Builder:
    def __init__(self, seed: int, day_start_ms: int) -> None:
        self.rng = random.Random(seed)
        self.day_start_ms = day_start_ms
        self.accounts: list[Account] = []
        self.history: list[Transfer] = []
        self.transfers: list[Transfer] = []
        self.patterns: list[Pattern] = []
        self._ids: set[int] = set()

    def account_id(self) -> int:
        while True:
            payload = str(ids.CUSTOMER_ID_MIN // 10 + self.rng.randrange(9 * ids.CUSTOMER_ID_MIN // 10))
            account_id = int(payload + str(ids.luhn_digit(payload)))
            if account_id not in self._ids:
                self._ids.add(account_id)
                return account_id

    def open(self, customer_id: str, account_type: int) -> Account:
        created = self.day_start_ms - self.rng.randrange(400, 1500) * DAY_MS
        account = Account(self.account_id(), customer_id, account_type, created)
        self.accounts.append(account)
        return account

    def transfer_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def add(
        self,
        at_ms: int,
        debit: Account,
        credit: Account,
        amount: int,
        pattern_id: str = "",
        past: bool = False,
    ) -> Transfer:
        kind = PAYMENT if credit.account_type == BUSINESS and debit.account_type == PERSONAL else TRANSFER
        transfer = Transfer(self.transfer_id(), at_ms, kind, debit.account_id, credit.account_id, amount,
                            pattern_id=pattern_id)  # fmt: skip
        (self.history if past else self.transfers).append(transfer)
        return transfer

    def normal_amount(self) -> int:
        amount = int(NORMAL_MEDIAN_MINOR * math.exp(self.rng.gauss(0.0, NORMAL_SIGMA)))
        return max(YUAN, min(amount, NORMAL_MAX_MINOR))

    def daytime_ms(self, zone: zoneinfo.ZoneInfo) -> int:
        """A time of the day, mostly 08:00-22:00 local, a few late or early."""
        hour = self.rng.choices(range(24), weights=_HOURLY_WEIGHTS)[0]
        local = dt.datetime.fromtimestamp(self.day_start_ms / 1000, tz=zone).replace(
            hour=hour, minute=self.rng.randrange(60), second=self.rng.randrange(60)
        )
        return int(local.timestamp() * 1000)


# Relative activity per local hour (a bank's day: quiet at night).
_HOURLY_WEIGHTS = (2, 1, 1, 1, 1, 2, 4, 8, 14, 18, 20, 20, 18, 18, 18, 18, 18, 18, 16, 16, 14, 10, 6, 3)


def generate(
    seed: int,
    customers: int,
    *,
    day: dt.date = dt.date(2026, 11, 24),
    patterns_per_kind: int = 5,
    kinds: tuple[str, ...] = PATTERN_KINDS,
    transfers_per_customer: float = 2.5,
) -> SyntheticDay:
    """The day (see the module doc). `kinds`: which patterns to plant."""
    if not 10 <= customers <= CUSTOMERS_MAX:
        raise ValueError(f"customers must be 10..{CUSTOMERS_MAX}")
    unknown = set(kinds) - set(PATTERN_KINDS)
    if unknown:
        raise ValueError(f"unknown pattern kinds {sorted(unknown)}")
    zone = zoneinfo.ZoneInfo(TIMEZONE)
    day_start_ms = int(dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)
    b = _Builder(seed, day_start_ms)
    people, businesses = _customers(b, customers)
    _normal_history(b, people, businesses)
    _normal_day(b, people, businesses, zone, transfers_per_customer)
    for kind in kinds:
        for index in range(patterns_per_kind):
            _PLANTERS[kind](b, f"{kind.lower()}-{index + 1}", people, businesses, zone)
    order = sorted(range(len(b.transfers)), key=lambda i: (b.transfers[i].at_ms, i))
    return SyntheticDay(
        seed=seed,
        day_start_ms=day_start_ms,
        accounts=tuple(b.accounts),
        history=tuple(sorted(b.history, key=lambda t: t.at_ms)),
        transfers=tuple(b.transfers[i] for i in order),
        patterns=tuple(b.patterns),
    )


def _customers(b: _Builder, customers: int) -> tuple[list[Account], list[Account]]:
    people: list[Account] = []
    businesses: list[Account] = []
    for index in range(customers):
        customer_id = f"cust-{index + 1:07d}"
        roll = b.rng.random()
        if roll < 0.9:
            people.append(b.open(customer_id, PERSONAL))
        if roll >= 0.7:
            businesses.append(b.open(customer_id, BUSINESS))
    if not businesses:
        businesses.append(b.open("cust-merchant", BUSINESS))
    return people, businesses


def _normal_history(b: _Builder, people: list[Account], businesses: list[Account]) -> None:
    """Every account active within the last 60 days (so none looks dormant)."""
    everyone = people + businesses
    for account in everyone:
        at_ms = b.day_start_ms - b.rng.randrange(1, 60) * DAY_MS - b.rng.randrange(DAY_MS)
        other = b.rng.choice(everyone)
        if other is account:
            continue
        b.add(at_ms, other, account, b.normal_amount(), past=True)


def _normal_day(
    b: _Builder, people: list[Account], businesses: list[Account], zone: zoneinfo.ZoneInfo, per: float
) -> None:
    everyone = people + businesses
    for payer in everyone:
        count = min(8, _poisson(b.rng, per))
        payees = [b.rng.choice(everyone) for _ in range(3)]
        for _ in range(count):
            payee = b.rng.choice(businesses) if b.rng.random() < 0.5 else b.rng.choice(payees)
            if payee is payer:
                continue
            at_ms = b.daytime_ms(zone)
            amount = b.normal_amount()
            if _local_hour(at_ms, zone) in range(1, 5):
                amount = min(amount, 5_000 * YUAN)  # people do not pay big sums at 3 am
            b.add(at_ms, payer, payee, amount)


def _poisson(rng: random.Random, mean: float) -> int:
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _local_hour(at_ms: int, zone: zoneinfo.ZoneInfo) -> int:
    return dt.datetime.fromtimestamp(at_ms / 1000, tz=zone).hour


def _work_hours_ms(b: _Builder, zone: zoneinfo.ZoneInfo) -> int:
    """A start time 09:00-15:00 local, leaving room for a pattern to unfold."""
    local = dt.datetime.fromtimestamp(b.day_start_ms / 1000, tz=zone).replace(hour=9 + b.rng.randrange(6))
    return int(local.timestamp() * 1000) + b.rng.randrange(HOUR_MS)


def _fresh(b: _Builder, pattern_id: str, account_type: int = PERSONAL) -> Account:
    account = b.open(f"cust-{pattern_id}", account_type)
    b.add(b.day_start_ms - b.rng.randrange(2, 30) * DAY_MS, b.accounts[0], account, 1_000 * YUAN, past=True)
    return account


def _record(b: _Builder, pattern_id: str, kind: str, account: Account, planted: list[Transfer]) -> None:
    b.patterns.append(Pattern(pattern_id, kind, account.account_id, tuple(t.transfer_id for t in planted)))


def _plant_structuring(b: _Builder, pid: str, people: list[Account], businesses: list[Account],
                       zone: zoneinfo.ZoneInfo) -> None:  # fmt: skip
    structurer = _fresh(b, pid)
    payees = [b.rng.choice(people) for _ in range(b.rng.randint(1, 3))]
    at_ms = _work_hours_ms(b, zone)
    planted: list[Transfer] = []
    for _ in range(b.rng.randint(3, 5)):
        amount = b.rng.randrange(45_500 * YUAN, 49_900 * YUAN)
        planted.append(b.add(at_ms, structurer, b.rng.choice(payees), amount, pid))
        at_ms += b.rng.randrange(20 * MINUTE_MS, 2 * HOUR_MS)
    _record(b, pid, STRUCTURING, structurer, planted)


def _plant_funnel(b: _Builder, pid: str, people: list[Account], businesses: list[Account],
                  zone: zoneinfo.ZoneInfo) -> None:  # fmt: skip
    mule = _fresh(b, pid)
    at_ms = _work_hours_ms(b, zone)
    received = 0
    planted: list[Transfer] = []
    for _ in range(b.rng.randint(6, 9)):
        payer = _fresh(b, f"{pid}-src{len(planted)}")
        amount = b.rng.randrange(20_000 * YUAN, 40_000 * YUAN)
        received += amount
        planted.append(b.add(at_ms, payer, mule, amount, pid))
        at_ms += b.rng.randrange(MINUTE_MS, 6 * MINUTE_MS)
    out = received * b.rng.randint(85, 95) // 100
    planted.append(
        b.add(at_ms + b.rng.randrange(MINUTE_MS, 10 * MINUTE_MS), mule, _fresh(b, f"{pid}-dst"), out, pid)
    )
    _record(b, pid, FUNNEL, mule, planted)


def _plant_fan_out(b: _Builder, pid: str, people: list[Account], businesses: list[Account],
                   zone: zoneinfo.ZoneInfo) -> None:  # fmt: skip
    spreader = _fresh(b, pid)
    at_ms = _work_hours_ms(b, zone)
    total = b.rng.randrange(150_000 * YUAN, 190_000 * YUAN)
    planted = [b.add(at_ms, _fresh(b, f"{pid}-src"), spreader, total, pid)]
    targets = b.rng.randint(6, 8)
    for index in range(targets):
        at_ms += b.rng.randrange(MINUTE_MS, 7 * MINUTE_MS)
        planted.append(b.add(at_ms, spreader, _fresh(b, f"{pid}-dst{index}"), total // (targets + 1), pid))
    _record(b, pid, FAN_OUT, spreader, planted)


def _plant_dormant(b: _Builder, pid: str, people: list[Account], businesses: list[Account],
                   zone: zoneinfo.ZoneInfo) -> None:  # fmt: skip
    sleeper = b.open(f"cust-{pid}", PERSONAL)
    b.add(
        b.day_start_ms - b.rng.randrange(365, 700) * DAY_MS, b.accounts[0], sleeper, 200_000 * YUAN, past=True
    )
    amount = b.rng.randrange(60_000 * YUAN, 150_000 * YUAN)
    payee = b.rng.choice(people)
    _record(
        b, pid, DORMANT_REACTIVATION, sleeper, [b.add(_work_hours_ms(b, zone), sleeper, payee, amount, pid)]
    )


def _plant_velocity(b: _Builder, pid: str, people: list[Account], businesses: list[Account],
                    zone: zoneinfo.ZoneInfo) -> None:  # fmt: skip
    sender = _fresh(b, pid)
    at_ms = _work_hours_ms(b, zone)
    planted: list[Transfer] = []
    for _ in range(b.rng.randint(15, 25)):
        planted.append(
            b.add(at_ms, sender, b.rng.choice(people), b.rng.randrange(50 * YUAN, 500 * YUAN), pid)
        )
        at_ms += b.rng.randrange(1_000, 5_000)
    _record(b, pid, VELOCITY_BURST, sender, planted)


def _plant_odd_hours(b: _Builder, pid: str, people: list[Account], businesses: list[Account],
                     zone: zoneinfo.ZoneInfo) -> None:  # fmt: skip
    sender = _fresh(b, pid)
    local = dt.datetime.fromtimestamp(b.day_start_ms / 1000, tz=zone).replace(hour=1 + b.rng.randrange(3))
    at_ms = int(local.timestamp() * 1000) + b.rng.randrange(HOUR_MS)
    amount = b.rng.randrange(60_000 * YUAN, 150_000 * YUAN)
    _record(b, pid, ODD_HOURS_LARGE, sender, [b.add(at_ms, sender, b.rng.choice(people), amount, pid)])


_PLANTERS = {
    STRUCTURING: _plant_structuring,
    FUNNEL: _plant_funnel,
    FAN_OUT: _plant_fan_out,
    DORMANT_REACTIVATION: _plant_dormant,
    VELOCITY_BURST: _plant_velocity,
    ODD_HOURS_LARGE: _plant_odd_hours,
}
