"""The 2PC rounds and recovery over real gRPC, against in-memory fake ledger
nodes that follow docs/internals.md ("Ledger node semantics", 2PC part).

The fakes let the protocol be tested before (and independently of) the real
ledger node: the integration tests run the same flows against real nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from coordinator import twopc as twopc_module
from coordinator.recovery import Recovery
from coordinator.shards import Deadlines, Shards
from coordinator.twopc import TwoPhaseCommit
from ledger_node import write_stream
from shardbank import errors
from shardbank.directory import UnknownShard
from shardbank.node_stream import NodeStream
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

S = ledger_pb2
T = types_pb2
OK, NOT_FOUND, ALREADY_EXISTS, PRECONDITION, ABORTED = 0, 5, 6, 9, 10
STATE_OF = {S.DECISION_COMMIT: S.LEG_STATE_COMMITTED, S.DECISION_ABORT: S.LEG_STATE_ABORTED}

TEST_TIMEOUT_S = 30
ALICE, BOB, CAROL, SHOP = 4000000000000002, 4000000000000010, 4000000000000028, 4000000000000036


def body_key(t: T.Transfer) -> tuple[Any, ...]:
    return (t.kind, t.debit_account_id, t.credit_account_id, t.amount, t.currency, t.memo, t.reference)


@dataclass
class Acct:
    currency: str = "CNY"
    balance: int = 0
    held: int = 0
    pending_credit: int = 0
    status: int = T.ACCOUNT_STATUS_ACTIVE
    type: int = T.ACCOUNT_TYPE_PERSONAL


@dataclass
class Rec:
    transfer: T.Transfer
    state: Any
    code: int = 0
    reason: str = ""
    prepared_at_unix_ms: int = 0


class Aborted(Exception):
    """A fake handler's abort, caught per stream message."""

    def __init__(self, error: S.WriteError) -> None:
        super().__init__(error.reason)
        self.error = error


