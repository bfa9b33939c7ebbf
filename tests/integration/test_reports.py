"""`shardbank report aml|eod` against a real cluster.

A seeded synthetic day goes through the gateway: a few hundred customers
(personal CN and abroad, business; CNY, USD and a few EUR), amounts at,
one minor unit below and around each large-value threshold, single and
split into same-day parts. The AML report must list exactly the legs an
independent computation here says are over the thresholds; the end of day
must balance and count exactly what was submitted; a planted edit of a
stored balance and of a journal entry must each give a clear line and a
non-zero exit.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clients import cli
from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from ledger_node import journal, keys
from ledger_node.store import Store
from shardbank import meta, service_auth
from shardbank.identity import cn_check_digit
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2
from tests.integration.helpers import slot_map

pytestmark = pytest.mark.integration

SEED = 20161201
CUSTOMERS = 240
TZ = "Asia/Shanghai"
# Independent restatement of PBoC [2016] No. 3 Art. 5 (minor units, inclusive).
LIMITS = {
    ("CNY", "cash"): 5_000_000,
    ("CNY", "business"): 200_000_000,
    ("CNY", "domestic"): 50_000_000,
    ("CNY", "cross"): 20_000_000,
    ("USD", "cash"): 1_000_000,
    ("USD", "business"): 20_000_000,
    ("USD", "domestic"): 10_000_000,
    ("USD", "cross"): 1_000_000,
}
CATEGORY_NAMES = {
    "cash": "CASH",
    "business": "BUSINESS_TRANSFER",
    "domestic": "PERSONAL_DOMESTIC",
    "cross": "PERSONAL_CROSS_BORDER",
}
OVERDRAFT = 10**11


@dataclass(frozen=True)
class Holder:
    account_id: int
    person: str  # the ID document: one customer may hold several accounts
    business: bool
    country: str
    currency: str


@dataclass(frozen=True)
class Sent:
    transfer_id: str
    kind: str
    debit: int
    credit: int
    amount: int
    currency: str


def _resident_id(serial: int) -> str:
    first17 = f"110105198{serial // 28 % 10}{(serial % 12) + 1:02d}{(serial % 28) + 1:02d}{serial % 1000:03d}"
    return first17 + cn_check_digit(first17)


def _open(bank: BankClient, rng: random.Random, serial: int, currency: str) -> Holder:
    business = rng.random() < 0.2
    abroad = not business and rng.random() < 0.25
    country = rng.choice(["US", "HK", "SG"]) if abroad else rng.choice(["", "CN"])
    if abroad:
        id_type, id_number = "passport", f"E{serial:08d}"
    else:
        id_type, id_number = "cn_resident_id", _resident_id(serial)
    account = bank.open_account(
        f"Customer {serial}",
        id_number,
        f"+86139{serial:08d}",
        currency,
        "business" if business else "personal",
        id_type,
        overdraft_limit=OVERDRAFT,
        country=country,
    )
    return Holder(account.id, f"{id_type}:{id_number}", business, country or "CN", currency)


def _amount(rng: random.Random, threshold: int) -> list[int]:
    """One or more same-day amounts around a threshold."""
    choice = rng.randrange(6)
    if choice == 0:
        return [threshold]
    if choice == 1:
        return [threshold - 1]
    if choice == 2:
        return [threshold // 2, threshold - threshold // 2]  # cumulative, exactly at it
    if choice == 3:
        return [threshold // 2, threshold - threshold // 2 - 1]  # one minor unit short
    if choice == 4:
        return [threshold + rng.randrange(1, 10**6)]
    return [rng.randrange(1, threshold // 10)]


def synthetic_day(bank: BankClient) -> tuple[dict[int, Holder], list[Sent]]:
    rng = random.Random(SEED)
    holders: dict[int, Holder] = {}
    for serial in range(1, CUSTOMERS + 1):
        currency = "USD" if serial % 6 == 0 else "EUR" if serial % 40 == 0 else "CNY"
        first = _open(bank, rng, serial, currency)
        holders[first.account_id] = first
        if serial % 9 == 0:  # a second account of the same person: cumulative across accounts
            second = bank.open_account(
                f"Customer {serial}",
                first.person.split(":", 1)[1],
                f"+86139{serial:08d}",
                currency,
                "business" if first.business else "personal",
                first.person.split(":", 1)[0],
                overdraft_limit=OVERDRAFT,
                country="" if first.country == "CN" else first.country,
            )
            holders[second.id] = Holder(second.id, first.person, first.business, first.country, currency)
    by_currency: dict[str, list[Holder]] = defaultdict(list)
    for holder in holders.values():
        by_currency[holder.currency].append(holder)
    items: list[types_pb2.Transfer] = []
    for holder in list(holders.values()):
        cur = holder.currency
        for _ in range(rng.randrange(1, 4)):
            what = rng.choice(["cash", "cash", "move", "move", "move"])
            if what == "cash":
                kind = rng.choice([types_pb2.TRANSFER_KIND_DEPOSIT, types_pb2.TRANSFER_KIND_WITHDRAWAL])
                for amount in _amount(rng, LIMITS.get((cur, "cash"), 5_000_000)):
                    debit = holder.account_id if kind == types_pb2.TRANSFER_KIND_WITHDRAWAL else 0
                    credit = holder.account_id if kind == types_pb2.TRANSFER_KIND_DEPOSIT else 0
                    items.append(_item(kind, debit, credit, amount, cur))
                continue
            other = rng.choice([h for h in by_currency[cur] if h.account_id != holder.account_id])
            category = (
                "business" if holder.business else "cross" if holder.country != other.country else "domestic"
            )
            kind = types_pb2.TRANSFER_KIND_PAYMENT if other.business else types_pb2.TRANSFER_KIND_TRANSFER
            for amount in _amount(rng, LIMITS.get((cur, category), 50_000_000)):
                items.append(_item(kind, holder.account_id, other.account_id, amount, cur))
    outcomes = bank.submit_transfers(items)
    sent = []
    for item, outcome in zip(items, outcomes, strict=True):
        assert outcome.status == types_pb2.TRANSFER_STATUS_COMMITTED, outcome
        kind = types_pb2.TransferKind.Name(item.kind).removeprefix("TRANSFER_KIND_")
        sent.append(
            Sent(outcome.id, kind, item.debit_account_id, item.credit_account_id, item.amount, item.currency)
        )
    return holders, sent


def _item(kind: int, debit: int, credit: int, amount: int, currency: str) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=str(uuid.uuid4()),
        kind=kind,  # type: ignore[arg-type]
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency=currency,
    )


def expected_large_value(holders: dict[int, Holder], sent: list[Sent]) -> set[tuple[str, int, str]]:
    """(transfer id, account id, category) of every leg the report must list."""
    # money in and money out add up apart (PBoC: 单边累计)
    legs: dict[tuple[str, str, str, str], list[tuple[str, int, int]]] = defaultdict(list)
    for t in sent:
        sides: list[tuple[Holder, str, str]] = []
        if t.kind == "DEPOSIT":
            sides = [(holders[t.credit], "cash", "in")]
        elif t.kind == "WITHDRAWAL":
            sides = [(holders[t.debit], "cash", "out")]
        else:
            payer, payee = holders[t.debit], holders[t.credit]
            for me, other, direction in ((payer, payee, "out"), (payee, payer, "in")):
                category = (
                    "business" if me.business else "cross" if me.country != other.country else "domestic"
                )
                sides.append((me, category, direction))
        for holder, category, direction in sides:
            key = (holder.person, category, t.currency, direction)
            legs[key].append((t.transfer_id, holder.account_id, t.amount))
    expected = set()
    for (_, category, currency, _), group in legs.items():
        limit = LIMITS.get((currency, category))
        if limit is not None and sum(amount for _, _, amount in group) >= limit:
            expected |= {(tid, account, CATEGORY_NAMES[category]) for tid, account, _ in group}
    return expected


def put_alert(cluster: LocalCluster, created_ms: int, typologies: list[str], transfer_id: str) -> str:
    alert_id = f"{created_ms:013d}-{uuid.uuid4().hex[:12]}"
    alert = {
        "alert_id": alert_id, "created_at_unix_ms": created_ms, "updated_at_unix_ms": created_ms,
        "transfer_id": transfer_id, "transfer_kind": "TRANSFER",
        "debit_account_id": 1, "credit_account_id": 2,
        "customer_id": "cust-1", "account_id": 1, "amount": 4_990_000, "currency": "CNY",
        "decision": "ALLOW", "score": 40, "rules": ["structuring", *typologies], "aml_typologies": typologies,
        "severity": "MEDIUM", "status": "OPEN", "actor": "", "note": "", "review_state": "",
        "review_deadline_unix_ms": 0,
    }  # fmt: skip
    client = meta.connect(cluster.etcd_endpoint)
    try:
        client.put(f"/shardbank/risk/alerts/{alert_id}", json.dumps(alert))
    finally:
        client.close()
    return alert_id


@dataclass
class Day:
    holders: dict[int, Holder]
    sent: list[Sent]
    date: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The day plants amounts far over the risk rules' limits (that is the
    point of an AML report): the risk check is off here, so every planted
    transfer commits and the report sees exactly what the test computed."""
    local = LocalCluster(tmp_path_factory.mktemp("reports"), shards=2, coordinators=2, risk_config="")
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def day(cluster: LocalCluster, client: BankClient) -> Day:
    before = dt.datetime.now(ZoneInfo(TZ)).date()
    holders, sent = synthetic_day(client)
    after = dt.datetime.now(ZoneInfo(TZ)).date()
    if before != after:
        pytest.skip("the synthetic day straddled midnight in Asia/Shanghai")
    return Day(holders, sent, after.isoformat())


