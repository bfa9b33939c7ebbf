"""Memory and restart of a big shard: `python -m loadtest.node_memory --accounts 1000000 --journal 10000000`.

Issue #5 asks for a node holding 1M accounts and 10M journal entries to stay
under 1 GiB RSS and be serving again within 10 s of a restart. This builds
such a shard directly through `Ledger` + `Store` (the same code the writer
runs, minus gRPC, so the build takes minutes rather than an hour), then
starts the real node process on it (`python -m ledger_node --etcd ""`) and
measures:

- time from exec to the first answered `GetNodeInfo` (restart to serving),
- RSS after start-up and after a burst of transfers through gRPC,
- that the node's journal sequence and account count match what was built.

`--data-dir` keeps the built shard so later runs can skip the build with
`--reuse`. The report goes to stdout and `bench-results/node-memory-<ts>.txt`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from ledger_node import keys
from ledger_node.state import Ledger, Response
from ledger_node.store import Store
from ledger_node.testing import NOW_MS, account, deposit, move
from shardbank import limits, service_auth
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

SHARD_ID = "shard-1"
FUNDING_MINOR = 10**9
TRANSFER_AMOUNT_MAX_MINOR = 100
BUILD_BATCH = limits.BATCH_ITEMS_MAX
START_TIMEOUT_S = 120.0
# The probe's reconnect backoff while the node starts. gRPC's default backs
# off 1 s, 1.6 s, 2.6 s, ... between connection attempts, so "restart to
# serving" read up to a couple of seconds late (a node serving at 4.3 s was
# seen at 5.2 s). 50 ms keeps the reading within one probe step.
PROBE_RECONNECT_BACKOFF_MS = 50
STOP_TIMEOUT_S = 30.0
PROBE_TRANSFERS = 20_000
PROBE_BATCH = 1000
RESULTS_DIR = Path("bench-results")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _check(responses: list[Response]) -> None:
    for response in responses:
        if isinstance(response, ledger_pb2.TransfersResponse):
            refused = [t for t in response.transfers if t.status != types_pb2.TRANSFER_STATUS_COMMITTED]
            if refused:
                raise SystemExit(f"node_memory: transfer refused during build: {refused[0]}")
        elif isinstance(response, ledger_pb2.AccountsResponse):
            failed = [r for r in response.results if r.code != 0]
            if failed:
                raise SystemExit(f"node_memory: account refused during build: {failed[0]}")
        else:
            raise SystemExit(f"node_memory: request refused: {response}")


def _transfers(account_ids: list[int], count: int, rng: random.Random) -> Iterator[types_pb2.Transfer]:
    for _ in range(count):
        debit, credit = rng.sample(account_ids, 2)
        yield move(
            debit, credit, rng.randint(1, TRANSFER_AMOUNT_MAX_MINOR), str(uuid.UUID(int=rng.getrandbits(128)))
        )


def build(path: str, accounts: int, journal: int, seed: int) -> tuple[int, float]:
    """Open and fund `accounts`, then add transfers until the journal holds `journal` entries."""
    rng = random.Random(seed)
    store = Store(path)
    started = time.perf_counter()
    try:
        ledger = Ledger(SHARD_ID, store.get, lambda _account_id: True)
        now_ms = NOW_MS

        def apply(request: object) -> None:
            nonlocal now_ms
            now_ms += 1
            responses, writes = ledger.apply([request], now_ms)  # type: ignore[list-item]
            _check(responses)
            store.write(writes)

        account_ids: list[int] = []
        for start in range(0, accounts, BUILD_BATCH):
            opened = [account() for _ in range(min(BUILD_BATCH, accounts - start))]
            apply(ledger_pb2.CreateAccountsRequest(accounts=opened, actor="node-memory"))
            account_ids.extend(a.id for a in opened)
            apply(ledger_pb2.ApplyTransfersRequest(transfers=[deposit(a.id, FUNDING_MINOR) for a in opened]))
            _progress("accounts", len(account_ids), accounts, started)
        remaining = max(0, journal - ledger.journal_seq)
        stream = _transfers(account_ids, remaining, rng)
        done = 0
        while done < remaining:
            chunk = [t for _, t in zip(range(BUILD_BATCH), stream, strict=False)]
            apply(ledger_pb2.ApplyTransfersRequest(transfers=chunk))
            done += len(chunk)
            if done % (BUILD_BATCH * 50) < BUILD_BATCH:
                _progress("journal", ledger.journal_seq, journal, started)
        return ledger.journal_seq, time.perf_counter() - started
    finally:
        store.close()


def _progress(what: str, done: int, total: int, started: float) -> None:
    print(f"  build {what}: {done:,}/{total:,}  {time.perf_counter() - started:7.1f} s", flush=True)


def _du_mib(path: str) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total / 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure(path: str, ids: list[int], lines: list[str]) -> None:
    """Start the real node on `path`: time to serving, RSS, and a burst of transfers."""
    address = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "ledger_node", "--shard-id", SHARD_ID, "--listen", address]
    command += ["--data-dir", path, "--etcd", ""]
    env = {k: v for k, v in os.environ.items() if k != service_auth.SECRET_FILE_ENV}
    started = time.perf_counter()
    node = subprocess.Popen(command, stderr=subprocess.DEVNULL, env=env)
    try:
        channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
                ("grpc.initial_reconnect_backoff_ms", PROBE_RECONNECT_BACKOFF_MS),
                ("grpc.min_reconnect_backoff_ms", PROBE_RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", PROBE_RECONNECT_BACKOFF_MS),
            ],
        )
        stub = ledger_pb2_grpc.LedgerNodeStub(channel)
        info = None
        while info is None:
            if node.poll() is not None:
                raise SystemExit(f"node_memory: node exited with {node.returncode}")
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise SystemExit("node_memory: node did not serve in time")
            try:
                info = stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=1.0)
            except grpc.RpcError:
                time.sleep(0.05)
        serving_s = time.perf_counter() - started
        rss_start = _rss_mib(node.pid)
        _say(lines, f"restart to serving: {serving_s:.2f} s   RSS after start: {rss_start:,.0f} MiB")
        _say(lines, f"node reports accounts {info.accounts:,}  journal_seq {info.journal_seq:,}")
        rng = random.Random(7)
        burst_started = time.perf_counter()
        stream = _transfers(ids, PROBE_TRANSFERS, rng)
        for _ in range(PROBE_TRANSFERS // PROBE_BATCH):
            chunk = [t for _, t in zip(range(PROBE_BATCH), stream, strict=False)]
            reply = stub.ApplyTransfers(ledger_pb2.ApplyTransfersRequest(transfers=chunk), timeout=60)
            if any(t.status != types_pb2.TRANSFER_STATUS_COMMITTED for t in reply.transfers):
                raise SystemExit("node_memory: a probe transfer did not commit")
        burst_s = time.perf_counter() - burst_started
        _say(
            lines,
            f"after {PROBE_TRANSFERS:,} transfers ({PROBE_TRANSFERS / burst_s:,.0f}/s):"
            f" RSS {_rss_mib(node.pid):,.0f} MiB",
        )
        channel.close()
    finally:
        node.terminate()
        try:
            node.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def _say(lines: list[str], line: str) -> None:
    lines.append(line)
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.node_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--journal", type=int, default=10_000_000, help="journal entries to reach")
    parser.add_argument("--data-dir", default="", help="keep the built shard here (default: temp, removed)")
    parser.add_argument("--reuse", action="store_true", help="skip the build; --data-dir holds a built shard")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.reuse and not args.data_dir:
        parser.error("--reuse needs --data-dir")
    path = args.data_dir or tempfile.mkdtemp(prefix="node-memory-")
    lines: list[str] = []
    _say(
        lines,
        f"node_memory {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  python {platform.python_version()}"
        f"  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.1f}",
    )
    _say(lines, f"command: python -m loadtest.node_memory {' '.join(sys.argv[1:] if argv is None else argv)}")
    try:
        if not args.reuse:
            seq, seconds = build(path, args.accounts, args.journal, args.seed)
            _say(lines, f"built {args.accounts:,} accounts, journal {seq:,} entries in {seconds:,.0f} s")
        store = Store(path, read_only=True)
        try:
            ids = _first_accounts(store, 10_000)
        finally:
            store.close()
        _say(lines, f"database on disk: {_du_mib(path):,.0f} MiB   load now {os.getloadavg()[0]:.1f}")
        measure(path, ids, lines)
    finally:
        if not args.data_dir:
            shutil.rmtree(path, ignore_errors=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"node-memory-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"saved {out}")
    return 0


def _first_accounts(store: Store, count: int) -> list[int]:
    """Customer accounts to move money between once the node is up."""
    found: list[int] = []
    for key, value in store.scan(keys.ACCOUNT):
        record = types_pb2.Account.FromString(value)
        if record.type != types_pb2.ACCOUNT_TYPE_SYSTEM:
            found.append(keys.read_u64(key[len(keys.ACCOUNT) :]))
        if len(found) >= count:
            break
    return found


if __name__ == "__main__":
    sys.exit(main())