class MessageContext:
    """What a fake handler answering one stream message aborts through: the
    abort becomes that message's error reply, as the real node's does."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(S.WriteError(code=code.value[0], reason=code.name, message=details))

    async def abort_with_status(self, status: grpc.Status) -> None:
        rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
        info = error_details_pb2.ErrorInfo()
        rich.details[0].Unpack(info)
        raise Aborted(S.WriteError(code=rich.code, reason=info.reason, message=rich.message))


@dataclass
class FakeNode(ledger_pb2_grpc.LedgerNodeServicer):
    shard_id: str
    accounts: dict[int, Acct] = field(default_factory=dict)
    records: dict[str, Rec] = field(default_factory=dict)
    legs: dict[str, Rec] = field(default_factory=dict)
    max_epoch: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    down: set[str] = field(default_factory=set)
    moved: set[int] = field(default_factory=set)  # accounts whose slot left this shard
    delay_s: float = 0.0
    # Prepare calls running at once (the most seen), and how often an id was
    # in two of them at once.
    prepares_now: int = 0
    prepares_most: int = 0
    id_overlaps: int = 0
    ids_now: Counter[str] = field(default_factory=Counter)

    async def _gate(self, method: str, epoch: int | None, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if method in self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        if epoch is not None:
            if epoch < self.max_epoch:
                await errors.abort(
                    context, errors.BankError(grpc.StatusCode.ABORTED, errors.STALE_EPOCH, "stale")
                )
            self.max_epoch = epoch

    async def WriteStream(
        self, requests: AsyncIterator[S.WriteMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[S.WriteReply]:
        """Each message through the fake's unary handler of its kind."""
        async for reply in write_stream.serve(requests, self._answer, asyncio.Event()):
            yield reply

    async def _answer(self, message: S.WriteMessage) -> S.WriteReply:
        kind = message.WhichOneof("body")
        handler = {
            "apply_transfers": self.ApplyTransfers,
            "prepare": self.Prepare,
            "decide": self.Decide,
            "finish": self.Finish,
        }[kind or ""]
        try:
            response = await handler(getattr(message, kind or ""), MessageContext())  # type: ignore[operator]
        except Aborted as aborted:
            return S.WriteReply(id=message.id, error=aborted.error)
        if isinstance(response, S.TransfersResponse):
            return S.WriteReply(id=message.id, transfers=response)
        return S.WriteReply(id=message.id, legs=response)

    def _leg(self, rec: Rec, role: Any, code: int = OK, reason: str = "") -> S.Leg:
        transfer = T.Transfer()
        transfer.CopyFrom(rec.transfer)
        transfer.code, transfer.reason = rec.code, rec.reason
        return S.Leg(
            transfer=transfer,
            role=role,
            state=rec.state,
            code=code,
            reason=reason,
            prepared_at_unix_ms=rec.prepared_at_unix_ms,
        )

    @staticmethod
    def _refusal(t: T.Transfer, role: Any, code: int, reason: str) -> S.Leg:
        return S.Leg(transfer=t, role=role, state=S.LEG_STATE_UNKNOWN, code=code, reason=reason)

    async def Prepare(self, request: S.PrepareRequest, context: grpc.aio.ServicerContext) -> S.LegsResponse:
        self.prepares_now += 1
        self.prepares_most = max(self.prepares_most, self.prepares_now)
        for item in request.items:
            self.ids_now[item.transfer.id] += 1
            self.id_overlaps += self.ids_now[item.transfer.id] > 1
        try:
            await self._gate("Prepare", request.epoch, context)
        finally:
            self.prepares_now -= 1
            for item in request.items:
                self.ids_now[item.transfer.id] -= 1
        legs = [self._prepare(item.transfer, item.role) for item in request.items]
        return S.LegsResponse(legs=legs)

    def _prepare(self, t: T.Transfer, role: int) -> S.Leg:
        debit = role == T.LEG_ROLE_DEBIT
        account_id = t.debit_account_id if debit else t.credit_account_id
        if account_id in self.moved:
            return self._refusal(t, role, ABORTED, errors.SLOT_MOVED)
        table = self.records if debit else self.legs
        existing = table.get(t.id)
        if existing is not None:
            if body_key(existing.transfer) != body_key(t):
                return self._refusal(t, role, ALREADY_EXISTS, errors.TRANSFER_ID_CONFLICT)
            return self._leg(existing, role, existing.code, existing.reason)
        code, reason = self._check(t, account_id, debit)
        rec = Rec(
            T.Transfer(),
            S.LEG_STATE_ABORTED if code else S.LEG_STATE_PREPARED,
            code,
            reason,
            prepared_at_unix_ms=now_ms(),
        )
        rec.transfer.CopyFrom(t)
        table[t.id] = rec
        if not code:
            if debit:
                self.accounts[account_id].held += t.amount
            else:
                self.accounts[account_id].pending_credit += t.amount
        return self._leg(rec, role, code, reason)

    def _check(self, t: T.Transfer, account_id: int, debit: bool) -> tuple[int, str]:
        acct = self.accounts.get(account_id)
        if acct is None:
            return NOT_FOUND, errors.ACCOUNT_NOT_FOUND
        if acct.status == T.ACCOUNT_STATUS_FROZEN:
            return PRECONDITION, errors.ACCOUNT_FROZEN
        if acct.currency != t.currency:
            return PRECONDITION, errors.CURRENCY_MISMATCH
        if debit and acct.balance - acct.held < t.amount:
            return PRECONDITION, errors.INSUFFICIENT_FUNDS
        if not debit and t.kind == T.TRANSFER_KIND_PAYMENT and acct.type != T.ACCOUNT_TYPE_BUSINESS:
            return PRECONDITION, errors.NOT_A_MERCHANT
        return OK, ""

    async def Decide(self, request: S.DecideRequest, context: grpc.aio.ServicerContext) -> S.LegsResponse:
        await self._gate("Decide", request.epoch, context)
        return S.LegsResponse(legs=[self._settle(item, debit=True) for item in request.items])

    async def Finish(self, request: S.FinishRequest, context: grpc.aio.ServicerContext) -> S.LegsResponse:
        await self._gate("Finish", request.epoch, context)
        return S.LegsResponse(legs=[self._settle(item, debit=False) for item in request.items])

    def _settle(self, item: S.DecideItem, debit: bool) -> S.Leg:
        table = self.records if debit else self.legs
        role = T.LEG_ROLE_DEBIT if debit else T.LEG_ROLE_CREDIT
        rec = table.get(item.transfer_id)
        wanted = STATE_OF[item.decision]
        if rec is None and item.direct and item.decision == S.DECISION_COMMIT:
            return self._commit_direct(item.transfer)
        # Another body under this id (a tombstone without a body matches any).
        other_body = (
            rec is not None and rec.transfer.kind and body_key(rec.transfer) != body_key(item.transfer)
        )
        if other_body and item.HasField("transfer"):
            return self._refusal(item.transfer, role, ALREADY_EXISTS, errors.TRANSFER_ID_CONFLICT)
        review_hold = (
            rec is not None and rec.state == S.LEG_STATE_PREPARED and rec.transfer.review_deadline_unix_ms
        )
        if rec is not None and item.direct and review_hold:
            return self._leg(rec, role)  # a direct decide leaves a review hold alone
        if rec is None:
            if item.decision == S.DECISION_COMMIT:
                return self._refusal(item.transfer, role, NOT_FOUND, errors.TRANSFER_NOT_FOUND)
            rec = Rec(T.Transfer(), S.LEG_STATE_ABORTED, item.code, item.reason)  # tombstone
            rec.transfer.CopyFrom(item.transfer)
            table[item.transfer_id] = rec
            return self._leg(rec, role)
        if rec.state == S.LEG_STATE_PREPARED:
            acct = self.accounts[rec.transfer.debit_account_id if debit else rec.transfer.credit_account_id]
            amount = rec.transfer.amount
            if debit:
                acct.held -= amount
                acct.balance -= amount if wanted == S.LEG_STATE_COMMITTED else 0
            else:
                acct.pending_credit -= amount
                acct.balance += amount if wanted == S.LEG_STATE_COMMITTED else 0
            rec.state = wanted
            if wanted == S.LEG_STATE_ABORTED:
                rec.code, rec.reason = item.code, item.reason
            return self._leg(rec, role)
        if rec.state == wanted:
            return self._leg(rec, role)
        return self._leg(rec, role, PRECONDITION, errors.CONTRADICTORY_DECISION)

    def _commit_direct(self, t: T.Transfer) -> S.Leg:
        """Decide(COMMIT, direct) with no record: check the debit as Prepare
        would and post it at once (record COMMITTED, or ABORTED refused)."""
        account_id = t.debit_account_id
        if account_id in self.moved:
            return self._refusal(t, T.LEG_ROLE_DEBIT, ABORTED, errors.SLOT_MOVED)
        code, reason = self._check(t, account_id, debit=True)
        rec = Rec(T.Transfer(), S.LEG_STATE_ABORTED if code else S.LEG_STATE_COMMITTED, code, reason)
        rec.transfer.CopyFrom(t)
        self.records[t.id] = rec
        if not code:
            self.accounts[account_id].balance -= t.amount
        return self._leg(rec, T.LEG_ROLE_DEBIT, code, reason)

    async def ListInDoubt(
        self, request: S.ListInDoubtRequest, context: grpc.aio.ServicerContext
    ) -> S.LegsResponse:
        await self._gate("ListInDoubt", None, context)
        cutoff = now_ms() - request.older_than_ms
        found = [
            self._leg(r, T.LEG_ROLE_DEBIT)
            for r in self.records.values()
            if r.state == S.LEG_STATE_PREPARED and r.prepared_at_unix_ms <= cutoff
        ]
        found += [
            self._leg(r, T.LEG_ROLE_CREDIT)
            for r in self.legs.values()
            if r.state == S.LEG_STATE_PREPARED and r.prepared_at_unix_ms <= cutoff
        ]
        return S.LegsResponse(legs=found)

    async def ApplyTransfers(
        self, request: S.ApplyTransfersRequest, context: grpc.aio.ServicerContext
    ) -> S.TransfersResponse:
        await self._gate("ApplyTransfers", None, context)
        out = []
        for t in request.transfers:
            result = T.Transfer()
            result.CopyFrom(t)
            self.accounts[t.debit_account_id].balance -= t.amount
            self.accounts[t.credit_account_id].balance += t.amount
            result.status = T.TRANSFER_STATUS_COMMITTED
            out.append(result)
        return S.TransfersResponse(transfers=out)


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeLeadership:
    def __init__(self) -> None:
        self.epoch_value = 7
        self.step_downs: list[str] = []

    @property
    def is_leader(self) -> bool:
        return self.epoch_value > 0

    @property
    def epoch(self) -> int:
        return self.epoch_value

    def step_down(self, why: str) -> None:
        self.step_downs.append(why)
        self.epoch_value = 0


