"""End of day from scans: the trial balance across shards with transfers in
flight at the cut, contradictions, counts by kind, merchants, hours, lines."""

from __future__ import annotations

import datetime as dt

from clients.reports import day, eod
from clients.reports.ledger_scan import Cut, ShardScan
from clients.reports.model import BUSINESS, DEPOSIT, PAYMENT, TRANSFER, DayTransfer, Party
from ledger_node.replay import ABORTED, COMMITTED, PREPARED
from shardbank.v1 import ledger_pb2, types_pb2

WINDOW = day.day_window(dt.date(2026, 11, 24), "Asia/Shanghai")
HOUR_MS = 3_600_000


def scan(shard: str, balances: dict[str, int], **kwargs: object) -> ShardScan:
    result = ShardScan(shard=shard, journal_seq=10, head_hash=b"\x01" * 32, **kwargs)  # type: ignore[arg-type]
    result.cut = Cut(balances=balances, debit_records={}, credit_legs={})
    return result


def test_a_transfer_committed_at_its_record_holder_and_not_yet_credited_is_in_flight() -> None:
    debit_side = scan("shard-1", {"CNY": -700})
    debit_side.cut.debit_records = {"t1": COMMITTED, "t2": ABORTED}
    credit_side = scan("shard-2", {"CNY": 0})
    credit_side.cut.credit_legs = {"t1": (PREPARED, "CNY", 700), "t2": (ABORTED, "CNY", 50)}

    result = eod.end_of_day([debit_side, credit_side], [], [], WINDOW, WINDOW.end_ms)

    assert result.ok and result.data["trial_balance"] == {"CNY": 0}


def test_a_copy_a_slot_move_made_counts_once() -> None:
    """Mid-move, shard-3 holds copies of shard-2's account (balance 700) and
    of its in-flight credit leg: the books count shard-2's, the older holder,
    once. After the release only shard-3 holds them, and its copies count."""
    debit_side = scan("shard-1", {"CNY": -700})
    debit_side.cut.debit_records = {"t1": COMMITTED}
    source = scan("shard-2", {"CNY": 0})
    source.cut.credit_legs = {"t1": (PREPARED, "CNY", 700)}
    source.cut.account_ids = frozenset({42})
    target = scan("shard-3", {"CNY": 0})
    target.cut.credit_legs = {"t1": (PREPARED, "CNY", 700)}
    target.cut.account_ids = frozenset({42})
    target.cut.imported_accounts = {42: (WINDOW.start_ms + 5, "CNY", 0)}
    target.cut.imported_records = {(types_pb2.LEG_ROLE_CREDIT, "t1"): WINDOW.start_ms + 5}

    mid_move = eod.end_of_day([debit_side, source, target], [], [], WINDOW, WINDOW.end_ms)
    assert mid_move.data["trial_balance"] == {"CNY": 0}, "the copied credit leg counted twice"

    source.cut.balances, target.cut.balances = {"CNY": 300}, {"CNY": 300}
    source.cut.imported_accounts = {}
    target.cut.imported_accounts = {42: (WINDOW.start_ms + 5, "CNY", 300)}
    debit_side.cut.balances = {"CNY": -1_000}
    moved_money = eod.end_of_day([debit_side, source, target], [], [], WINDOW, WINDOW.end_ms)
    assert moved_money.data["trial_balance"] == {"CNY": 0}, "the copied account counted twice"

    source.cut = Cut(balances={"CNY": 0}, debit_records={}, credit_legs={})  # released
    released = eod.end_of_day([debit_side, source, target], [], [], WINDOW, WINDOW.end_ms)
    assert released.ok and released.data["trial_balance"] == {"CNY": 0}


def test_an_id_committed_by_two_record_holders_is_a_discrepancy() -> None:
    """Ids are unique per record holder: a client that reuses one with a debit
    account on another shard moves money twice, and the end of day says so."""
    first = scan("shard-1", {"CNY": 0})
    first.transfers = [
        DayTransfer("t-reused", TRANSFER, 11, 12, 500, "CNY", WINDOW.start_ms + 1, "shard-1"),
        DayTransfer("t-once", TRANSFER, 11, 12, 70, "CNY", WINDOW.start_ms + 2, "shard-1"),
    ]
    second = scan("shard-2", {"CNY": 0})
    second.transfers = [DayTransfer("t-reused", TRANSFER, 21, 22, 500, "CNY", WINDOW.start_ms + 3, "shard-2")]

    result = eod.end_of_day([first, second], [], [], WINDOW, WINDOW.end_ms)

    (line,) = result.discrepancies
    assert line.startswith("transfer id t-reused: committed 2 times, at shard-1 (11 -> 12, 500 CNY), shard-2")
    assert not result.ok


