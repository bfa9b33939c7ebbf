"""Ledger node hot path, layer by layer: `python -m loadtest.ledger_micro --transfers 200000 --batch 1000`.

Three layers, the same workload (TRANSFER items between funded accounts of
one shard, fresh ids, every item commits), each reported as transfers/s:

1. `state`: `Ledger.apply` alone over a dict (what the CPU of the pure state
   machine allows); the writes are laid into the dict like the store would.
2. `store`: the real `Ledger` + RocksDB `Store` + group-commit `Writer` in
   this process, `--concurrency` batches in flight, WAL synced per drain.
3. `grpc`: one real node process (`python -m ledger_node --etcd ""`,
   standalone) and an asyncio client sending `ApplyTransfers` batches,
   `--concurrency` calls in flight. Requests are built before the clock starts
   so the client's protobuf work stays off the measured path as far as it can
   (the client still shares the machine with the node).
4. `stream`: the same node and requests, each a message on one long-lived
   gRPC `WriteStream`, `--concurrency` messages in flight.
5. `frames`: the same messages on the node's frame lane (what the gateway and
   coordinator send: `shardbank.frame_lane`).

Every layer checks that every item came back COMMITTED: a fast wrong answer is
not a result. `--profile state` prints a cProfile of layer 1 instead.
The report goes to stdout and to `bench-results/ledger-micro-<ts>.txt`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import platform
import pstats
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from ledger_node.state import Ledger, Response
from ledger_node.store import Store
from ledger_node.testing import NOW_MS, account, deposit, move
from ledger_node.writer import Writer
from shardbank import frame_lane, limits, service_auth
from shardbank.node_stream import NodeStream
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

SHARD_ID = "shard-1"
# Accounts the transfers move between: enough that one batch rarely touches
# an account twice, few enough to open in a second.
ACCOUNTS_DEFAULT = 10_000
# Opening balance of each account, minor units: far above what a run moves out.
FUNDING_MINOR = 10**12
TRANSFER_AMOUNT_MAX_MINOR = 100
CONCURRENCY_DEFAULT = 4
NODE_START_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 60.0
COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
RESULTS_DIR = Path("bench-results")


def _chunks(items: Sequence[types_pb2.Transfer], size: int) -> Iterator[Sequence[types_pb2.Transfer]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def setup_requests(
    accounts: int,
) -> tuple[list[int], list[ledger_pb2.ApplyTransfersRequest | ledger_pb2.CreateAccountsRequest]]:
    """Open `accounts` accounts and fund each (requests of at most BATCH_ITEMS_MAX items)."""
    opened = [account() for _ in range(accounts)]
    requests: list[ledger_pb2.ApplyTransfersRequest | ledger_pb2.CreateAccountsRequest] = []
    step = limits.BATCH_ITEMS_MAX // 2
    for start in range(0, accounts, step):
        requests.append(
            ledger_pb2.CreateAccountsRequest(accounts=opened[start : start + step], actor="bench")
        )
    funding = [deposit(a.id, FUNDING_MINOR) for a in opened]
    requests.extend(ledger_pb2.ApplyTransfersRequest(transfers=chunk) for chunk in _chunks(funding, step))
    return [a.id for a in opened], requests


def workload(
    account_ids: list[int], transfers: int, batch: int, seed: int
) -> list[ledger_pb2.ApplyTransfersRequest]:
    """`transfers` TRANSFER items in requests of `batch`, fresh ids, between random accounts."""
    rng = random.Random(seed)
    items = []
    for _ in range(transfers):
        debit, credit = rng.sample(account_ids, 2)
        items.append(
            move(
                debit,
                credit,
                rng.randint(1, TRANSFER_AMOUNT_MAX_MINOR),
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            )
        )
    return [ledger_pb2.ApplyTransfersRequest(transfers=chunk) for chunk in _chunks(items, batch)]


def _check_committed(response: Response | ledger_pb2.TransfersResponse | ledger_pb2.AccountsResponse) -> int:
    if isinstance(response, ledger_pb2.TransfersResponse):
        bad = [t for t in response.transfers if t.status != COMMITTED]
        if bad:
            raise SystemExit(f"bench: a transfer did not commit: {bad[0]}")
        return len(response.transfers)
    if isinstance(response, ledger_pb2.AccountsResponse):
        bad_accounts = [r for r in response.results if r.code != 0]
        if bad_accounts:
            raise SystemExit(f"bench: an account did not open: {bad_accounts[0]}")
        return len(response.results)
    raise SystemExit(f"bench: whole request refused: {response}")


# ---------------------------------------------------------------- layer 1


def run_state(
    setup: list[object], work: list[ledger_pb2.ApplyTransfersRequest], profile: bool
) -> tuple[float, float]:
    kv: dict[bytes, bytes] = {}
    ledger = Ledger(SHARD_ID, kv.get, lambda _account_id: True)
    now_ms = NOW_MS

    def apply(request: object) -> None:
        nonlocal now_ms
        now_ms += 1
        responses, writes = ledger.apply([request], now_ms)  # type: ignore[list-item]
        for key, value in writes:
            if value is None:
                kv.pop(key, None)
            else:
                kv[key] = value
        for response in responses:
            _check_committed(response)

    for request in setup:
        apply(request)
    profiler = cProfile.Profile(time.process_time) if profile else None
    started, cpu_started = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    for request in work:
        apply(request)
    if profiler is not None:
        profiler.disable()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
    return elapsed, cpu


# ---------------------------------------------------------------- layer 2


async def _drive_writer(writer: Writer, requests: Sequence[object], concurrency: int) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        while queue:
            response = await writer.submit(queue.pop())  # type: ignore[arg-type]
            _check_committed(response)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _run_store(
    path: str, setup: list[object], work: list[ledger_pb2.ApplyTransfersRequest], concurrency: int
) -> tuple[float, float, int]:
    store = Store(path)
    try:
        loaded = store.load()
        ledger = Ledger(SHARD_ID, store.get, lambda _account_id: True, accounts=loaded.accounts)

        async def fatal(exc: BaseException) -> None:
            raise SystemExit(f"bench: writer failed: {exc!r}")

        writer = Writer(ledger, store, fatal)
        task = asyncio.create_task(writer.run())
        await _drive_writer(writer, setup, 1)
        drains_before = writer.drains
        started, cpu_started = time.perf_counter(), time.process_time()
        await _drive_writer(writer, work, concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        drains = writer.drains - drains_before
        writer.stop()
        await task
        return elapsed, cpu, drains
    finally:
        store.close()


# ---------------------------------------------------------------- layer 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def _wait_ready(stub: ledger_pb2_grpc.LedgerNodeStub, node: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise SystemExit(f"bench: node exited with {node.returncode} before serving")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.GetNodeInfo(ledger_pb2.GetNodeInfoRequest(), timeout=1.0)
            return
        await asyncio.sleep(0.1)
    raise SystemExit("bench: node did not start serving in time")


async def _run_grpc(
    data_dir: str,
    setup: list[object],
    work: list[ledger_pb2.ApplyTransfersRequest],
    concurrency: int,
    transport: str = "unary",
) -> tuple[float, float]:
    """Layer 3 (`transport` "unary"), or the same requests as messages on one
    `NodeStream` (`shardbank.node_stream`) over a gRPC `WriteStream` (layer 4,
    "stream") or the frame lane (layer 5, "frames"), `concurrency` in flight."""
    address = f"127.0.0.1:{_free_port()}"
    frame_address = f"127.0.0.1:{_free_port()}"
    command = [
        sys.executable,
        "-m",
        "ledger_node",
        "--shard-id",
        SHARD_ID,
        "--listen",
        address,
        "--data-dir",
        data_dir,
        "--etcd",
        "",
        "--frame-listen",
        frame_address,
    ]
    env = {k: v for k, v in os.environ.items() if k != service_auth.SECRET_FILE_ENV}  # auth off
    node = subprocess.Popen(command, stderr=subprocess.DEVNULL, env=env)
    try:
        options = [
            ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
            ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
        ]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = ledger_pb2_grpc.LedgerNodeStub(channel)
            await _wait_ready(stub, node)
            for request in setup:
                if isinstance(request, ledger_pb2.CreateAccountsRequest):
                    _check_committed(await stub.CreateAccounts(request, timeout=CALL_TIMEOUT_S))
                else:
                    _check_committed(await stub.ApplyTransfers(request, timeout=CALL_TIMEOUT_S))
            queue = list(reversed(work))
            if transport == "frames":
                lane = frame_lane.opener(frame_address, frame_lane.Credentials(b"", "bench"), SHARD_ID)
                stream = NodeStream(lane, SHARD_ID)
            else:
                stream = NodeStream(stub.WriteStream, SHARD_ID)

            async def worker() -> None:
                while queue:
                    if transport != "unary":
                        reply = await stream.send(queue.pop(), CALL_TIMEOUT_S)
                        _check_committed(reply.transfers)
                    else:
                        _check_committed(await stub.ApplyTransfers(queue.pop(), timeout=CALL_TIMEOUT_S))

            started, node_cpu_started = time.perf_counter(), _cpu_seconds(node.pid)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            measured = time.perf_counter() - started, _cpu_seconds(node.pid) - node_cpu_started
            await stream.close()
            return measured
    finally:
        node.terminate()
        try:
            node.wait(NODE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.ledger_micro", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--transfers", type=int, default=200_000, help="measured transfers per layer")
    parser.add_argument("--batch", type=int, default=1000, help="transfers per ApplyTransfers request")
    parser.add_argument("--accounts", type=int, default=ACCOUNTS_DEFAULT)
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY_DEFAULT, help="requests in flight (layers 2, 3)"
    )
    parser.add_argument(
        "--layers",
        default="state,store,grpc,stream,frames",
        help="comma-separated subset of state,store,grpc,stream,frames",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the state layer (slower; not a result)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="do not write bench-results/")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= limits.BATCH_ITEMS_MAX:
        parser.error(f"--batch must be 1..{limits.BATCH_ITEMS_MAX}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    lines = [
        f"ledger_micro {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  python {platform.python_version()}"
        f"  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.1f}",
        f"command: python -m loadtest.ledger_micro {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"transfers {args.transfers}  batch {args.batch}  accounts {args.accounts}"
        f"  concurrency {args.concurrency}",
    ]
    for line in lines:
        print(line, flush=True)
    account_ids, setup = setup_requests(args.accounts)
    work = workload(account_ids, args.transfers, args.batch, args.seed)
    setup_objects: list[object] = list(setup)

    def report(layer: str, elapsed: float, cpu: float, extra: str = "") -> None:
        line = (
            f"{layer:<6} {args.transfers / elapsed:>9,.0f} transfers/s wall ({elapsed:6.2f} s)"
            f" {args.transfers / cpu:>9,.0f} transfers/CPU-s ({cpu:6.2f} s){extra}"
        )
        lines.append(line)
        print(line, flush=True)

    if "state" in layers:
        report("state", *run_state(setup_objects, work, args.profile), "  Ledger.apply over a dict")
    if "store" in layers:
        path = tempfile.mkdtemp(prefix="ledger-micro-store-")
        try:
            elapsed, cpu, drains = asyncio.run(_run_store(path, setup_objects, work, args.concurrency))
        finally:
            shutil.rmtree(path, ignore_errors=True)
        report("store", elapsed, cpu, f"  + RocksDB synced WriteBatch via Writer, {drains} drains")
    if "grpc" in layers:
        path = tempfile.mkdtemp(prefix="ledger-micro-grpc-")
        try:
            elapsed, cpu = asyncio.run(_run_grpc(path, setup_objects, work, args.concurrency))
        finally:
            shutil.rmtree(path, ignore_errors=True)
        report("grpc", elapsed, cpu, "  + node process, ApplyTransfers over 127.0.0.1 (CPU: node only)")
    for layer, what in (("stream", "gRPC WriteStream"), ("frames", "frame lane")):
        if layer not in layers:
            continue
        path = tempfile.mkdtemp(prefix=f"ledger-micro-{layer}-")
        try:
            elapsed, cpu = asyncio.run(_run_grpc(path, setup_objects, work, args.concurrency, layer))
        finally:
            shutil.rmtree(path, ignore_errors=True)
        report(layer, elapsed, cpu, f"  + node process, {what} messages (CPU: node only)")
    if not args.no_save and not args.profile:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"ledger-micro-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        out.write_text("\n".join(lines) + "\n")
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