class FakeRouter:
    def __init__(self, owners: dict[int, str], stubs: dict[str, ledger_pb2_grpc.LedgerNodeStub]) -> None:
        self.owners = owners
        self.next_owners: dict[int, str] | None = None
        self.stubs = stubs
        self.streams: dict[str, NodeStream] = {}
        self.refreshes = 0

    def owner(self, account_id: int) -> str:
        if account_id not in self.owners:
            raise UnknownShard(str(account_id))
        return self.owners[account_id]

    def stub(self, shard_id: str) -> ledger_pb2_grpc.LedgerNodeStub:
        return self.stubs[shard_id]

    def stream(self, shard_id: str) -> NodeStream:
        if shard_id not in self.streams:
            self.streams[shard_id] = NodeStream(self.stubs[shard_id].WriteStream, shard_id)
        return self.streams[shard_id]

    def shard_ids(self) -> list[str]:
        return sorted(self.stubs)

    async def refresh(self) -> None:
        self.refreshes += 1
        if self.next_owners is not None:
            self.owners, self.next_owners = self.next_owners, None


@dataclass
class Cluster:
    nodes: dict[str, FakeNode]
    router: FakeRouter
    leadership: FakeLeadership
    twopc: TwoPhaseCommit
    recovery: Recovery

    def acct(self, account_id: int) -> Acct:
        shard = self.router.owners[account_id]
        return self.nodes[shard].accounts[account_id]

    async def submit(self, *transfers: T.Transfer) -> list[T.Transfer]:
        return await asyncio.wait_for(self.twopc.submit(list(transfers)), 10)

    def no_holds(self) -> bool:
        return all(
            a.held == 0 and a.pending_credit == 0 for n in self.nodes.values() for a in n.accounts.values()
        )

    def total(self) -> int:
        return sum(a.balance for n in self.nodes.values() for a in n.accounts.values())


