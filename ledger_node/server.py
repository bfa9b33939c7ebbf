"""The gRPC face of a ledger node: thin handlers around the writer and the
in-memory ledger, plus health, reflection, etcd registration and slot map.

Handlers check whole-request limits, hand writes to the group-commit writer,
serve reads from memory (accounts) or from RocksDB (records, history), and
turn every failure into a status in one place (`_guard`): a BankError becomes
its rich status, an unexpected exception INTERNAL with a logged request id
(never a stack trace on the wire), and a broken invariant stops the process.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ledger_node import frame_server, journal, keys, slot_export, write_stream
from ledger_node.risk_activity import RiskActivity, history_events
from ledger_node.state import InvariantViolation, Ledger
from ledger_node.store import Store
from ledger_node.writer import Writer, wall_clock_ms
from shardbank import errors, limits, meta, metrics, service_auth, slots
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerNode"].full_name
# Exit status after a broken invariant (EX_SOFTWARE): a supervisor must not
# mistake it for a clean stop.
EXIT_INVARIANT = 70
# How long in-flight RPCs get to finish on SIGTERM.
STOP_GRACE_S = 5.0
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
]
PAGE_TOKEN_VERSION = 1
SLOT_MAP_WAIT_LOG_S = 30.0
LEG_STATE_NAMES = {number: name for name, number in ledger_pb2.LegState.items()}

log = structlog.get_logger("ledger_node")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]


class Ownership:
    """Which customer accounts this shard serves: all of them (standalone),
    or the slots the newest slot map assigns to it."""

    def __init__(self, shard_id: str, watcher: meta.SlotMapWatcher | None) -> None:
        self._shard_id = shard_id
        self._watcher = watcher

    def owns(self, account_id: int) -> bool:
        if self._watcher is None:
            return True
        current = self._watcher.current
        return current is not None and current.owner(account_id) == self._shard_id

    def version(self) -> int:
        current = None if self._watcher is None else self._watcher.current
        return 0 if current is None else current.version

    def owns_slot(self, slot: int) -> bool:
        if self._watcher is None:
            return True
        current = self._watcher.current
        return current is not None and current.owners[slot] == self._shard_id

    async def refresh(self) -> None:
        """Catch up with etcd now (a move step must not act on an old map)."""
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.refresh)

    def slots_owned(self) -> int:
        if self._watcher is None:
            return slots.SLOT_COUNT
        current = self._watcher.current
        return 0 if current is None else len(current.slots_of(self._shard_id))


def _guard(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """One place that turns failures into statuses (see module doc), and
    that times every RPC (the histogram child is bound once, here). The
    undecorated handler stays reachable as `.unguarded` (the write stream
    runs it per message)."""
    duration = metrics.RPC_DURATION.labels(metrics.LEDGER_NODE, handler.__name__)

    async def guarded(self: LedgerNodeServicer, request: Req, context: Context) -> Resp:
        began = time.perf_counter()
        try:
            return await handler(self, request, context)
        except Exception as exc:
            failure = await self.failure(handler.__name__, exc)
        finally:
            duration.observe(time.perf_counter() - began)
        await errors.abort(context, failure)

    guarded.__name__ = handler.__name__
    guarded.unguarded = handler  # type: ignore[attr-defined]
    return guarded


def _check_batch(count: int) -> None:
    if count == 0:
        raise errors.invalid(errors.BATCH_EMPTY, "the batch has no items")
    if count > limits.BATCH_ITEMS_MAX:
        raise BankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors.BATCH_TOO_LARGE,
            f"at most {limits.BATCH_ITEMS_MAX} items",
        )


def _page_limit(given: int, most: int) -> int:
    """0 means the largest page; above it INVALID_PAGE_SIZE."""
    if given > most:
        raise errors.invalid(errors.INVALID_PAGE_SIZE, f"limit must be 0..{most} (0 means {most})")
    return given or most


def _slot_set(values: Any) -> set[int]:
    """The slots of a move request: 1..SLOT_COUNT of them, each in range."""
    chosen = {int(v) for v in values}
    if not chosen or len(values) > slots.SLOT_COUNT or max(chosen) >= slots.SLOT_COUNT:
        raise errors.invalid(
            errors.INVALID_ARGUMENT, f"give 1..{slots.SLOT_COUNT} slots in 0..{slots.SLOT_COUNT - 1}"
        )
    return chosen


def encode_page_token(account_id: int, before_seq: int) -> str:
    raw = bytes([PAGE_TOKEN_VERSION]) + keys.u64(account_id) + keys.u64(before_seq)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, account_id: int) -> int:
    """The journal seq a page starts below; INVALID_PAGE_TOKEN if forged or foreign."""
    bad = errors.invalid(errors.INVALID_PAGE_TOKEN, "page token is not one this node gave for this account")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise bad from None
    if len(raw) != 17 or raw[0] != PAGE_TOKEN_VERSION or keys.read_u64(raw[1:9]) != account_id:
        raise bad
    return keys.read_u64(raw[9:])


class LedgerNodeServicer(ledger_pb2_grpc.LedgerNodeServicer):
    def __init__(
        self,
        shard_id: str,
        ledger: Ledger,
        store: Store,
        writer: Writer,
        ownership: Ownership,
        on_fatal: Callable[[BaseException], Awaitable[None]],
        risk: RiskActivity | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.address = ""
        self.metrics_address = ""
        self._ledger = ledger
        self._store = store
        self._writer = writer
        self._ownership = ownership
        self.on_fatal = on_fatal
        # Set on stop: write streams stop reading and end once answered (a
        # long-lived stream would otherwise hold a graceful stop for its whole grace).
        self.streams_ending = asyncio.Event()
        # Without the node's own index (tests): read from disk every time.
        self._risk = risk or RiskActivity(
            ledger.accounts, lambda account_id: history_events(store, account_id), accounts_max=0
        )

    async def failure(self, rpc: str, exc: Exception) -> BankError:
        """What a failed request answers (see module doc); counted per `rpc`."""
        if isinstance(exc, BankError):
            failure = exc
        elif isinstance(exc, InvariantViolation):
            await self.on_fatal(exc)
            failure = BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "the node failed")
        else:
            request_id = uuid.uuid4().hex
            log.error("rpc_failed", rpc=rpc, request_id=request_id, error=type(exc).__name__, exc_info=exc)
            failure = BankError(
                grpc.StatusCode.INTERNAL, errors.INTERNAL, f"internal error, request id {request_id}"
            )
        metrics.RPC_FAILURES.labels(metrics.LEDGER_NODE, rpc, failure.code.name).inc()
        return failure

    async def WriteStream(
        self, requests: AsyncIterator[ledger_pb2.WriteMessage], context: Context
    ) -> AsyncIterator[ledger_pb2.WriteReply]:
        """Writes as messages on one stream (`ledger_node.write_stream`)."""
        # Read once, now: grpc frees the call when the caller goes, and this
        # generator's `finally` may run after that (context.peer() on a freed
        # call is a segfault in cygrpc: tests/integration/test_node_streams.py).
        peer = context.peer()
        log.info("write_stream_opened", peer=peer)
        try:
            detached = cast(Context, write_stream.DetachedContext(peer))
            answer = functools.partial(self._answer, context=detached)
            async for reply in write_stream.serve(requests, answer, self.streams_ending):
                yield reply
        finally:
            log.info("write_stream_closed", peer=peer)

    async def _answer(self, message: ledger_pb2.WriteMessage, context: Context) -> ledger_pb2.WriteReply:
        """One stream message through the unary handler of its kind (same
        checks, same writer, same logs and metrics); a failure is its reply."""
        kind = message.WhichOneof("body") or ""
        stream_handler = STREAM_HANDLERS.get(kind)
        if stream_handler is None:
            failure = errors.invalid(errors.INVALID_ARGUMENT, "a write message needs a body")
            return _error_reply(message.id, failure)
        rpc, handler, duration = stream_handler
        began = time.perf_counter()
        try:
            response = await handler(self, getattr(message, kind), context)
        except Exception as exc:
            return _error_reply(message.id, await self.failure(rpc, exc))
        finally:
            duration.observe(time.perf_counter() - began)
        if isinstance(response, ledger_pb2.TransfersResponse):
            return ledger_pb2.WriteReply(id=message.id, transfers=response)
        return ledger_pb2.WriteReply(id=message.id, legs=response)

    async def _write(self, request: Any, count: int) -> Any:
        _check_batch(count)
        metrics.BATCH_ITEMS.labels(metrics.LEDGER_NODE, type(request).__name__).observe(count)
        response = await self._writer.submit(request)
        if isinstance(response, BankError):
            raise response
        return response

    @_guard
    async def CreateAccounts(
        self, request: ledger_pb2.CreateAccountsRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        response: ledger_pb2.AccountsResponse = await self._write(request, len(request.accounts))
        log.info("accounts_created", count=len(request.accounts), actor=request.actor)
        return response

    @_guard
    async def UpdateContacts(
        self, request: ledger_pb2.UpdateContactsRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        response: ledger_pb2.AccountsResponse = await self._write(request, len(request.updates))
        log.info("contacts_updated", count=len(request.updates), actor=request.actor)
        return response

    @_guard
    async def ChangeStatus(
        self, request: ledger_pb2.ChangeStatusRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        response: ledger_pb2.AccountsResponse = await self._write(request, len(request.items))
        for item, result in zip(request.items, response.results, strict=True):
            log.info(
                "status_change",
                account_id=item.account_id,
                action=ledger_pb2.StatusAction.Name(item.action)
                if item.action in (0, 1, 2, 3)
                else item.action,
                actor=request.actor,
                code=result.code,
                reason=result.reason,
            )
        return response

    @_guard
    async def ApplyTransfers(
        self, request: ledger_pb2.ApplyTransfersRequest, context: Context
    ) -> ledger_pb2.TransfersResponse:
        response: ledger_pb2.TransfersResponse = await self._write(request, len(request.transfers))
        # Nothing per transfer here, not even at debug (the loop alone costs):
        # every outcome is in the journal and the transfer record.
        return response

    @_guard
    async def Prepare(self, request: ledger_pb2.PrepareRequest, context: Context) -> ledger_pb2.LegsResponse:
        response: ledger_pb2.LegsResponse = await self._write(request, len(request.items))
        self._log_legs("prepare", request.epoch, response)
        return response

    @_guard
    async def Decide(self, request: ledger_pb2.DecideRequest, context: Context) -> ledger_pb2.LegsResponse:
        response: ledger_pb2.LegsResponse = await self._write(request, len(request.items))
        self._log_legs("decide", request.epoch, response)
        return response

    @_guard
    async def Finish(self, request: ledger_pb2.FinishRequest, context: Context) -> ledger_pb2.LegsResponse:
        response: ledger_pb2.LegsResponse = await self._write(request, len(request.items))
        self._log_legs("finish", request.epoch, response)
        return response

    def _log_legs(self, step: str, epoch: int, response: ledger_pb2.LegsResponse) -> None:
        """One info line per request (a line per leg cost more than the leg
        itself at batch sizes); each leg's outcome is in the journal."""
        states: collections.Counter[str] = collections.Counter()
        refused = 0
        for leg in response.legs:
            states[LEG_STATE_NAMES.get(leg.state, str(leg.state))] += 1
            refused += leg.code != 0
        log.info(step, epoch=epoch, legs=len(response.legs), refused=refused, states=dict(states))

    @_guard
    async def GetAccounts(
        self, request: ledger_pb2.GetAccountsRequest, context: Context
    ) -> ledger_pb2.AccountsResponse:
        _check_batch(len(request.ids))
        return ledger_pb2.AccountsResponse(results=[self._ledger.get_account(i) for i in request.ids])

    @_guard
    async def GetTransfers(
        self, request: ledger_pb2.GetTransfersRequest, context: Context
    ) -> ledger_pb2.TransfersResponse:
        _check_batch(len(request.ids))
        return ledger_pb2.TransfersResponse(transfers=[self._ledger.get_transfer(i) for i in request.ids])

    @_guard
    async def ListHistory(
        self, request: ledger_pb2.ListHistoryRequest, context: Context
    ) -> ledger_pb2.ListHistoryResponse:
        page_size = request.page_size or limits.HISTORY_PAGE_SIZE_DEFAULT
        if page_size > limits.HISTORY_PAGE_SIZE_MAX:
            raise errors.invalid(
                errors.INVALID_PAGE_SIZE, f"page_size must be 1..{limits.HISTORY_PAGE_SIZE_MAX}"
            )
        found = self._ledger.get_account(request.account_id)
        if found.code != 0:
            raise BankError(errors.status_code(found.code), found.reason, found.message)
        prefix = keys.HISTORY + keys.u64(request.account_id)
        before = None
        if request.page_token:
            before = keys.history_key(
                request.account_id, decode_page_token(request.page_token, request.account_id)
            )
        entries: list[types_pb2.HistoryEntry] = []
        for _, value in self._store.scan_back(prefix, before):
            if len(entries) == page_size + 1:
                break
            entries.append(types_pb2.HistoryEntry.FromString(value))
        next_token = ""
        if len(entries) > page_size:
            entries = entries[:page_size]
            next_token = encode_page_token(request.account_id, entries[-1].journal_seq)
        return ledger_pb2.ListHistoryResponse(entries=entries, next_page_token=next_token)

    @_guard
    async def ListInDoubt(
        self, request: ledger_pb2.ListInDoubtRequest, context: Context
    ) -> ledger_pb2.LegsResponse:
        legs = self._ledger.in_doubt_legs(wall_clock_ms(), request.older_than_ms, request.limit)
        return ledger_pb2.LegsResponse(legs=legs)

    # ------------------------------------------------------------------ slot moves (docs/moves.md)

    @_guard
    async def ExportSlots(
        self, request: ledger_pb2.ExportSlotsRequest, context: Context
    ) -> ledger_pb2.ExportSlotsResponse:
        chosen = _slot_set(request.slots)
        limit = slot_export.page_limit(request.limit)
        if request.catch_up:
            return slot_export.catch_up_page(self._store, self._ledger, chosen, request.after_seq, limit)
        if len(request.cursor) > keys.CURSOR_BYTES_MAX:
            raise errors.invalid(errors.INVALID_PAGE_TOKEN, "cursor is too long")
        return slot_export.full_page(
            self._store, self._ledger, chosen, request.cursor, request.until_seq, limit
        )

    @_guard
    async def ImportSlots(
        self, request: ledger_pb2.ImportSlotsRequest, context: Context
    ) -> ledger_pb2.ImportSlotsResponse:
        _slot_set(request.slots)
        count = len(request.accounts) + len(request.records) + len(request.history)
        response: ledger_pb2.ImportSlotsResponse = await self._write(request, max(count, 1))
        self._risk.slots_moved()
        log.info(
            "slots_imported",
            move_id=request.move_id,
            accounts=len(request.accounts),
            records=len(request.records),
            history=len(request.history),
            watermark_seq=request.checkpoint.watermark_seq,
        )
        return response

    @_guard
    async def MarkSlots(
        self, request: ledger_pb2.MarkSlotsRequest, context: Context
    ) -> ledger_pb2.MarkSlotsResponse:
        chosen = _slot_set(request.slots)
        await self._ownership.refresh()
        owned = {slot for slot in chosen if self._ownership.owns_slot(slot)}
        if request.mark == ledger_pb2.SLOT_MARK_FENCED and owned != chosen:
            raise BankError(
                grpc.StatusCode.FAILED_PRECONDITION, errors.SLOT_MOVED, "fence only slots owned here"
            )
        if request.mark == ledger_pb2.SLOT_MARK_STAGED and owned:
            raise errors.precondition(
                errors.SLOT_STILL_OWNED, f"slot {min(owned)} is owned here: not a target"
            )
        response: ledger_pb2.MarkSlotsResponse = await self._write(request, 1)
        response.in_doubt_legs = self._ledger.in_doubt_in(chosen, wall_clock_ms())
        log.info(
            "slots_marked",
            move_id=request.move_id,
            mark=ledger_pb2.SlotMark.Name(request.mark) if request.mark in (0, 1, 2, 3) else request.mark,
            slots=len(chosen),
        )
        return response

    @_guard
    async def ReleaseSlots(
        self, request: ledger_pb2.ReleaseSlotsRequest, context: Context
    ) -> ledger_pb2.ReleaseSlotsResponse:
        chosen = _slot_set(request.slots)
        await self._ownership.refresh()
        owned = {slot for slot in chosen if self._ownership.owns_slot(slot)}
        if request.slot_map_version:
            # The source after the flip: only once our own map says the slots are gone.
            if self._ownership.version() < request.slot_map_version or owned:
                raise BankError(
                    grpc.StatusCode.UNAVAILABLE, errors.SLOT_STILL_OWNED, "slot map not yet seen here; retry"
                )
        elif owned - self._ledger.staged:
            raise errors.precondition(errors.SLOT_NOT_STAGED, "slots owned here are not staged copies")
        plan = slot_export.release_plan(self._store, self._ledger, request.move_id, chosen, request.limit)
        plan.epoch = request.epoch
        response = await self._writer.submit(plan)
        if not isinstance(response, ledger_pb2.ReleaseSlotsResponse):
            raise response if isinstance(response, BankError) else TypeError("release answered oddly")
        self._risk.slots_moved()
        log.info(
            "slots_released",
            move_id=request.move_id,
            accounts=response.accounts,
            records=response.records,
            history=response.history,
            done=response.done,
        )
        return response

    @_guard
    async def DigestSlots(
        self, request: ledger_pb2.DigestSlotsRequest, context: Context
    ) -> ledger_pb2.SlotsDigest:
        return slot_export.digest(self._store, self._ledger, _slot_set(request.slots))

    @_guard
    async def ReadJournal(
        self, request: ledger_pb2.ReadJournalRequest, context: Context
    ) -> ledger_pb2.ReadJournalResponse:
        """Stored entries from `from_seq` on. Runs without an await, so the
        page lies between two group commits (the writer applies and writes
        on this same event loop)."""
        limit = _page_limit(request.limit, limits.JOURNAL_PAGE_ENTRIES_MAX)
        start = keys.journal_key(max(request.from_seq, 1))
        entries: list[ledger_pb2.StoredJournalEntry] = []
        for key, value in self._store.scan(keys.JOURNAL, start):
            if len(entries) == limit:
                break
            stored_hash, entry_bytes = journal.decode(value)
            seq = keys.read_u64(key[len(keys.JOURNAL) :])
            entries.append(ledger_pb2.StoredJournalEntry(seq=seq, hash=stored_hash, entry=entry_bytes))
        return ledger_pb2.ReadJournalResponse(entries=entries, head_seq=self._ledger.journal_seq)

    @_guard
    async def ListAccounts(
        self, request: ledger_pb2.ListAccountsRequest, context: Context
    ) -> ledger_pb2.ListAccountsResponse:
        """Stored accounts after `after_id`, with the journal seq they are the
        replay of (read without an await: see ReadJournal)."""
        limit = _page_limit(request.limit, limits.ACCOUNTS_PAGE_SIZE_MAX)
        start = keys.account_key(request.after_id + 1) if request.after_id < (1 << 64) - 1 else None
        accounts: list[types_pb2.Account] = []
        done = start is None
        if start is not None:
            done = True
            for _, value in self._store.scan(keys.ACCOUNT, start):
                if len(accounts) == limit:
                    done = False
                    break
                accounts.append(types_pb2.Account.FromString(value))
        return ledger_pb2.ListAccountsResponse(
            accounts=accounts, journal_seq=self._ledger.journal_seq, done=done
        )

    @_guard
    async def GetActivity(
        self, request: ledger_pb2.GetActivityRequest, context: Context
    ) -> ledger_pb2.GetActivityResponse:
        # Served from memory between drains (no await inside), so it sees
        # exactly what is on disk, like every other read here.
        return self._risk.answer(request, self._ownership.owns, wall_clock_ms())

    @_guard
    async def GetNodeInfo(
        self, request: ledger_pb2.GetNodeInfoRequest, context: Context
    ) -> ledger_pb2.NodeInfo:
        ledger = self._ledger
        review_holds = ledger.review_holds(wall_clock_ms())
        return ledger_pb2.NodeInfo(
            shard_id=self.shard_id,
            address=self.address,
            slot_map_version=self._ownership.version(),
            slots_owned=self._ownership.slots_owned(),
            accounts=len(ledger.accounts),
            journal_seq=ledger.journal_seq,
            journal_head_hash=ledger.journal_hash,
            max_epoch_seen=ledger.max_epoch,
            in_doubt_legs=len(ledger.in_doubt) - review_holds,
            transfers_applied=ledger.transfers_applied,
            pid=os.getpid(),
            writer_queue_items=self._writer.queued_items,
            metrics_address=self.metrics_address,
            review_holds=review_holds,
        )


