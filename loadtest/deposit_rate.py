"""Deposits per second through the Python client: one per call vs batched.

`python -m loadtest.deposit_rate --seconds 10 --batch 1000` starts a fresh
local cluster in a temporary directory, opens one account, then for a fixed
time makes sequential single deposits with a `--role` key (service by default;
teller and admin cash movements are also written to the etcd audit log) (`BankClient.deposit`, one RPC each,
synced before each reply), then sequential batches (`submit_transfers` with
`--batch` deposits per call). It checks the balance equals what was deposited.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank.identity import cn_check_digit
from shardbank.v1 import types_pb2


def _deposit(account_id: int, amount: int) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=str(uuid.uuid4()),
        kind=types_pb2.TRANSFER_KIND_DEPOSIT,
        credit_account_id=account_id,
        amount=amount,
        currency="CNY",
    )


def measure(seconds: float, batch: int, role: str = "service") -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="shardbank-rate-") as tmp:
        cluster = LocalCluster(Path(tmp), shards=2, coordinators=1)
        try:
            cluster.start()
            admin = BankClient(cluster.gateway_address, token=cluster.admin_token)
            token = cluster.admin_token if role == "admin" else admin.create_api_key(role).token
            admin.close_channel()
            bank = BankClient(cluster.gateway_address, token=token)
            first17 = "11010519900101123"
            account = bank.open_account("Rate Test", first17 + cn_check_digit(first17), "+8613800000001")
            single = 0
            deadline = time.monotonic() + seconds
            started = time.monotonic()
            while time.monotonic() < deadline:
                bank.deposit(account.id, 1, "CNY")
                single += 1
            single_s = time.monotonic() - started
            batched = 0
            deadline = time.monotonic() + seconds
            started = time.monotonic()
            while time.monotonic() < deadline:
                results = bank.submit_transfers([_deposit(account.id, 1) for _ in range(batch)])
                batched += sum(1 for r in results if r.status == types_pb2.TRANSFER_STATUS_COMMITTED)
            batched_s = time.monotonic() - started
            balance = bank.get_account(account.id).balance
            if balance != single + batched:
                raise SystemExit(f"books: balance {balance} != deposited {single + batched}")
            bank.close_channel()
        finally:
            cluster.stop()
    return {"single_per_s": single / single_s, "batched_per_s": batched / batched_s, "batch": batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.deposit_rate", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--role",
        choices=("service", "teller", "admin"),
        default="service",
        help="whose key makes the deposits",
    )
    args = parser.parse_args(argv)
    found = measure(args.seconds, args.batch, args.role)
    print(
        f"{args.role} key: one deposit per call: {found['single_per_s']:.0f} deposits/s; "
        f"{args.batch} per call: {found['batched_per_s']:.0f} deposits/s (books checked)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