@contextlib.asynccontextmanager
async def make_cluster() -> AsyncIterator[Cluster]:
    nodes = {"shard-1": FakeNode("shard-1"), "shard-2": FakeNode("shard-2")}  # type: ignore[abstract]
    nodes["shard-1"].accounts = {ALICE: Acct(balance=1000), CAROL: Acct(balance=50)}
    nodes["shard-2"].accounts = {BOB: Acct(), SHOP: Acct(type=T.ACCOUNT_TYPE_BUSINESS)}
    servers, channels, stubs = [], [], {}
    for node in nodes.values():
        server, channel = await serve_node(node)
        servers.append(server)
        channels.append(channel)
        stubs[node.shard_id] = ledger_pb2_grpc.LedgerNodeStub(channel)
    owners = {ALICE: "shard-1", CAROL: "shard-1", BOB: "shard-2", SHOP: "shard-2"}
    router = FakeRouter(owners, stubs)
    leadership = FakeLeadership()
    shards = Shards(router, leadership, Deadlines(0.5, 0.5, 0.5, 0.5, 0.5))
    engine = TwoPhaseCommit(shards, leadership)
    recovery = Recovery(shards, leadership, prepare_timeout_ms=0)
    loop_task = asyncio.create_task(engine.run())
    try:
        yield Cluster(nodes, router, leadership, engine, recovery)
    finally:
        engine.close()
        loop_task.cancel()
        for stream in router.streams.values():
            await stream.close()
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(0)