def test_books_that_do_not_sum_to_zero_and_contradictions_are_lines() -> None:
    one = scan("shard-1", {"CNY": 5, "USD": 0})
    one.cut.debit_records = {"t9": ABORTED}
    two = scan("shard-2", {"CNY": 0})
    two.cut.credit_legs = {"t9": (COMMITTED, "CNY", 10)}

    result = eod.end_of_day(
        [one, two], ["shard-2 transfer t3: debit leg PREPARED for 9000 ms"], [], WINDOW, 0
    )

    assert not result.ok
    assert result.discrepancies == [
        "shard-2 credit leg t9: committed but its record holder did not commit",
        "books CNY: balances sum to 5, not 0 (trial balance at the cut)",
        "shard-2 transfer t3: debit leg PREPARED for 9000 ms",
    ]
    assert "DISCREPANCY books CNY: balances sum to 5" in eod.summary(result)
    assert eod.summary(result).endswith("eod: FAILED (3 discrepancies)")


def test_an_unreadable_shard_means_no_trial_balance_rather_than_a_wrong_one() -> None:
    result = eod.end_of_day(
        [scan("shard-1", {"CNY": -3})], [], ["shard-2 unreadable at x: UNAVAILABLE"], WINDOW, 0
    )

    assert result.discrepancies == [
        "shard-2 unreadable at x: UNAVAILABLE",
        "books: no trial balance (a shard was not read to its end)",
    ]


def test_counts_volumes_merchants_and_hours() -> None:
    shop = Party(7_000_000_000_000_001, BUSINESS, "CNY", "shop-1", "Shop")
    alice, bob, noon = 6_000_000_000_000_001, 6_000_000_000_000_002, WINDOW.start_ms + 9 * HOUR_MS
    transfers = [
        DayTransfer("a", DEPOSIT, 1156, alice, 1_000, "CNY", WINDOW.start_ms, "shard-1"),
        DayTransfer("b", PAYMENT, alice, shop.account_id, 300, "CNY", noon, "shard-1"),
        DayTransfer("c", PAYMENT, bob, shop.account_id, 200, "CNY", WINDOW.end_ms - 1, "shard-2", True),
        DayTransfer("d", TRANSFER, bob, alice, 5, "USD", noon, "shard-2"),
    ]
    one = scan("shard-1", {"CNY": 0}, transfers=transfers[:2], directory={shop.account_id: shop})
    two = scan("shard-2", {"CNY": 0}, transfers=transfers[2:])

    data = eod.end_of_day([one, two], [], [], WINDOW, WINDOW.end_ms).data

    assert data["total"]["transfers"] == {
        "DEPOSIT": {"CNY": {"count": 1, "volume_minor": 1_000}},
        "PAYMENT": {"CNY": {"count": 2, "volume_minor": 500}},
        "TRANSFER": {"USD": {"count": 1, "volume_minor": 5}},
    }
    assert data["shards"][1]["transfers"]["PAYMENT"] == {"CNY": {"count": 1, "volume_minor": 200}}
    assert data["merchants"] == [
        {"account_id": str(shop.account_id), "merchant": "Shop", "customer_id": "shop-1", "currency": "CNY",
         "count": 2, "volume_minor": 500, "volume": "5.00"}
    ]  # fmt: skip
    hours = data["volume_per_hour_minor"]
    assert (hours["CNY"][0], hours["CNY"][9], hours["CNY"][23], sum(hours["CNY"])) == (1_000, 300, 200, 1_500)
    assert hours["USD"][9] == 5


def test_a_leg_held_for_review_is_late_only_past_its_deadline() -> None:
    now = 1_000_000_000
    plain = ledger_pb2.Leg(transfer=types_pb2.Transfer(id="t1"), role=1, prepared_at_unix_ms=now - 9_000)
    waiting = ledger_pb2.Leg(
        transfer=types_pb2.Transfer(id="t2", review_deadline_unix_ms=now + 60_000),
        role=1,
        prepared_at_unix_ms=0,
    )
    overdue = ledger_pb2.Leg(
        transfer=types_pb2.Transfer(id="t3", review_deadline_unix_ms=now - eod.IN_DOUBT_GRACE_MS - 1),
        role=2,
        prepared_at_unix_ms=0,
    )

    lines = eod.in_doubt_lines("shard-1", [plain, waiting, overdue], now, 7_000)

    late = eod.IN_DOUBT_GRACE_MS + 1
    assert lines == [
        "shard-1 transfer t1: debit leg PREPARED for 9000 ms (limit 7000 ms: prepare timeout 2000 ms"
        " + sweeps)",
        f"shard-1 transfer t3: credit leg held for review {late} ms past its review deadline",
    ]
