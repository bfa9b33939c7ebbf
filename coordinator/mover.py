"""The mover: the coordinator leader carries out slot moves (docs/moves.md).

Moves are requested into etcd (`/shardbank/moves/<id>`, phase PENDING) by the
CLI. The leader takes the unfinished ones oldest first, one at a time, and
drives each through its phases, saving the record after every step. Every
step can be repeated: a new leader (after kill -9 of this one) starts the
move's current phase again and gets the same result, because

- the target keeps the copy's progress (cursor, watermark) in the same
  RocksDB write as the copied data, so a resumed copy neither skips nor
  repeats anything (`ImportCheckpoint`);
- marks (FENCED on the source, STAGED on the target) are durable on the node;
- the flip is one etcd transaction that also writes phase FLIPPED, so the
  record never disagrees with the slot map;
- every write of the record compares the leader key's create_revision (our
  epoch): a deposed leader cannot overwrite its successor's progress.

A node that is down or busy makes the step fail with `Retry`; the move stays
in its phase and is tried again a moment later. A step that cannot succeed
(the copy does not verify, an id conflict) rolls the move back, which is
allowed until the flip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import etcd3
import grpc
import structlog

from coordinator.shards import Leadership, Router
from gateway.auth import audit
from shardbank import errors, meta, move_records, moves
from shardbank.directory import UnknownShard
from shardbank.moves import Move
from shardbank.v1 import ledger_pb2

log = structlog.get_logger("mover")

# How often the leader looks for moves to drive, and waits after a failed step.
POLL_INTERVAL_S = 0.5
RETRY_PAUSE_S = 1.0
# Deadlines of node calls: a page moves up to PAGE_ITEMS items.
PAGE_CALL_S = 30.0
CALL_S = 10.0
PAGE_ITEMS = 1000
# Catch-up stops (and the fence goes up) once the source's journal is at most
# this many entries ahead of what the target has, or after ROUNDS_MAX rounds.
CATCH_UP_LAG_MAX = 256
CATCH_UP_ROUNDS_MAX = 20
# In-doubt 2PC legs of fenced slots get this long to end (recovery ends any
# older than the prepare timeout); then the fence is lifted and the move
# catches up again, at most FENCE_ATTEMPTS_MAX times before it rolls back.
FENCE_DRAIN_S = 5.0
FENCE_POLL_S = 0.05
FENCE_ATTEMPTS_MAX = 3
# Rounds of the final catch-up (bounded: the fenced slots no longer change).
FINAL_ROUNDS_MAX = 1000
# How often copy progress is written to etcd (a record per page costs etcd writes).
PROGRESS_INTERVAL_S = 0.5
# Tests and the fault runner only: a pause after every step and page, so that
# a kill lands inside a move instead of after it (a move of a few accounts
# takes ~100 ms). Never set in production.
STEP_PAUSE_ENV = "SHARDBANK_MOVE_STEP_PAUSE_MS"
STEP_PAUSE_MS_MAX = 10_000


def step_pause_s() -> float:
    try:
        value = int(os.environ.get(STEP_PAUSE_ENV, "0"))
    except ValueError:
        return 0.0
    return min(max(value, 0), STEP_PAUSE_MS_MAX) / 1000


class Retry(Exception):
    """A step could not finish now (a node down, a lost race): try again later."""


class Deposed(Exception):
    """We no longer lead: stop driving moves."""


class Mover:
    def __init__(self, etcd_endpoint: str, router: Router, leadership: Leadership, actor: str) -> None:
        self._etcd_endpoint = etcd_endpoint
        self._router = router
        self._leadership = leadership
        self._actor = actor
        self._client: etcd3.Etcd3Client | None = None
        self._last_progress = 0.0
        self._pause_s = step_pause_s()
        self.steps: dict[str, Callable[[Move], Awaitable[Move]]] = {
            moves.PENDING: self._pending,
            moves.COPYING: self._copying,
            moves.CATCHING_UP: self._catching_up,
            moves.FENCED: self._fenced,
            moves.VERIFYING: self._verifying,
            moves.FLIPPED: self._flipped,
            moves.ROLLING_BACK: self._rolling_back,
        }

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        while True:
            if self._leadership.is_leader:
                try:
                    await self.tick()
                except Deposed:
                    log.info("mover_deposed")
                except Exception as exc:  # etcd down, a bug: log, keep going
                    self._client = None
                    log.warning("mover_tick_failed", error=type(exc).__name__, detail=str(exc)[:200])
                    await asyncio.sleep(RETRY_PAUSE_S)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def tick(self) -> None:
        """Drive the oldest unfinished move as far as it goes now."""
        pending = [m for m in await self._etcd(move_records.list_moves) if not m.terminal]
        if pending:
            await self.drive(pending[0])

    async def drive(self, move: Move) -> Move:
        epoch = self._leadership.epoch
        while not move.terminal:
            if not self._leadership.is_leader or self._leadership.epoch != epoch:
                raise Deposed()
            if await self._rollback_asked(move):
                move = await self._save(move.advance(moves.ROLLING_BACK, rollback_requested=True), epoch)
                continue
            step = self.steps[move.phase]
            if self._pause_s:
                await asyncio.sleep(self._pause_s)
            try:
                moved = await step(move)
            except Retry as exc:
                log.warning("move_step_retry", move_id=move.move_id, phase=move.phase, why=str(exc)[:200])
                await self._save(move.update(waiting=str(exc)[:200]), epoch)
                await asyncio.sleep(RETRY_PAUSE_S)
                return move
            except errors.BankError as exc:
                if move.phase not in moves.ROLLBACK_ALLOWED:
                    raise
                log.error("move_failed", move_id=move.move_id, phase=move.phase, reason=exc.reason)
                moved = move.advance(moves.ROLLING_BACK, error=f"{exc.reason}: {exc.message}"[:500])
            if moved.phase != move.phase:
                log.info(
                    "move_phase",
                    move_id=move.move_id,
                    phase=moved.phase,
                    source=move.source,
                    target=move.target,
                    slots=len(move.slots),
                    epoch=epoch,
                )
            if moved.phase != moves.FLIPPED or move.phase != moves.VERIFYING:  # the flip saved it
                moved = await self._save(moved, epoch)
            move = moved
        return move

    async def _rollback_asked(self, move: Move) -> bool:
        if move.phase not in moves.ROLLBACK_ALLOWED or move.rollback_requested:
            return False
        return bool(await self._etcd(move_records.rollback_requested, move.move_id))

    # ------------------------------------------------------------------ steps

    async def _pending(self, move: Move) -> Move:
        slot_map, _ = await self._etcd(move_records.read_slot_map_revision)
        registered = frozenset(await self._etcd(meta.list_shards))
        others = tuple(m for m in await self._etcd(move_records.list_moves) if m.move_id != move.move_id)
        try:
            moves.check_request(
                moves.Cluster(slot_map, registered, others), move.slots, move.target, drain=move.drain
            )
        except errors.BankError as refusal:
            if refusal.reason == moves.TARGET_DOWN:
                raise Retry(refusal.message) from None
            log.error("move_refused", move_id=move.move_id, reason=refusal.reason)
            await self._audit(move, "slot_move_failed", refusal.reason)
            return move.advance(moves.FAILED, error=f"{refusal.reason}: {refusal.message}")
        digest = await self._call(move.source, "DigestSlots", ledger_pb2.DigestSlotsRequest(slots=move.slots))
        await self._mark(move.target, move, ledger_pb2.SLOT_MARK_STAGED)
        return move.advance(moves.COPYING, accounts_total=int(digest.accounts), error="")

    async def _copying(self, move: Move) -> Move:
        checkpoint = await self._checkpoint(move)
        while not checkpoint.copy_done:
            page = await self._call(
                move.source,
                "ExportSlots",
                ledger_pb2.ExportSlotsRequest(
                    slots=move.slots,
                    cursor=checkpoint.cursor,
                    until_seq=checkpoint.copy_until_seq,
                    limit=PAGE_ITEMS,
                ),
                PAGE_CALL_S,
            )
            following = ledger_pb2.ImportCheckpoint()
            following.CopyFrom(checkpoint)
            following.copy_until_seq = page.watermark_seq
            following.watermark_seq = page.watermark_seq
            following.cursor = page.next_cursor
            following.copy_done = not page.next_cursor
            checkpoint = await self._import(move, page, following, count=True)
            await self._progress(move, checkpoint)
            if self._pause_s:
                await asyncio.sleep(self._pause_s)
        return move.advance(moves.CATCHING_UP, **_counts(checkpoint))

    async def _catching_up(self, move: Move) -> Move:
        checkpoint = await self._checkpoint(move)
        rounds = 0
        while True:
            page, checkpoint = await self._catch_up_once(move, checkpoint)
            rounds += 1
            if page.head_seq - page.watermark_seq <= CATCH_UP_LAG_MAX or rounds >= CATCH_UP_ROUNDS_MAX:
                break
        await self._mark(move.source, move, ledger_pb2.SLOT_MARK_FENCED)
        return move.advance(
            moves.FENCED,
            catch_up_rounds=move.catch_up_rounds + rounds,
            fenced_at_unix_ms=moves.now_ms(),
            **_counts(checkpoint),
        )

    async def _fenced(self, move: Move) -> Move:
        """Wait until no 2PC leg of the slots is in doubt on the source."""
        deadline = time.monotonic() + FENCE_DRAIN_S
        while True:
            marked = await self._mark(move.source, move, ledger_pb2.SLOT_MARK_FENCED)
            if marked.in_doubt_legs == 0:
                return move.advance(moves.VERIFYING)
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(FENCE_POLL_S)
        attempts = move.fence_attempts + 1
        log.warning(
            "move_fence_lifted", move_id=move.move_id, in_doubt=marked.in_doubt_legs, attempt=attempts
        )
        if attempts >= FENCE_ATTEMPTS_MAX:
            raise errors.precondition("IN_DOUBT_LEGS", f"{marked.in_doubt_legs} 2PC legs stayed in doubt")
        await self._mark(move.source, move, ledger_pb2.SLOT_MARK_NONE)
        return move.advance(moves.CATCHING_UP, fence_attempts=attempts, fenced_at_unix_ms=0)

    async def _verifying(self, move: Move) -> Move:
        """Final catch-up (the slots no longer change), compare, flip."""
        checkpoint = await self._checkpoint(move)
        head = 0
        for _ in range(FINAL_ROUNDS_MAX):
            page, checkpoint = await self._catch_up_once(move, checkpoint)
            head = head or page.head_seq
            if page.watermark_seq >= head:
                break
        else:
            raise Retry("final catch-up did not reach the source's head")
        request = ledger_pb2.DigestSlotsRequest(slots=move.slots)
        source, target = await asyncio.gather(
            self._call(move.source, "DigestSlots", request), self._call(move.target, "DigestSlots", request)
        )
        if source.in_doubt_legs:
            raise Retry(f"{source.in_doubt_legs} legs in doubt on the fenced source")
        compared = ("accounts", "records", "history", "digest", "balances")
        differing = [name for name in compared if getattr(source, name) != getattr(target, name)]
        if differing:
            raise errors.BankError(
                grpc.StatusCode.INTERNAL, "MOVE_VERIFY_FAILED", f"source and target differ in {differing}"
            )
        return await self._flip(move, checkpoint)

    async def _flip(self, move: Move, checkpoint: ledger_pb2.ImportCheckpoint) -> Move:
        slot_map, revision = await self._etcd(move_records.read_slot_map_revision)
        new_map = moves.flipped_map(slot_map, move.slots, move.source, move.target)
        fenced_ms = max(0, moves.now_ms() - move.fenced_at_unix_ms) if move.fenced_at_unix_ms else 0
        flipped = move.advance(
            moves.FLIPPED, slot_map_version=new_map.version, fenced_ms=fenced_ms, **_counts(checkpoint)
        )
        epoch = self._leadership.epoch
        if not await self._etcd(move_records.flip, flipped, new_map, revision, epoch):
            raise Retry("the slot map changed or leadership moved during the flip")
        log.info("slot_map_flipped", move_id=move.move_id, version=new_map.version, fenced_ms=fenced_ms)
        return flipped

    async def _flipped(self, move: Move) -> Move:
        """Serve from the target, then drop the source's copies."""
        await self._mark(move.target, move, ledger_pb2.SLOT_MARK_NONE)
        await self._release(move.source, move, move.slot_map_version)
        await self._audit(move, "slot_move_completed", moves.COMPLETED)
        return move.advance(moves.COMPLETED, error="")

    async def _rolling_back(self, move: Move) -> Move:
        await self._mark(move.source, move, ledger_pb2.SLOT_MARK_NONE)
        await self._release(move.target, move, 0)
        outcome = moves.ROLLED_BACK if move.rollback_requested and not move.error else moves.FAILED
        await self._audit(move, "slot_move_rolled_back", move.error or outcome)
        return move.advance(outcome, fenced_at_unix_ms=0)

    # ------------------------------------------------------------------ helpers

    async def _catch_up_once(
        self, move: Move, checkpoint: ledger_pb2.ImportCheckpoint
    ) -> tuple[ledger_pb2.ExportSlotsResponse, ledger_pb2.ImportCheckpoint]:
        page = await self._call(
            move.source,
            "ExportSlots",
            ledger_pb2.ExportSlotsRequest(
                slots=move.slots, catch_up=True, after_seq=checkpoint.watermark_seq, limit=PAGE_ITEMS
            ),
            PAGE_CALL_S,
        )
        following = ledger_pb2.ImportCheckpoint()
        following.CopyFrom(checkpoint)
        following.watermark_seq = page.watermark_seq
        return page, await self._import(move, page, following, count=False)

    async def _import(
        self,
        move: Move,
        page: ledger_pb2.ExportSlotsResponse,
        checkpoint: ledger_pb2.ImportCheckpoint,
        count: bool,
    ) -> ledger_pb2.ImportCheckpoint:
        """Import a page with the checkpoint that follows it. `count`: the
        full copy's items count as copied (catch-up re-sends what changed)."""
        if count:
            checkpoint.accounts_imported += len(page.accounts)
            checkpoint.records_imported += len(page.records)
        checkpoint.history_imported += len(page.history)
        request = ledger_pb2.ImportSlotsRequest(
            epoch=self._leadership.epoch,
            move_id=move.move_id,
            slots=move.slots,
            accounts=page.accounts,
            records=page.records,
            history=page.history,
            checkpoint=checkpoint,
        )
        answer = await self._call(move.target, "ImportSlots", request, PAGE_CALL_S)
        result: ledger_pb2.ImportCheckpoint = answer.checkpoint
        return result

    async def _checkpoint(self, move: Move) -> ledger_pb2.ImportCheckpoint:
        marked = await self._mark(move.target, move, ledger_pb2.SLOT_MARK_STAGED)
        if marked.checkpoint.move_id != move.move_id:
            raise errors.precondition(errors.SLOT_NOT_STAGED, f"{move.target} has no checkpoint of this move")
        checkpoint: ledger_pb2.ImportCheckpoint = marked.checkpoint
        return checkpoint

    async def _mark(
        self, shard_id: str, move: Move, mark: ledger_pb2.SlotMark.ValueType
    ) -> ledger_pb2.MarkSlotsResponse:
        request = ledger_pb2.MarkSlotsRequest(
            epoch=self._leadership.epoch, move_id=move.move_id, slots=move.slots, mark=mark
        )
        response: ledger_pb2.MarkSlotsResponse = await self._call(shard_id, "MarkSlots", request)
        return response

    async def _release(self, shard_id: str, move: Move, slot_map_version: int) -> None:
        request = ledger_pb2.ReleaseSlotsRequest(
            epoch=self._leadership.epoch,
            move_id=move.move_id,
            slots=move.slots,
            slot_map_version=slot_map_version,
            limit=PAGE_ITEMS,
        )
        while not (await self._call(shard_id, "ReleaseSlots", request, PAGE_CALL_S)).done:
            pass

    async def _progress(self, move: Move, checkpoint: ledger_pb2.ImportCheckpoint) -> None:
        if time.monotonic() - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = time.monotonic()
        await self._save(move.update(**_counts(checkpoint)), self._leadership.epoch)

    async def _call(self, shard_id: str, method: str, request: Any, timeout_s: float = CALL_S) -> Any:
        """One node call; transient failures become Retry, refusals BankError."""
        try:
            stub = self._router.stub(shard_id)
            return await getattr(stub, method)(request, timeout=timeout_s)
        except UnknownShard:
            raise Retry(f"{shard_id} is not registered (down?)") from None
        except grpc.RpcError as rpc_error:
            error = errors.from_rpc_error(rpc_error)
        if error.reason == errors.STALE_EPOCH:  # a newer leader has acted on this node
            self._leadership.step_down(f"{method} at {shard_id}: STALE_EPOCH")
            raise Deposed()
        if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):  # fmt: skip
            raise Retry(f"{method} at {shard_id}: {error.code.name} {error.reason}")
        raise error

    async def _save(self, move: Move, epoch: int) -> Move:
        if not await self._etcd(move_records.save_as_leader, move, epoch):
            raise Deposed()
        return move

    async def _audit(self, move: Move, action: str, reason: str) -> None:
        entry = audit.Entry(
            actor_key_id=self._actor,
            actor_role="service",
            action=action,
            target=f"{move.move_id} {move.source}->{move.target} slots {moves.format_slots(move.slots)}",
            code=0,
            reason=reason[:200],
        )
        try:
            await self._etcd(audit.append, [entry])
        except Exception as exc:  # the move happened; the log line keeps what the audit missed
            log.error("audit_append_failed", move_id=move.move_id, action=action, error=type(exc).__name__)

    async def _etcd(self, function: Callable[..., Any], *args: Any) -> Any:
        def call() -> Any:
            if self._client is None:
                self._client = meta.connect(self._etcd_endpoint)
            return function(self._client, *args)

        try:
            return await asyncio.to_thread(call)
        except Exception:
            with contextlib.suppress(Exception):
                if self._client is not None:
                    self._client.close()
            self._client = None
            raise


def _counts(checkpoint: ledger_pb2.ImportCheckpoint) -> dict[str, int]:
    return {
        "accounts_copied": int(checkpoint.accounts_imported),
        "records_copied": int(checkpoint.records_imported),
        "history_copied": int(checkpoint.history_imported),
        "watermark_seq": int(checkpoint.watermark_seq),
    }