async def serve_node(node: FakeNode) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    ledger_pb2_grpc.add_LedgerNodeServicer_to_server(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def with_cluster(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body on a fresh cluster in its own event loop (no
    pytest-asyncio in this project); pytest sees the body's other parameters."""

    def test(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            async with make_cluster() as cluster:
                await body(cluster, *args, **kwargs)

        asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))

    signature = inspect.signature(body)
    test.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
    test.__name__ = body.__name__
    test.__doc__ = body.__doc__
    return test


def transfer(
    debit: int = ALICE,
    credit: int = BOB,
    amount: int = 100,
    transfer_id: str | None = None,
    kind: Any = T.TRANSFER_KIND_TRANSFER,
) -> T.Transfer:
    return T.Transfer(
        id=transfer_id or str(uuid.uuid4()),
        kind=kind,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency="CNY",
    )


@with_cluster
async def test_commit_moves_money_once(cluster: Cluster) -> None:
    t = transfer(amount=300)
    (result,) = await cluster.submit(t)
    assert (result.status, result.code, result.cross_shard) == (T.TRANSFER_STATUS_COMMITTED, 0, True)
    assert cluster.acct(ALICE).balance == 700 and cluster.acct(BOB).balance == 300
    assert cluster.no_holds()
    # Same id, same body: same outcome, nothing moves again.
    (again,) = await cluster.submit(t)
    assert again.status == T.TRANSFER_STATUS_COMMITTED
    assert cluster.acct(ALICE).balance == 700 and cluster.acct(BOB).balance == 300
    assert all(n.max_epoch == 7 for n in cluster.nodes.values())


@pytest.mark.parametrize(
    ("setup", "t", "reason"),
    [
        (lambda c: None, transfer(amount=5000), errors.INSUFFICIENT_FUNDS),
        (
            lambda c: setattr(c.acct(BOB), "status", T.ACCOUNT_STATUS_FROZEN),
            transfer(),
            errors.ACCOUNT_FROZEN,
        ),
        (lambda c: setattr(c.acct(BOB), "currency", "USD"), transfer(), errors.CURRENCY_MISMATCH),
        (lambda c: None, transfer(kind=T.TRANSFER_KIND_PAYMENT), errors.NOT_A_MERCHANT),
    ],
)
@with_cluster
async def test_refusals_abort_both_legs(
    cluster: Cluster, setup: Callable[[Cluster], None], t: T.Transfer, reason: str
) -> None:
    setup(cluster)
    (result,) = await cluster.submit(t)
    assert (result.status, result.code, result.reason) == (T.TRANSFER_STATUS_ABORTED, PRECONDITION, reason)
    assert cluster.no_holds() and cluster.total() == 1050
    assert cluster.nodes["shard-1"].records[t.id].state == S.LEG_STATE_ABORTED
    # Final for this id.
    (again,) = await cluster.submit(t)
    assert (again.status, again.reason) == (T.TRANSFER_STATUS_ABORTED, reason)


@with_cluster
async def test_payment_to_merchant_commits(cluster: Cluster) -> None:
    (result,) = await cluster.submit(transfer(credit=SHOP, kind=T.TRANSFER_KIND_PAYMENT))
    assert result.status == T.TRANSFER_STATUS_COMMITTED
    assert cluster.acct(SHOP).balance == 100


@with_cluster
async def test_concurrent_requests_share_rpcs(cluster: Cluster) -> None:
    cluster.nodes["shard-1"].delay_s = 0.02  # let requests pile up behind a round
    results = await asyncio.gather(*(cluster.submit(transfer(amount=10)) for _ in range(60)))
    assert all(r.status == T.TRANSFER_STATUS_COMMITTED for (r,) in results)
    assert cluster.acct(ALICE).balance == 400 and cluster.acct(BOB).balance == 600
    calls = cluster.nodes["shard-1"].calls
    assert calls["Prepare"] < 10 and calls["Decide"] < 10, calls
    assert cluster.nodes["shard-2"].calls["Finish"] < 10


@with_cluster
async def test_a_trickle_waits_for_the_round_in_flight(cluster: Cluster) -> None:
    """Single transfers arriving while a round is in flight (fewer than
    PIPELINE_ITEMS_MIN queued) wait for it and go together: no overlap."""
    cluster.nodes["shard-2"].delay_s = 0.05

    async def later(delay_s: float) -> list[T.Transfer]:
        await asyncio.sleep(delay_s)
        return await cluster.submit(transfer(amount=10))

    results = await asyncio.gather(*(later(0.01 * i) for i in range(12)))
    assert all(r.status == T.TRANSFER_STATUS_COMMITTED for (r,) in results)
    assert cluster.nodes["shard-2"].prepares_most == 1
    assert cluster.nodes["shard-2"].calls["Prepare"] < 12
    assert cluster.acct(ALICE).balance == 880 and cluster.no_holds()


@pytest.fixture
def pipeline_from_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twopc_module, "PIPELINE_ITEMS_MIN", 1)


@pytest.mark.usefixtures("pipeline_from_one")
@with_cluster
async def test_rounds_overlap_and_all_settle(cluster: Cluster) -> None:
    """A round does not wait for the one before it: while one waits on its
    slow Prepare, the next starts (up to ROUNDS_IN_FLIGHT_MAX at once)."""
    cluster.nodes["shard-2"].delay_s = 0.05  # the credit shard: the only one prepared
    watch = cluster.nodes["shard-2"]

    async def later(delay_s: float) -> list[T.Transfer]:
        await asyncio.sleep(delay_s)
        return await cluster.submit(transfer(amount=10))

    results = await asyncio.gather(*(later(0.01 * i) for i in range(12)))
    assert all(r.status == T.TRANSFER_STATUS_COMMITTED for (r,) in results)
    assert 2 <= watch.prepares_most <= twopc_module.ROUNDS_IN_FLIGHT_MAX
    assert cluster.acct(ALICE).balance == 880 and cluster.acct(BOB).balance == 120
    assert cluster.no_holds()


