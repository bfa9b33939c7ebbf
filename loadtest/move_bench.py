"""How long a slot move takes and how long its slots are fenced, by size.

    python -m loadtest.move_bench --accounts 2000 --transfers 20000

Starts a 2-shard local cluster in a temporary directory, opens accounts,
posts transfers among them (so there are records and history to copy), then
moves half of shard-1's slots to shard-2 while a few clients keep
transferring, and prints the move's duration, its fence time and what it
copied, and the longest a client call took meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

from clients import shard_ops
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import meta
from shardbank.identity import cn_check_digit
from shardbank.v1 import types_pb2

BATCH = 1000
LOAD_CLIENTS = 3


def _open(bank: BankClient, count: int) -> list[int]:
    opened = []
    for i in range(count):
        first17 = f"1101051990{(i % 12) + 1:02d}{(i % 28) + 1:02d}{i % 1000:03d}"
        account = bank.open_account(
            name=f"Bench {i}",
            id_number=first17 + cn_check_digit(first17),
            phone=f"+86139{i:08d}",
            currency="CNY",
        )
        opened.append(account.id)
    deposits = [
        types_pb2.Transfer(id=str(uuid.uuid4()), kind=types_pb2.TRANSFER_KIND_DEPOSIT, credit_account_id=a,
                           amount=10_000_000, currency="CNY")
        for a in opened
    ]  # fmt: skip
    for start in range(0, len(deposits), BATCH):
        bank.submit_transfers(deposits[start : start + BATCH])
    return opened


def _transfer(debit: int, credit: int, amount: int) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=str(uuid.uuid4()),
        kind=types_pb2.TRANSFER_KIND_TRANSFER,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency="CNY",
    )


def _transfers(bank: BankClient, accounts: list[int], count: int, rng: random.Random) -> None:
    items = []
    for _ in range(count):
        a, b = rng.sample(accounts, 2)
        items.append(_transfer(a, b, rng.randint(1, 1000)))
    for start in range(0, len(items), BATCH):
        bank.submit_transfers(items[start : start + BATCH])


def _load(cluster: LocalCluster, accounts: list[int], stop: threading.Event, longest: list[float]) -> None:
    rng = random.Random(threading.get_ident())
    bank = BankClient(cluster.gateway_address, token=cluster.admin_token)
    try:
        while not stop.is_set():
            a, b = rng.sample(accounts, 2)
            began = time.monotonic()
            with contextlib.suppress(Exception):  # a refusal or a timeout: only the time counts here
                bank.submit_transfers([_transfer(a, b, 1)])
            longest[0] = max(longest[0], time.monotonic() - began)
    finally:
        bank.close_channel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="move_bench")
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--transfers", type=int, default=20000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="move-bench-") as tmp,
        LocalCluster(Path(tmp), shards=2) as cluster,
    ):
        bank = BankClient(cluster.gateway_address, token=cluster.admin_token)
        accounts = _open(bank, args.accounts)
        _transfers(bank, accounts, args.transfers, random.Random(1))
        etcd = meta.connect(cluster.etcd_endpoint)
        slot_map = meta.read_slot_map(etcd)
        assert slot_map is not None
        slots = slot_map.slots_of("shard-1")[: len(slot_map.slots_of("shard-1")) // 2]
        stop, longest = threading.Event(), [0.0]
        threads = [
            threading.Thread(target=_load, args=(cluster, accounts, stop, longest))
            for _ in range(LOAD_CLIENTS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        began = time.monotonic()
        move = shard_ops.request_move(etcd, slots, "shard-2", actor="bench")
        done = shard_ops.wait(etcd, move.move_id, 600)
        took = time.monotonic() - began
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        etcd.close()
        bank.close_channel()
        print(
            f"move of {len(slots)} slots: {done.phase} in {took:.2f} s; accounts {done.accounts_copied}, "
            f"records {done.records_copied}, history {done.history_copied}; catch-up rounds "
            f"{done.catch_up_rounds}; fenced {done.fenced_ms} ms; longest client call meanwhile "
            f"{longest[0] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