def _error_reply(message_id: int, failure: BankError) -> ledger_pb2.WriteReply:
    error = ledger_pb2.WriteError(code=failure.code_value, reason=failure.reason, message=failure.message)
    return ledger_pb2.WriteReply(id=message_id, error=error)


def _stream_handler(rpc: str) -> tuple[str, Handler[Any, Any], Any]:
    """(name, undecorated handler, duration histogram child) of a unary write RPC."""
    handler = getattr(LedgerNodeServicer, rpc).unguarded
    return rpc, handler, metrics.RPC_DURATION.labels(metrics.LEDGER_NODE, rpc)


# WriteMessage body -> the unary RPC whose handler answers it.
STREAM_HANDLERS = {
    "apply_transfers": _stream_handler("ApplyTransfers"),
    "prepare": _stream_handler("Prepare"),
    "decide": _stream_handler("Decide"),
    "finish": _stream_handler("Finish"),
}


class NodeServer:
    """A ledger node assembled but not yet serving: `start()`, then `stop()`."""

    def __init__(
        self,
        shard_id: str,
        etcd: str,
        store: Store,
        watcher: meta.SlotMapWatcher | None,
        exit_process: Callable[[int], None],
        *,
        cluster_secret: bytes = b"",
    ) -> None:
        """`cluster_secret`: LedgerNode calls need a service token signed with
        it (`shardbank.service_auth`); empty: no check."""
        self.shard_id = shard_id
        self._cluster_secret = cluster_secret
        self._frames: frame_server.FrameServer | None = None
        self.frame_address = ""
        self._etcd = etcd
        self._store = store
        self._watcher = watcher
        self._exit_process = exit_process
        self._registration: meta.Registration | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self.fatal: BaseException | None = None
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=limits.CONCURRENT_RPCS_MAX,
            interceptors=service_auth.server_interceptors(cluster_secret),
        )
        loaded = store.load()
        ownership = Ownership(shard_id, watcher)
        risk = RiskActivity(loaded.accounts, lambda account_id: history_events(store, account_id))
        self.ledger = Ledger(
            shard_id,
            store.get,
            ownership.owns,
            accounts=loaded.accounts,
            journal_seq=loaded.journal_seq,
            journal_hash=loaded.journal_hash,
            max_epoch=loaded.max_epoch,
            in_doubt=loaded.in_doubt,
            transfers_applied=loaded.transfers_applied,
            observe=risk.index.observe,
            opened=risk.opened,
            fenced=loaded.fenced,
            staged=loaded.staged,
            checkpoint=loaded.checkpoint,
        )
        self.writer = Writer(self.ledger, store, self.on_fatal)
        self.servicer = LedgerNodeServicer(
            shard_id, self.ledger, store, self.writer, ownership, self.on_fatal, risk
        )
        self._ownership = ownership
        self._unregister_metrics: Callable[[], None] | None = None
        ledger_pb2_grpc.add_LedgerNodeServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = 0
        self.address = ""

    def bind(self, listen: str) -> int:
        host = listen.rpartition(":")[0] or "127.0.0.1"
        self.port = self.server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        self.address = f"{host}:{self.port}"
        self.servicer.address = self.address
        return self.port

    async def bind_frames(self, listen: str) -> None:
        """Serve the frame lane (`ledger_node.frame_server`) on host:port
        (port 0 picks one); announced in the registration, where callers find it."""
        host, _, port = listen.rpartition(":")
        host = host or "127.0.0.1"
        detached = cast(Context, write_stream.DetachedContext("frame-lane"))
        answer = functools.partial(self.servicer._answer, context=detached)
        self._frames = frame_server.FrameServer(answer, self._cluster_secret)
        self.frame_address = f"{host}:{await self._frames.start(host, int(port))}"

    async def start(self) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._writer_task = asyncio.create_task(self.writer.run(), name="writer")
        if self.metrics_address:
            self._unregister_metrics = metrics.register(metrics.NodeCollector(self.metric_readings))
        if self._etcd:
            value = {"shard_id": self.shard_id, "address": self.address, "pid": os.getpid()}
            if self.metrics_address:
                value["metrics_address"] = self.metrics_address
            if self.frame_address:
                value["frame_address"] = self.frame_address
            self._registration = meta.Registration(self._etcd, meta.SHARDS + self.shard_id, value).start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            shard_id=self.shard_id,
            address=self.address,
            frame_address=self.frame_address,
            accounts=len(self.ledger.accounts),
        )

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Graceful: no new RPCs, in-flight ones finish, the queue is written, the DB closed."""
        await self.health.enter_graceful_shutdown()
        if self._registration is not None:
            self._registration.stop()
        self.servicer.streams_ending.set()
        if self._frames is not None:
            await asyncio.gather(self._frames.stop(grace_s), self.server.stop(grace_s))
        else:
            await self.server.stop(grace_s)
        self.writer.stop()
        if self._writer_task is not None:
            await self._writer_task
        if self._watcher is not None:
            self._watcher.stop()
        if self._unregister_metrics is not None:
            self._unregister_metrics()
        self._store.close()
        log.info("stopped", shard_id=self.shard_id)

    @property
    def metrics_address(self) -> str:
        """host:port of /metrics ("" when off); set before start() to announce it."""
        return self.servicer.metrics_address

    @metrics_address.setter
    def metrics_address(self, address: str) -> None:
        self.servicer.metrics_address = address

    def metric_readings(self) -> metrics.NodeReadings:
        """Read at scrape time, from the metrics thread: plain numbers only
        (len() and int reads are atomic under the GIL; RocksDB properties are thread-safe)."""
        ledger = self.ledger
        return metrics.NodeReadings(
            gauges={
                "shardbank_node_writer_queue_items": self.writer.queued_items,
                "shardbank_node_in_doubt_legs": len(ledger.in_doubt),
                "shardbank_node_journal_seq": ledger.journal_seq,
                "shardbank_node_accounts": len(ledger.accounts),
                "shardbank_node_slots_owned": self._ownership.slots_owned(),
                "shardbank_node_slot_map_version": self._ownership.version(),
                "shardbank_node_max_epoch_seen": ledger.max_epoch,
                "shardbank_node_frame_connections": 0 if self._frames is None else self._frames.connections,
            },
            counters={
                "shardbank_node_transfers_committed": ledger.transfers_applied,
                "shardbank_node_group_commit_drains": self.writer.drains,
            },
            rocksdb=metrics.rocksdb_readings(self._store.property_int),
        )

    async def on_fatal(self, exc: BaseException) -> None:
        """A broken invariant or a failed write: say so, stop serving, exit."""
        self.fatal = exc
        log.critical("invariant_violation", shard_id=self.shard_id, error=type(exc).__name__, detail=str(exc))
        await self.health.enter_graceful_shutdown()
        self._exit_process(EXIT_INVARIANT)


async def create_server(
    shard_id: str,
    listen: str,
    data_dir: str,
    etcd: str = "",
    *,
    exit_process: Callable[[int], None] = os._exit,
    cluster_secret: bytes = b"",
) -> NodeServer:
    """Open the shard's DB, load it, wait for the slot map (unless standalone,
    `etcd=""`), bind `listen` (port 0 picks one: see `.port`). Not yet serving.
    With a `cluster_secret`, LedgerNode calls need a service token."""
    store = Store(data_dir)
    watcher = None
    if etcd:
        watcher = meta.SlotMapWatcher(etcd)
        await asyncio.to_thread(watcher.start, SLOT_MAP_WAIT_LOG_S)
        await _wait_for_slot_map(watcher)
    node = NodeServer(shard_id, etcd, store, watcher, exit_process, cluster_secret=cluster_secret)
    node.bind(listen)
    return node


async def _wait_for_slot_map(watcher: meta.SlotMapWatcher) -> None:
    """A node without a map would refuse every item: wait (the polling thread refreshes)."""
    while watcher.current is None:
        log.warning("waiting_for_slot_map")
        await asyncio.sleep(SLOT_MAP_WAIT_LOG_S / 10)