@pytest.mark.usefixtures("pipeline_from_one")
@with_cluster
async def test_one_id_never_runs_in_two_rounds_at_once(cluster: Cluster) -> None:
    """A resend of an id whose round is in flight waits for that round, then
    gets the same outcome; the money moves once."""
    cluster.nodes["shard-2"].delay_s = 0.05  # the credit shard: the only one prepared
    watch = cluster.nodes["shard-2"]
    t = transfer(amount=300)

    async def later(delay_s: float, item: T.Transfer) -> list[T.Transfer]:
        await asyncio.sleep(delay_s)
        return await cluster.submit(item)

    results = await asyncio.gather(
        later(0, t), later(0.01, transfer(amount=1)), later(0.02, t), later(0.03, t)
    )
    assert [r.status for (r,) in results] == [T.TRANSFER_STATUS_COMMITTED] * 4
    assert watch.prepares_most >= 2  # other rounds did overlap
    assert watch.id_overlaps == 0
    assert cluster.nodes["shard-2"].calls["Prepare"] >= 3  # t was prepared again, after its round
    assert cluster.acct(ALICE).balance == 699 and cluster.acct(BOB).balance == 301


@with_cluster
async def test_stopping_answers_the_rounds_in_flight(cluster: Cluster) -> None:
    """Cancelling the loop (the coordinator stops) answers the items of the
    rounds it was running: UNAVAILABLE NOT_LEADER, so the client retries."""
    cluster.nodes["shard-1"].delay_s = 0.5
    loop_task = asyncio.create_task(cluster.twopc.run())  # a second loop we can cancel
    pending = asyncio.create_task(cluster.submit(transfer()))
    await asyncio.sleep(0.1)
    loop_task.cancel()
    cluster.twopc.close()
    (result,) = await pending
    assert (result.status, result.reason) == (T.TRANSFER_STATUS_PENDING, errors.NOT_LEADER)


@with_cluster
async def test_credit_shard_down_aborts_and_releases_the_hold(cluster: Cluster) -> None:
    cluster.nodes["shard-2"].down = {"Prepare"}
    (result,) = await cluster.submit(transfer())
    assert (result.status, result.reason) == (T.TRANSFER_STATUS_ABORTED, errors.SHARD_UNAVAILABLE)
    assert cluster.acct(ALICE).held == 0 and cluster.acct(ALICE).balance == 1000


@with_cluster
async def test_record_holder_down_leaves_outcome_unknown_then_recovery_ends_it(cluster: Cluster) -> None:
    cluster.nodes["shard-1"].down = {"Prepare", "Decide"}
    t = transfer()
    (result,) = await cluster.submit(t)
    assert (result.status, result.code) == (T.TRANSFER_STATUS_PENDING, 14)
    assert cluster.acct(BOB).pending_credit == 100  # the credit leg waits for recovery
    cluster.nodes["shard-1"].down = set()
    assert await cluster.recovery.sweep() == 1
    assert cluster.no_holds()
    assert cluster.nodes["shard-1"].records[t.id].state == S.LEG_STATE_ABORTED  # tombstone
    assert cluster.nodes["shard-1"].records[t.id].reason == errors.PREPARE_TIMEOUT
    # The client retries the id: the late prepare finds the tombstone.
    (again,) = await cluster.submit(t)
    assert (again.status, again.reason) == (T.TRANSFER_STATUS_ABORTED, errors.PREPARE_TIMEOUT)
    assert cluster.no_holds() and cluster.acct(ALICE).balance == 1000


@with_cluster
async def test_crash_after_decide_before_finish_recovery_commits_credit(cluster: Cluster) -> None:
    cluster.nodes["shard-2"].down = {"Finish"}
    t = transfer(amount=250)
    (result,) = await cluster.submit(t)
    assert result.status == T.TRANSFER_STATUS_COMMITTED  # the record holder decided
    assert cluster.acct(ALICE).balance == 750 and cluster.acct(BOB).pending_credit == 250
    cluster.nodes["shard-2"].down = set()
    assert await cluster.recovery.sweep() == 1
    assert cluster.acct(BOB).balance == 250 and cluster.no_holds()


@with_cluster
async def test_crash_after_prepare_before_decide_recovery_aborts(cluster: Cluster) -> None:
    """Only the credit leg is prepared before a direct Decide: when that Decide
    is lost, recovery tombstones the record holder (presumed abort), so the
    late Decide, or a resend, finds ABORTED and the pending credit goes."""
    cluster.nodes["shard-1"].down = {"Decide"}
    t = transfer()
    (result,) = await cluster.submit(t)
    assert result.status == T.TRANSFER_STATUS_PENDING
    assert cluster.acct(ALICE).held == 0 and cluster.acct(BOB).pending_credit == 100
    assert t.id not in cluster.nodes["shard-1"].records
    cluster.nodes["shard-1"].down = set()
    assert await cluster.recovery.sweep() == 1
    assert cluster.nodes["shard-1"].records[t.id].state == S.LEG_STATE_ABORTED
    assert cluster.no_holds() and cluster.total() == 1050
    (again,) = await cluster.submit(t)
    assert again.status == T.TRANSFER_STATUS_ABORTED
    assert cluster.acct(ALICE).balance == 1000 and cluster.acct(BOB).balance == 0