def run_report(cluster: LocalCluster, out: Path, *extra: str, token: str | None = None) -> tuple[int, str]:
    argv = [
        "report", *extra, "--gateway", cluster.gateway_address, "--token", token or cluster.admin_token,
        "--data-dir", str(cluster.data_dir), "--out", str(out), "--json",
    ]  # fmt: skip
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(argv)
    return code, buffer.getvalue()


def test_aml_lists_exactly_the_legs_over_the_thresholds(
    cluster: LocalCluster, day: Day, tmp_path: Path
) -> None:
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    aml_alert = put_alert(cluster, now_ms, ["structuring"], day.sent[0].transfer_id)
    put_alert(cluster, now_ms, [], day.sent[1].transfer_id)  # not an AML typology
    put_alert(cluster, now_ms - 2 * 86_400_000, ["funnel"], day.sent[2].transfer_id)  # another day

    code, printed = run_report(cluster, tmp_path, "aml", "--date", day.date)

    assert code == 0, printed
    data = json.loads(printed)
    expected = expected_large_value(day.holders, day.sent)
    assert len(expected) > 50  # the generator hit the thresholds often enough to mean something
    with open(tmp_path / f"aml-{day.date}-large-value.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    got = {(r["transfer_id"], int(r["account_id"]), r["category"]) for r in rows}
    assert got == expected
    assert {(r["transfer_id"], int(r["account_id"]), r["category"]) for r in data["large_value"]} == expected
    assert len(rows) == len(expected)
    assert data["not_evaluated_legs_by_currency"].get("EUR", 0) > 0
    for row in rows:
        assert row["basis"] == (
            "SINGLE" if int(row["amount_minor"]) >= int(row["threshold_minor"]) else "CUMULATIVE"
        )
        assert int(row["same_direction_day_total_minor"]) >= int(row["threshold_minor"])
    with open(tmp_path / f"aml-{day.date}-suspicious.csv", newline="", encoding="utf-8") as handle:
        suspicious = list(csv.DictReader(handle))
    assert [r["alert_id"] for r in suspicious] == [aml_alert]
    assert suspicious[0]["typologies"] == "structuring"


def test_aml_needs_an_auditor_or_admin(
    cluster: LocalCluster, client: BankClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teller = client.create_api_key("teller").token
    auditor = client.create_api_key("auditor").token

    refused, _ = run_report(cluster, tmp_path, "aml", token=teller)
    written = list(tmp_path.glob("*"))
    allowed, printed = run_report(cluster, tmp_path, "aml", token=auditor)

    assert refused == 1
    assert written == []
    assert "reports need an auditor or admin key" in capsys.readouterr().err
    assert allowed == 0, printed


def _submitted_tally(sent: list[Sent]) -> dict[str, dict[str, dict[str, int]]]:
    table: dict[str, dict[str, dict[str, int]]] = {}
    for t in sent:
        cell = table.setdefault(t.kind, {}).setdefault(t.currency, {"count": 0, "volume_minor": 0})
        cell["count"] += 1
        cell["volume_minor"] += t.amount
    return table


def test_eod_balances_and_counts_what_was_submitted(cluster: LocalCluster, day: Day, tmp_path: Path) -> None:
    code, printed = run_report(cluster, tmp_path, "eod", "--date", day.date)

    assert code == 0, printed
    data = json.loads(printed)
    assert data["discrepancies"] == []
    assert set(data["trial_balance"]) == {"CNY", "USD", "EUR"}
    assert all(total == 0 for total in data["trial_balance"].values())
    assert data["total"]["transfers"] == _submitted_tally(day.sent)
    assert [s["shard"] for s in data["shards"]] == ["shard-1", "shard-2"]
    assert sum(s["accounts_compared"] for s in data["shards"]) >= len(day.holders)
    payments: dict[tuple[str, str], int] = defaultdict(int)
    for t in day.sent:
        if t.kind == "PAYMENT":
            payments[(str(t.credit), t.currency)] += t.amount
    assert {(m["account_id"], m["currency"]): m["volume_minor"] for m in data["merchants"]} == payments
    hours = data["volume_per_hour_minor"]
    assert sum(hours["CNY"]) == sum(t.amount for t in day.sent if t.currency == "CNY")
    png = tmp_path / f"eod-{day.date}-volume.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _stopped(cluster: LocalCluster, edits: dict[str, Any]) -> dict[str, Any]:
    """Stop the shards, run each edit on its RocksDB, start them again."""
    for name in edits:
        cluster.kill(name, signal.SIGTERM)
    results = {}
    for name, edit in edits.items():
        store = Store(str(cluster.data_dir / name))
        try:
            results[name] = edit(store)
        finally:
            store.close()
    for name in edits:
        cluster.start_component(name)
    return results


def _customer_account_key(store: Store) -> bytes:
    for key, value in store.scan(keys.ACCOUNT):
        if types_pb2.Account.FromString(value).type != types_pb2.ACCOUNT_TYPE_SYSTEM:
            return key
    raise AssertionError("no customer account on this shard")


def _add_to_balance(delta: int) -> Any:
    def edit(store: Store) -> int:
        key = _customer_account_key(store)
        account = types_pb2.Account.FromString(store.get(key) or b"")
        account.balance += delta
        store.write([(key, account.SerializeToString(deterministic=True))])
        return account.id

    return edit


FLIPPED_SEQ = 5


def _flip_journal_byte(store: Store) -> int:
    value = store.get(keys.journal_key(FLIPPED_SEQ))
    assert value is not None
    changed = bytearray(value)
    changed[journal.HASH_BYTES + 3] ^= 0x01
    store.write([(keys.journal_key(FLIPPED_SEQ), bytes(changed))])
    return FLIPPED_SEQ


def test_eod_names_a_planted_discrepancy(cluster: LocalCluster, day: Day, tmp_path: Path) -> None:
    edited = _stopped(cluster, {"shard-1": _add_to_balance(1), "shard-2": _flip_journal_byte})
    try:
        code, printed = run_report(cluster, tmp_path, "eod", "--date", day.date)
    finally:  # put the shards back as they were, for the module's other tests
        _stopped(cluster, {"shard-1": _add_to_balance(-1), "shard-2": _flip_journal_byte})

    assert code == 1
    lines = json.loads(printed)["discrepancies"]
    account = edited["shard-1"]
    assert any(
        line.startswith(f"shard-1 account {account}: stored") and "!= journal replay" in line
        for line in lines
    ), (account, lines)
    assert any(
        line.startswith(f"shard-2 journal seq {FLIPPED_SEQ} ") and "hash chain broken" in line
        for line in lines
    ), lines
    restored, printed = run_report(cluster, tmp_path, "eod", "--date", day.date)
    assert restored == 0, json.loads(printed)["discrepancies"]


def test_holder_country_is_validated_and_kept_over_grpc_http_and_cli(
    cluster: LocalCluster, client: BankClient, capsys: pytest.CaptureFixture[str]
) -> None:
    import urllib.error
    import urllib.request

    opened = client.open_account("Tom", "E12345678", "+14155550100", id_type="passport", country="us")
    with pytest.raises(ShardbankError) as refused:
        client.open_account("Tom", "E12345679", "+14155550101", id_type="passport", country="XX")

    assert opened.holder.country == "US"
    assert client.get_account(opened.id).holder.country == "US"
    assert (refused.value.code.name, refused.value.reason) == ("INVALID_ARGUMENT", "INVALID_COUNTRY")

    holder = {"name": "Ann", "id_type": "ID_DOCUMENT_TYPE_PASSPORT", "id_number": "E22345678",
              "phone": "+14155550102", "country": "ZZ"}  # fmt: skip
    body = json.dumps({"currency": "CNY", "type": "ACCOUNT_TYPE_PERSONAL", "holder": holder}).encode()
    headers = {"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": "application/json"}
    request = urllib.request.Request(
        f"http://{cluster.http_address}/v1/accounts", body, headers, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as http_refused:
        urllib.request.urlopen(request, timeout=10)
    assert http_refused.value.code == 400
    assert json.loads(http_refused.value.read())["reason"] == "INVALID_COUNTRY"

    argv = ["account", "open", "--name", "Bo", "--id-number", "E32345678", "--id-type", "passport",
            "--phone", "+14155550103", "--country", "hk", "--gateway", cluster.gateway_address,
            "--token", cluster.admin_token, "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["holder"]["country"] == "HK"
    assert cli.main(["Hong Kong" if arg == "hk" else arg for arg in argv]) == 2
    assert "INVALID_COUNTRY" in capsys.readouterr().err


def _in_doubt(cluster: LocalCluster, shard: str) -> list[ledger_pb2.Leg]:
    with service_auth.signed_channel(cluster.address(shard), cluster.cluster_secret, "test") as channel:
        stub = ledger_pb2_grpc.LedgerNodeStub(channel)
        reply = stub.ListInDoubt(ledger_pb2.ListInDoubtRequest(older_than_ms=0, limit=100), timeout=10)
    return list(reply.legs)


def test_eod_names_a_2pc_leg_left_prepared(cluster: LocalCluster, day: Day, tmp_path: Path) -> None:
    slots = slot_map(cluster)
    debit = next(a for a, h in day.holders.items() if h.currency == "CNY" and slots.owner(a) == "shard-1")
    credit = next(a for a, h in day.holders.items() if h.currency == "CNY" and slots.owner(a) == "shard-2")
    coordinators = cluster.names("coordinator")
    for name in coordinators:  # nobody resolves the leg while the report runs
        cluster.kill(name, signal.SIGTERM)
    transfer_id = str(uuid.uuid4())
    try:
        with service_auth.signed_channel(
            cluster.address("shard-1"), cluster.cluster_secret, "test"
        ) as channel:
            stub = ledger_pb2_grpc.LedgerNodeStub(channel)
            epoch = stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=10).max_epoch_seen
            body = _item(types_pb2.TRANSFER_KIND_TRANSFER, debit, credit, 1, "CNY")
            body.id = transfer_id
            item = ledger_pb2.PrepareItem(transfer=body, role=types_pb2.LEG_ROLE_DEBIT)
            prepared = stub.Prepare(ledger_pb2.PrepareRequest(epoch=epoch, items=[item]), timeout=10)
        assert prepared.legs[0].state == ledger_pb2.LEG_STATE_PREPARED

        code, printed = run_report(cluster, tmp_path, "eod", "--date", day.date, "--in-doubt-ms", "1")
    finally:
        for name in coordinators:
            cluster.start_component(name)

    assert code == 1
    lines = json.loads(printed)["discrepancies"]
    assert [line for line in lines if "PREPARED" in line] == [
        line for line in lines if line.startswith(f"shard-1 transfer {transfer_id}: debit leg PREPARED for ")
    ]
    assert len(lines) == 1
    deadline = time.monotonic() + 30  # the new leader presumes it aborted
    while _in_doubt(cluster, "shard-1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _in_doubt(cluster, "shard-1") == []


# Last in the module: the reused id it plants stays a discrepancy of every
# later end of day on this cluster.
def test_eod_names_a_transfer_id_committed_by_two_record_holders(
    cluster: LocalCluster, client: BankClient, day: Day, tmp_path: Path
) -> None:
    """Ids are unique per record holder only (docs/internals.md, a known gap):
    the same id with a debit account on the other shard commits a second
    transfer. The end of day is where it shows."""
    slots = slot_map(cluster)
    cny = [a for a, h in day.holders.items() if h.currency == "CNY"]
    here = [a for a in cny if slots.owner(a) == "shard-1"][:2]
    there = [a for a in cny if slots.owner(a) == "shard-2"][:2]
    reused = str(uuid.uuid4())
    first = client.transfer(here[0], here[1], 1, "CNY", transfer_id=reused)
    second = client.transfer(there[0], there[1], 1, "CNY", transfer_id=reused)
    assert first.status == second.status == types_pb2.TRANSFER_STATUS_COMMITTED  # the gap itself

    code, printed = run_report(cluster, tmp_path, "eod", "--date", day.date)

    assert code == 1
    lines = json.loads(printed)["discrepancies"]
    assert [line for line in lines if reused in line] == lines and len(lines) == 1, lines
    assert lines[0].startswith(f"transfer id {reused}: committed 2 times, at shard-1 ")
