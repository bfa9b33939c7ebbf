"""Locust load for shardbank: a gRPC user (over `clients.client.BankClient`) and an HTTP/JSON user.

    locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 30s \\
        --host http://127.0.0.1:8080 --csv bench-results/locust --csv-full-history
    python -m loadtest.plot bench-results/locust bench-results/locust.png

Pick one user class by naming it (`... BankGrpcUser` or `... BankHttpUser`);
by default Locust runs both. Environment variables:

- `SHARDBANK_SCENARIO`: `single` (both accounts on one shard), `cross`
  (two shards, 2PC), `mix` (80/20 single/cross; default) or `batch` (mix,
  `SHARDBANK_BATCH` transfers per call: `SubmitTransfers` / `POST /v1/transfers:batch`);
- `SHARDBANK_BATCH`: transfers per call for `batch` (default 100; HTTP takes at most 1000);
- `SHARDBANK_ACCOUNTS`: accounts opened and funded on `test_start` (default 2000);
- `SHARDBANK_GATEWAY`: the gateway's gRPC address (default: `--host`'s host, port 50051);
- `SHARDBANK_ETCD`: etcd, for the slot map that pairs accounts by shard (default 127.0.0.1:2379);
- `SHARDBANK_TOKEN`: API key sent as `Authorization: Bearer` (gRPC metadata and HTTP header).

Each call is one Locust request (type `grpc` or `POST`); each successful call
also fires a `TRANSFERS`/`transfers` entry with `response_length` = the
transfers it committed and no response time (so latency percentiles are the
calls' alone). Its request count x average content size is the number of
transfers; `loadtest/plot.py` turns that into transfers/s over time, and a
`transfers: ... /s` line is printed when the test stops.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, ClassVar
from urllib.parse import urlparse

import grpc
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC's sync client must yield to gevent

from locust import FastHttpUser, User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from clients.channel import CHANNEL_OPTIONS  # noqa: E402
from clients.client import BankClient  # noqa: E402
from loadtest import bench  # noqa: E402
from shardbank import ids  # noqa: E402
from shardbank.v1 import bank_pb2, bank_pb2_grpc, types_pb2  # noqa: E402

SCENARIOS = ("single", "cross", "mix", "batch")
CROSS_SHARD_FRACTION_MIX = 0.2
# Transfers per call of `batch`; HTTP refuses more than 1000 per request.
BATCH_ITEMS_DEFAULT = 100
BATCH_ITEMS_MAX = 1000
ACCOUNTS_DEFAULT = 2000
GRPC_PORT_DEFAULT = 50051
CALL_DEADLINE_S = 30.0
TRANSFERS_TYPE = "TRANSFERS"
TRANSFERS_NAME = "transfers"
COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
COMMITTED_JSON = types_pb2.TransferStatus.Name(COMMITTED)


def _settings() -> dict[str, Any]:
    scenario = os.environ.get("SHARDBANK_SCENARIO", "mix")
    if scenario not in SCENARIOS:
        raise SystemExit(f"SHARDBANK_SCENARIO must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    batch = int(os.environ.get("SHARDBANK_BATCH", BATCH_ITEMS_DEFAULT))
    if not 1 <= batch <= BATCH_ITEMS_MAX:
        raise SystemExit(f"SHARDBANK_BATCH must be 1..{BATCH_ITEMS_MAX}")
    return {
        "scenario": scenario,
        "batch": batch if scenario == "batch" else 1,
        "cross_fraction": {"single": 0.0, "cross": 1.0}.get(scenario, CROSS_SHARD_FRACTION_MIX),
        "accounts": int(os.environ.get("SHARDBANK_ACCOUNTS", ACCOUNTS_DEFAULT)),
        "etcd": os.environ.get("SHARDBANK_ETCD", "127.0.0.1:2379"),
        "token": os.environ.get("SHARDBANK_TOKEN") or None,
    }


SETTINGS = _settings()


class Shared:
    """Accounts by shard, filled once on test_start; read by every user."""

    groups: ClassVar[dict[str, list[int]]] = {}
    ready = threading.Event()
    started_at = 0.0
    transfers = 0


def grpc_target(host: str | None) -> str:
    found = os.environ.get("SHARDBANK_GATEWAY")
    if found:
        return found
    hostname = urlparse(host).hostname if host and "://" in host else None
    return f"{hostname or '127.0.0.1'}:{GRPC_PORT_DEFAULT}"


def _open_and_fund(target: str, count: int, token: str | None) -> list[int]:
    """Batched OpenAccounts (the client has no batch open) and batched deposits."""
    metadata = bench.grpc_metadata(token)
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    try:
        stub = bank_pb2_grpc.BankStub(channel)
        opened: list[int] = []
        salt = random.randrange(10**6)
        for first in range(0, count, bench.SETUP_BATCH_ITEMS):
            items = [
                bank_pb2.OpenAccountRequest(
                    currency=bench.CURRENCY,
                    type=types_pb2.ACCOUNT_TYPE_PERSONAL,
                    holder=types_pb2.Holder(
                        name=f"Locust {n}",
                        id_type=types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID,
                        id_number=bench.resident_id(salt + n),
                        phone=f"+86137{n % 10**8:08d}",
                    ),
                )
                for n in range(first, min(count, first + bench.SETUP_BATCH_ITEMS))
            ]
            reply = stub.OpenAccounts(
                bank_pb2.OpenAccountsRequest(accounts=items),
                timeout=CALL_DEADLINE_S,
                wait_for_ready=True,
                metadata=metadata,
            )
            refused = [r for r in reply.results if r.code != 0]
            if refused:
                raise RuntimeError(f"OpenAccounts refused {len(refused)}: {refused[0].reason}")
            opened += [r.account.id for r in reply.results]
        deposits = [
            types_pb2.Transfer(
                kind=types_pb2.TRANSFER_KIND_DEPOSIT,
                credit_account_id=a,
                amount=bench.OPENING_DEPOSIT_MINOR,
                currency=bench.CURRENCY,
            )
            for a in opened
        ]
        with _bank_client(target, token, channel) as bank:
            refused_deposits = [o for o in bank.submit_transfers(deposits) if o.code != 0]
        if refused_deposits:
            raise RuntimeError(f"{len(refused_deposits)} deposits refused: {refused_deposits[0].reason}")
        return opened
    finally:
        channel.close()


def _bank_client(target: str, token: str | None, channel: grpc.Channel | None = None) -> BankClient:
    # `token=` only when there is one: works before and after the client grows the argument.
    kwargs: dict[str, Any] = {"token": token} if token else {}
    return BankClient(target, deadline_s=CALL_DEADLINE_S, channel=channel, **kwargs)


@events.test_start.add_listener  # type: ignore[untyped-decorator,unused-ignore]
def _on_test_start(environment: Environment, **_: Any) -> None:
    if Shared.ready.is_set():
        return
    target = grpc_target(environment.host)
    began = time.monotonic()
    opened = _open_and_fund(target, SETTINGS["accounts"], SETTINGS["token"])
    slot_map = bench.read_slot_map(SETTINGS["etcd"])
    Shared.groups = bench.group_by_shard(opened, slot_map.owner)
    Shared.started_at = time.monotonic()
    Shared.ready.set()
    per_shard = ", ".join(f"{s} {len(m)}" for s, m in Shared.groups.items())
    print(
        f"shardbank: opened and funded {len(opened)} accounts in {time.monotonic() - began:.1f} s "
        f"({per_shard}); scenario {SETTINGS['scenario']}, {SETTINGS['batch']} per call",
        flush=True,
    )


@events.test_stop.add_listener  # type: ignore[untyped-decorator,unused-ignore]
def _on_test_stop(environment: Environment, **_: Any) -> None:
    entry = environment.stats.entries.get((TRANSFERS_NAME, TRANSFERS_TYPE))
    if entry is None or not Shared.started_at:
        return
    elapsed_s = max(1e-9, time.monotonic() - Shared.started_at)
    print(
        f"transfers: {entry.total_content_length} committed in {elapsed_s:.1f} s = "
        f"{entry.total_content_length / elapsed_s:,.0f} transfers/s "
        f"({entry.num_requests} calls, scenario {SETTINGS['scenario']})",
        flush=True,
    )


def _batch(rng: random.Random) -> list[types_pb2.Transfer]:
    Shared.ready.wait()
    items = []
    for _ in range(SETTINGS["batch"]):
        debit, credit = bench.pick_pair(Shared.groups, rng.random() < SETTINGS["cross_fraction"], rng)
        items.append(
            types_pb2.Transfer(
                id=ids.new_transfer_id(),
                kind=types_pb2.TRANSFER_KIND_TRANSFER,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=rng.randint(1, bench.AMOUNT_MINOR_MAX),
                currency=bench.CURRENCY,
            )
        )
    return items


def _fire_transfers(environment: Environment, committed: int) -> None:
    environment.events.request.fire(  # type: ignore[no-untyped-call,unused-ignore]
        request_type=TRANSFERS_TYPE,
        name=TRANSFERS_NAME,
        response_time=None,
        response_length=committed,
        exception=None,
        context={},
    )


class BankGrpcUser(User):
    """Closed loop over gRPC: one call at a time per user, through `BankClient`."""

    def on_start(self) -> None:
        self.rng = random.Random()
        self.bank = _bank_client(grpc_target(self.host), SETTINGS["token"])

    def on_stop(self) -> None:
        self.bank.close_channel()

    @task
    def submit(self) -> None:
        batch = _batch(self.rng)
        name = f"SubmitTransfers[{SETTINGS['scenario']} x{len(batch)}]"
        began = time.perf_counter()
        committed = 0
        error: Exception | None = None
        try:
            if len(batch) == 1:
                t = batch[0]
                outcome = self.bank.transfer(
                    t.debit_account_id, t.credit_account_id, t.amount, t.currency, t.id
                )
                committed = int(outcome.status == COMMITTED)
            else:
                outcomes = self.bank.submit_transfers(batch)
                # Only COMMITTED counts as a transfer; PENDING (held for a
                # risk review) is not a failure, nor a transfer done.
                committed = sum(1 for o in outcomes if o.status == COMMITTED)
                refused = sum(1 for o in outcomes if o.code != 0)
                if refused:
                    error = RuntimeError(f"{refused} of {len(outcomes)} transfers refused")
        except Exception as exc:  # reported to Locust as a failed request
            error = exc
        elapsed_ms = (time.perf_counter() - began) * 1000.0
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=len(batch),
            exception=error,
            context={},
        )
        if committed:
            _fire_transfers(self.environment, committed)


class BankHttpUser(FastHttpUser):
    """Closed loop over HTTP/JSON: `POST /v1/transfers`, or `/v1/transfers:batch` for `batch`."""

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = bench.http_headers(SETTINGS["token"])

    @task
    def submit(self) -> None:
        batch = _batch(self.rng)
        name = f"POST /v1/transfers[{SETTINGS['scenario']} x{len(batch)}]"
        if len(batch) == 1:
            body: dict[str, Any] = bench.transfer_json(batch[0], with_kind=False)
            path, ok = "/v1/transfers", frozenset({201, 202})
        else:
            body = {"transfers": [bench.transfer_json(t, with_kind=True) for t in batch]}
            path, ok = "/v1/transfers:batch", frozenset({200})
        with self.client.post(path, json=body, headers=self.headers, name=name, catch_response=True) as r:
            if r.status_code not in ok:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return
            # 201 committed, 202 pending (e.g. held for a risk review: not a
            # failure, not a transfer done either).
            committed, refused = int(r.status_code == 201), 0
            if len(batch) > 1:
                outcomes = (r.json() or {}).get("transfers", [])
                committed = sum(1 for o in outcomes if o.get("status") == COMMITTED_JSON)
                refused = sum(1 for o in outcomes if o.get("code"))
            if refused:
                r.failure(f"{refused} of {len(batch)} transfers refused")
            else:
                r.success()
        _fire_transfers(self.environment, committed)