@with_cluster
async def test_round_obeys_record_holder_after_recovery_aborted_it(cluster: Cluster) -> None:
    """Recovery got there first (record ABORTED): a later COMMIT is
    contradicted and the round reports ABORTED."""
    t = transfer()
    node = cluster.nodes["shard-1"]
    node.records[t.id] = Rec(T.Transfer(), S.LEG_STATE_ABORTED, ABORTED, errors.PREPARE_TIMEOUT)
    node.records[t.id].transfer.CopyFrom(t)
    (result,) = await cluster.submit(t)
    assert (result.status, result.reason) == (T.TRANSFER_STATUS_ABORTED, errors.PREPARE_TIMEOUT)
    assert cluster.no_holds()


@with_cluster
async def test_id_conflict_is_rejected_and_touches_nothing(cluster: Cluster) -> None:
    t = transfer(amount=100)
    (first,) = await cluster.submit(t)
    assert first.status == T.TRANSFER_STATUS_COMMITTED
    other = transfer(amount=101, transfer_id=t.id)
    (result,) = await cluster.submit(other)
    assert (result.status, result.code, result.reason) == (
        T.TRANSFER_STATUS_REJECTED,
        ALREADY_EXISTS,
        errors.TRANSFER_ID_CONFLICT,
    )
    assert cluster.acct(BOB).balance == 100 and cluster.no_holds()


@with_cluster
async def test_stale_epoch_steps_down(cluster: Cluster) -> None:
    cluster.nodes["shard-1"].max_epoch = 99
    cluster.nodes["shard-2"].max_epoch = 99
    (result,) = await cluster.submit(transfer())
    assert (result.status, result.reason) == (T.TRANSFER_STATUS_PENDING, errors.NOT_LEADER)
    assert cluster.leadership.step_downs and cluster.no_holds()


@with_cluster
async def test_not_leader_answers_unavailable(cluster: Cluster) -> None:
    cluster.leadership.epoch_value = 0
    (result,) = await cluster.submit(transfer())
    assert (result.status, result.reason) == (T.TRANSFER_STATUS_PENDING, errors.NOT_LEADER)
    assert sum(n.calls["Prepare"] for n in cluster.nodes.values()) == 0


@with_cluster
async def test_slot_moved_refreshes_and_retries(cluster: Cluster) -> None:
    # BOB's slot moved to shard-3, which the router learns only on refresh.
    shard3 = FakeNode("shard-3", accounts={BOB: Acct()})  # type: ignore[abstract]
    server, channel = await serve_node(shard3)
    try:
        cluster.nodes["shard-3"] = shard3
        cluster.router.stubs["shard-3"] = ledger_pb2_grpc.LedgerNodeStub(channel)
        cluster.nodes["shard-2"].moved = {BOB}
        cluster.router.next_owners = {**cluster.router.owners, BOB: "shard-3"}
        (result,) = await cluster.submit(transfer())
        assert result.status == T.TRANSFER_STATUS_COMMITTED
        assert cluster.router.refreshes == 1
        assert shard3.accounts[BOB].balance == 100
        assert cluster.no_holds()
    finally:
        await channel.close()
        await server.stop(0)


@with_cluster
async def test_same_shard_item_is_applied_in_one_step(cluster: Cluster) -> None:
    (result,) = await cluster.submit(transfer(debit=ALICE, credit=CAROL))
    assert result.status == T.TRANSFER_STATUS_COMMITTED
    assert cluster.nodes["shard-1"].calls["ApplyTransfers"] == 1
    assert cluster.nodes["shard-1"].calls["Prepare"] == 0


@with_cluster
async def test_duplicate_ids_in_flight_get_one_outcome(cluster: Cluster) -> None:
    t = transfer(amount=100)
    results = await asyncio.gather(*(cluster.submit(t) for _ in range(5)))
    assert all(r.status == T.TRANSFER_STATUS_COMMITTED for (r,) in results)
    assert cluster.acct(ALICE).balance == 900


@with_cluster
async def test_queue_is_bounded(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twopc_module, "QUEUE_ITEMS_MAX", 3)
    with pytest.raises(errors.BankError) as caught:
        await cluster.submit(*(transfer() for _ in range(4)))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.OVERLOADED)


@with_cluster
async def test_unknown_shard_is_unavailable(cluster: Cluster) -> None:
    (result,) = await cluster.submit(transfer(credit=4000000000000044))
    assert (result.status, result.code) == (T.TRANSFER_STATUS_PENDING, 14)


def _for_review(t: T.Transfer) -> T.Transfer:
    t.review_deadline_unix_ms = now_ms() + 60_000
    t.risk.decision = T.RISK_DECISION_REVIEW
    return t


@with_cluster
async def test_review_hold_is_prepared_not_decided_and_a_resubmission_cannot_skip_it(
    cluster: Cluster,
) -> None:
    t = _for_review(transfer(amount=300))
    (held,) = await cluster.submit(t)
    assert (held.status, held.code, held.reason) == (T.TRANSFER_STATUS_PENDING, OK, errors.UNDER_REVIEW)
    assert held.review_deadline_unix_ms == t.review_deadline_unix_ms
    assert cluster.nodes["shard-1"].calls["Decide"] == 0 and cluster.nodes["shard-2"].calls["Finish"] == 0
    assert (cluster.acct(ALICE).held, cluster.acct(BOB).pending_credit) == (300, 300)
    # The same id again without the review flag (an engine that now says ALLOW): still held.
    (again,) = await cluster.submit(transfer(amount=300, transfer_id=t.id))
    assert (again.status, again.reason) == (T.TRANSFER_STATUS_PENDING, errors.UNDER_REVIEW)
    # It went the direct way (no review flag): the record holder left the hold alone.
    assert cluster.nodes["shard-1"].records[t.id].state == S.LEG_STATE_PREPARED
    assert cluster.nodes["shard-2"].calls["Finish"] == 0 and cluster.acct(BOB).balance == 0
    assert (cluster.acct(ALICE).held, cluster.acct(BOB).pending_credit) == (300, 300)


@with_cluster
async def test_same_shard_review_hold_goes_through_two_phase_commit(cluster: Cluster) -> None:
    (held,) = await cluster.submit(_for_review(transfer(ALICE, CAROL, 200)))
    assert held.reason == errors.UNDER_REVIEW and not held.cross_shard
    assert cluster.nodes["shard-1"].calls["ApplyTransfers"] == 0
    assert (cluster.acct(ALICE).held, cluster.acct(CAROL).pending_credit) == (200, 200)


@with_cluster
async def test_review_hold_refused_by_the_credit_shard_aborts_as_usual(cluster: Cluster) -> None:
    cluster.nodes["shard-2"].accounts[BOB].status = T.ACCOUNT_STATUS_FROZEN
    (done,) = await cluster.submit(_for_review(transfer(amount=100)))
    assert (done.status, done.reason) == (T.TRANSFER_STATUS_ABORTED, errors.ACCOUNT_FROZEN)
    assert cluster.no_holds()


@with_cluster
async def test_one_call_gets_every_outcome_in_order(cluster: Cluster) -> None:
    """The items of one call take different paths (2PC, one shard, refused)
    and finish at different times; the call gets them back in its order."""
    cross, local, refused = transfer(amount=10), transfer(ALICE, CAROL, 20), transfer(amount=99_999)
    results = await cluster.submit(cross, local, refused, transfer(amount=30))
    assert [r.id for r in results] == [cross.id, local.id, refused.id, results[3].id]
    assert [r.status for r in results] == [
        T.TRANSFER_STATUS_COMMITTED,
        T.TRANSFER_STATUS_COMMITTED,
        T.TRANSFER_STATUS_ABORTED,
        T.TRANSFER_STATUS_COMMITTED,
    ]
    assert results[2].reason == errors.INSUFFICIENT_FUNDS
    assert cluster.acct(BOB).balance == 40 and cluster.no_holds()


@with_cluster
async def test_a_caller_that_gives_up_does_not_disturb_the_others(cluster: Cluster) -> None:
    cluster.nodes["shard-2"].delay_s = 0.2
    impatient = asyncio.create_task(cluster.twopc.submit([transfer(amount=10)]))
    patient = asyncio.create_task(cluster.submit(transfer(amount=20), transfer(amount=30)))
    await asyncio.sleep(0.05)
    impatient.cancel()
    results = await patient
    assert [r.status for r in results] == [T.TRANSFER_STATUS_COMMITTED] * 2
    with contextlib.suppress(asyncio.CancelledError):
        await impatient
    # The cancelled item was in the round already: it still settles, once.
    assert cluster.acct(BOB).balance in (50, 60) and cluster.no_holds()
    assert cluster.total() == 1050
