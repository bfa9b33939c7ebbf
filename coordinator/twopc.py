"""Two-phase commit of cross-shard transfers (leader only), batched.

Requests enqueue their items and wait. One loop takes everything queued (up
to `ROUND_ITEMS_MAX`) as a *round* and starts it, with up to
`ROUNDS_IN_FLIGHT_MAX` rounds running at once (ids never shared between
them). A round:

1. one Prepare RPC per credit shard, in parallel (role CREDIT); the record
   holder (owner of the debit account) is prepared only for a review hold;
2. one Decide RPC per record holder: COMMIT iff the credit leg is PREPARED,
   else ABORT carrying its code and reason. The Decide is *direct* (docs/2pc.md):
   the record holder checks the debit and posts it in the same write, so its
   answer is also its vote (a refusal there aborts);
3. one Finish RPC per credit shard with the record holder's answer;

then answers every item. So N concurrent transfers cost about three RPCs per
shard, not 3N. Nothing is written to etcd per transfer: the record holder's
record is the decision (docs/2pc.md). The pure rules live in `decisions.py`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
import structlog

from coordinator import decisions
from coordinator.decisions import Answer, Plan, Step, Truth, Verdict
from coordinator.shards import Leadership, Shards
from shardbank import errors, limits, metrics
from shardbank.directory import UnknownShard
from shardbank.v1 import ledger_pb2, types_pb2

log = structlog.get_logger("twopc")

# Items in one round: every per-shard RPC of the round stays within a node's
# batch limit (a shard gets at most one leg per item).
ROUND_ITEMS_MAX = limits.BATCH_ITEMS_MAX
# Items waiting for a round; beyond it callers get RESOURCE_EXHAUSTED
# OVERLOADED instead of waiting past their deadline.
QUEUE_ITEMS_MAX = 4 * limits.BATCH_ITEMS_MAX
# Rounds one item may take because a node said SLOT_MOVED (map refreshed
# between them); then the item is answered UNAVAILABLE and the client retries.
SLOT_MOVED_RETRIES_MAX = 3
# Rounds in flight at once. A round is three RPC waves (Prepare, Decide,
# Finish), each waiting on a node's synced group commit; with one round at a
# time the nodes and this process take turns idling. Three lets a round be in
# each phase; the nodes' group commit merges what arrives together. Items of
# one transfer id never run in two rounds at once (see _take_round).
ROUNDS_IN_FLIGHT_MAX = 3
# Items that must be queued to start a round beside one in flight. A trickle
# of single transfers (one per call) waits for the round in flight to end
# and then goes as one round: a round costs ~3 RPCs per shard whatever its
# size, and per-call cost is what bounds one-transfer-per-call traffic.
# Batched traffic (1000 per call) crosses it at once and is pipelined.
PIPELINE_ITEMS_MIN = 256
# `transfer_done` lines per round for outcomes other than COMMITTED (aborts,
# unknowns); beyond it `round_done`'s counts per outcome carry the rest, so a
# round of 8192 refusals does not write 8192 lines.
OUTCOME_LOG_LINES_MAX = 100


@dataclass(eq=False)
class _Item:
    transfer: types_pb2.Transfer
    future: asyncio.Future[types_pb2.Transfer]
    attempts: int = 0


@dataclass(eq=False)
class _Pair:
    """One transfer of a round: its two legs' shards and, later, their Prepare answers."""

    item: _Item
    debit_shard: str
    credit_shard: str
    # Read from the proto once: the round looks it up for every phase.
    transfer_id: str
    # Not prepared at the record holder: its Decide is direct (docs/2pc.md).
    # Every transfer but a review hold, which must wait PREPARED on both legs.
    direct: bool
    debit: Answer = field(default_factory=lambda: Answer(decisions.Vote.UNKNOWN))
    credit: Answer = field(default_factory=lambda: Answer(decisions.Vote.UNKNOWN))
    # The record holder's stored record when it answered with one (a review
    # hold keeps its deadline and assessment there).
    record: types_pb2.Transfer | None = None

    @property
    def review(self) -> bool:
        """Held for a risk review: asked for now, or recorded so before."""
        stored = self.record is not None and self.record.review_deadline_unix_ms > 0
        return stored or self.item.transfer.review_deadline_unix_ms > 0


class TwoPhaseCommit:
    def __init__(self, shards: Shards, leadership: Leadership) -> None:
        self._shards = shards
        self._leadership = leadership
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        # Rounds running now, and the transfer ids they hold.
        self._rounds: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()

    # --- the caller's side -----------------------------------------------------

    async def submit(self, transfers: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        """Queue validated transfers; their outcomes, in order."""
        if self._closed:
            raise errors.BankError(grpc.StatusCode.UNAVAILABLE, errors.NOT_LEADER, "coordinator stopping")
        if len(self._queue) + len(transfers) > QUEUE_ITEMS_MAX:
            raise errors.BankError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors.OVERLOADED,
                "coordinator queue is full; retry later",
            )
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future()) for t in transfers]
        self._queue.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(i.future for i in items)))

    def close(self) -> None:
        """Answer everything still queued (UNAVAILABLE) and stop the loop."""
        self._closed = True
        while self._queue:
            _answer_stopping(self._queue.popleft())
        self._wakeup.set()

    # --- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Start rounds while items are queued, up to ROUNDS_IN_FLIGHT_MAX at
        once (beside a round in flight only with PIPELINE_ITEMS_MIN queued);
        a round that ends wakes the loop for the next."""
        try:
            while not self._closed:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue and not self._closed and len(self._rounds) < ROUNDS_IN_FLIGHT_MAX:
                    if self._rounds and len(self._queue) < PIPELINE_ITEMS_MIN:
                        break  # a round is in flight: let more queue behind it
                    items = self._take_round()
                    if not items:
                        break  # what is queued waits for ids in flight
                    self._start_round(items)
        finally:
            for task in list(self._rounds):
                task.cancel()

    def _start_round(self, items: list[_Item]) -> None:
        ids = {item.transfer.id for item in items}
        self._in_flight |= ids
        task = asyncio.create_task(self._run_round_safely(items), name="twopc-round")
        self._rounds.add(task)

        def round_ended(done: asyncio.Task[None]) -> None:
            self._rounds.discard(done)
            self._in_flight -= ids
            self._wakeup.set()

        task.add_done_callback(round_ended)

    def _take_round(self) -> list[_Item]:
        """Up to ROUND_ITEMS_MAX items with distinct ids, none of them in a
        round still in flight; such an id waits for a later round, so one shard
        never sees an id twice in a batch and two rounds never race on one
        transfer (each would be safe, the record holder decides once, but the
        loser would answer CONTRADICTORY_DECISION noise)."""
        taken: list[_Item] = []
        deferred: list[_Item] = []
        seen: set[str] = set()
        legs = 0
        while self._queue and legs < ROUND_ITEMS_MAX:
            item = self._queue.popleft()
            if item.future.done():  # the caller gave up before we started
                continue
            if item.transfer.id in seen or item.transfer.id in self._in_flight:
                deferred.append(item)
                continue
            # A review hold may put both its legs on one shard: count it twice,
            # so no shard's Prepare exceeds the node's batch limit.
            cost = 2 if item.transfer.review_deadline_unix_ms else 1
            if legs + cost > ROUND_ITEMS_MAX:
                deferred.append(item)
                break
            legs += cost
            seen.add(item.transfer.id)
            taken.append(item)
        self._queue.extendleft(reversed(deferred))
        return taken

    async def _run_round_safely(self, items: list[_Item]) -> None:
        started = time.monotonic()
        try:
            retry = await self.run_round(items)
        except asyncio.CancelledError:  # the coordinator is stopping
            for item in items:
                _answer_stopping(item)
            raise
        except Exception as exc:  # a bug: answer INTERNAL, keep serving, log it
            log.exception("round_failed", items=len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        waiting = {id(item) for item in retry}
        for item in items:
            if not item.future.done() and id(item) not in waiting:  # a bug; never leave a caller hanging
                log.error("item_unanswered", transfer_id=item.transfer.id)
                _resolve(item, decisions.unavailable(item.transfer, errors.INTERNAL, "outcome not learned"))
        outcomes = _count_round(items, waiting, time.monotonic() - started)
        log.info(
            "round_done",
            items=len(items),
            retry=len(retry),
            outcomes=outcomes,
            epoch=self._leadership.epoch,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
        if not retry:
            return
        again: list[_Item] = []
        for item in retry:
            item.attempts += 1
            if item.attempts > SLOT_MOVED_RETRIES_MAX:
                _resolve(
                    item, decisions.unavailable(item.transfer, errors.SLOT_MOVED, "slot map kept moving")
                )
            else:
                again.append(item)
        await self._shards.router.refresh()
        self._queue.extendleft(reversed(again))

    # --- one round ---------------------------------------------------------------

    async def run_round(self, items: list[_Item]) -> list[_Item]:
        """Run one round; answer its items; return those to retry (SLOT_MOVED)."""
        epoch = self._leadership.epoch
        if epoch == 0:
            for item in items:
                _resolve(item, decisions.unavailable(item.transfer, errors.NOT_LEADER, "not the leader"))
            return []
        crossing, local = self._route(items)
        results = await asyncio.gather(self._two_phase(crossing, epoch), self._apply_local(local))
        return results[0] + results[1]

    def _route(self, items: list[_Item]) -> tuple[list[_Pair], dict[str, list[_Item]]]:
        crossing: list[_Pair] = []
        local: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            try:
                debit_shard = self._shards.router.owner(item.transfer.debit_account_id)
                credit_shard = self._shards.router.owner(item.transfer.credit_account_id)
            except UnknownShard as exc:
                _resolve(item, decisions.unavailable(item.transfer, errors.SHARD_UNAVAILABLE, str(exc)))
                continue
            # A review hold is prepared on both legs even on one shard (record
            # in t/, credit leg in l/): it must wait for the officer.
            if debit_shard == credit_shard and not item.transfer.review_deadline_unix_ms:
                local[debit_shard].append(item)
            else:
                direct = not item.transfer.review_deadline_unix_ms
                crossing.append(_Pair(item, debit_shard, credit_shard, item.transfer.id, direct))
        return crossing, local

    async def _two_phase(self, legs: list[_Pair], epoch: int) -> list[_Item]:
        if not legs:
            return []
        await self._prepare(legs, epoch)
        retry: list[_Item] = []
        to_decide: list[tuple[_Pair, Plan]] = []
        verdicts: dict[str, Verdict] = {}
        for leg in legs:
            plan = decisions.plan_direct(leg.credit) if leg.direct else decisions.plan(leg.debit, leg.credit)
            # A direct leg is no review hold (its record holder says so at Decide).
            if not leg.direct and decisions.holds_for_review(leg.debit, leg.credit, plan, leg.review):
                self._hold(leg, epoch)
            elif plan.step == Step.RETRY:
                retry.append(leg.item)
            elif plan.step == Step.REJECT:
                verdicts[leg.transfer_id] = Verdict(Truth.ABORTED, plan.code, plan.reason, plan.message)
            elif plan.step == Step.SETTLED:
                verdicts[leg.transfer_id] = decisions.verdict_of_plan(plan)
            else:
                to_decide.append((leg, plan))
        if self._leadership.epoch != epoch:  # deposed during prepare: decide nothing
            for leg, _ in to_decide:
                verdicts[leg.transfer_id] = Verdict(
                    Truth.UNKNOWN, decisions.CODE_UNAVAILABLE, errors.NOT_LEADER, "deposed during prepare"
                )
            to_decide = []
        decided, moved = await self._decide(to_decide, epoch)
        verdicts.update(decided)
        retry.extend(moved)
        if self._leadership.epoch == epoch:
            await self._finish(legs, verdicts, epoch)
        self._answer(legs, verdicts, epoch)
        return retry

    def _hold(self, leg: _Pair, epoch: int) -> None:
        """Answer a review hold now: PENDING / UNDER_REVIEW. Nothing is decided;
        the officer's ReviewTransfer or recovery at the deadline will."""
        log.info(
            "transfer_held_for_review",
            transfer_id=leg.transfer_id,
            epoch=epoch,
            debit_shard=leg.debit_shard,
            credit_shard=leg.credit_shard,
            review_deadline_unix_ms=(leg.record or leg.item.transfer).review_deadline_unix_ms,
        )
        result = decisions.under_review(leg.item.transfer, leg.record)
        result.cross_shard = leg.debit_shard != leg.credit_shard
        _resolve(leg.item, result)

    async def _prepare(self, legs: list[_Pair], epoch: int) -> None:
        by_shard: dict[str, list[tuple[_Pair, types_pb2.LegRole.ValueType]]] = defaultdict(list)
        for leg in legs:
            if not leg.direct:
                by_shard[leg.debit_shard].append((leg, types_pb2.LEG_ROLE_DEBIT))
            by_shard[leg.credit_shard].append((leg, types_pb2.LEG_ROLE_CREDIT))
        shard_ids = list(by_shard)
        answers = await asyncio.gather(
            *(
                self._shards.prepare(
                    shard_id,
                    epoch,
                    [
                        ledger_pb2.PrepareItem(transfer=leg.item.transfer, role=role)
                        for leg, role in by_shard[shard_id]
                    ],
                )
                for shard_id in shard_ids
            )
        )
        for shard_id, answer in zip(shard_ids, answers, strict=True):
            for index, (leg, role) in enumerate(by_shard[shard_id]):
                if isinstance(answer, errors.BankError):
                    vote = decisions.unreachable(answer)
                else:
                    vote = _classify_checked(answer[index], leg.transfer_id, shard_id)
                if role == types_pb2.LEG_ROLE_DEBIT:
                    leg.debit = vote
                    found = vote.vote in (decisions.Vote.PREPARED, decisions.Vote.COMMITTED)
                    if found and not isinstance(answer, errors.BankError):
                        leg.record = answer[index].transfer
                else:
                    leg.credit = vote

    async def _decide(
        self, to_decide: list[tuple[_Pair, Plan]], epoch: int
    ) -> tuple[dict[str, Verdict], list[_Item]]:
        """One Decide per record holder: (verdicts, items to retry). A direct
        decide's answer is also the record holder's vote (leg.debit): it may
        say SLOT_MOVED (retry; the credit leg stays PREPARED for the next
        round), or PREPARED for a review hold it left alone (answer it held)."""
        by_shard: dict[str, list[tuple[_Pair, Plan]]] = defaultdict(list)
        for leg, plan in to_decide:
            by_shard[leg.debit_shard].append((leg, plan))
        shard_ids = list(by_shard)
        answers = await asyncio.gather(
            *(
                self._shards.decide(
                    shard_id,
                    epoch,
                    [_decide_item(leg.item.transfer, plan, leg.direct) for leg, plan in by_shard[shard_id]],
                )
                for shard_id in shard_ids
            )
        )
        verdicts: dict[str, Verdict] = {}
        retry: list[_Item] = []
        for shard_id, answer in zip(shard_ids, answers, strict=True):
            for index, (leg, plan) in enumerate(by_shard[shard_id]):
                if isinstance(answer, errors.BankError):
                    verdicts[leg.transfer_id] = Verdict(
                        Truth.UNKNOWN,
                        decisions.CODE_UNAVAILABLE,
                        errors.NOT_LEADER
                        if answer.reason == errors.STALE_EPOCH
                        else errors.SHARD_UNAVAILABLE,
                        answer.message,
                    )
                elif not leg.direct:
                    verdicts[leg.transfer_id] = decisions.verdict_of_decide(plan, answer[index])
                else:
                    verdict = self._read_direct(leg, plan, answer[index], shard_id, epoch)
                    if verdict is not None:
                        verdicts[leg.transfer_id] = verdict
                    elif leg.debit.vote == decisions.Vote.SLOT_MOVED:
                        retry.append(leg.item)
        return verdicts, retry

    def _read_direct(
        self, leg: _Pair, plan: Plan, answer: ledger_pb2.Leg, shard_id: str, epoch: int
    ) -> Verdict | None:
        """A direct Decide's answer: sets the record holder's vote; the verdict,
        or None when there is none (SLOT_MOVED: retry; a review hold: held)."""
        leg.debit = _classify_checked(answer, leg.transfer_id, shard_id)
        if leg.debit.vote == decisions.Vote.SLOT_MOVED:
            return None
        if leg.debit.vote == decisions.Vote.PREPARED:  # a review hold, left alone
            leg.record = answer.transfer
            self._hold(leg, epoch)
            return None
        if leg.debit.vote == decisions.Vote.UNKNOWN:  # a garbled answer
            return decisions.verdict_of_vote(leg.debit)
        return decisions.verdict_of_direct(plan, leg.debit, answer)

    async def _finish(self, legs: list[_Pair], verdicts: dict[str, Verdict], epoch: int) -> None:
        by_shard: dict[str, list[ledger_pb2.DecideItem]] = defaultdict(list)
        for leg in legs:
            verdict = verdicts.get(leg.transfer_id)
            if verdict is None:
                continue
            if leg.debit.single_shard:
                # Settled on one shard before a move: this credit leg is no part of it.
                verdict = decisions.Verdict(
                    decisions.Truth.ABORTED, decisions.CODE_ABORTED, errors.SETTLED_SINGLE_SHARD
                )
            if decisions.finish_contradicts(leg.credit, verdict):
                log.error(
                    "invariant_credit_leg_contradicts_record",
                    transfer_id=leg.transfer_id,
                    epoch=epoch,
                    credit=leg.credit.vote.value,
                    record=verdict.truth.value,
                )
            rejected = leg.debit.vote in (decisions.Vote.CONFLICT, decisions.Vote.NOT_RECORDED)
            # A rejected item's credit leg is finished only when it is provably ours.
            if rejected and leg.credit.vote != decisions.Vote.PREPARED:
                continue
            if decisions.should_finish(leg.credit, verdict):
                by_shard[leg.credit_shard].append(_finish_item(leg.item.transfer, verdict))
        shard_ids = list(by_shard)
        answers = await asyncio.gather(*(self._shards.finish(s, epoch, by_shard[s]) for s in shard_ids))
        for shard_id, answer in zip(shard_ids, answers, strict=True):
            if isinstance(answer, errors.BankError):
                continue  # already logged; recovery finishes these legs
            for item, leg_answer in zip(by_shard[shard_id], answer, strict=True):
                if leg_answer.reason == errors.CONTRADICTORY_DECISION:
                    log.error(
                        "invariant_finish_contradicted",
                        transfer_id=item.transfer_id,
                        shard_id=shard_id,
                        asked=ledger_pb2.Decision.Name(item.decision),
                        actual=ledger_pb2.LegState.Name(leg_answer.state),
                        epoch=epoch,
                    )

    def _answer(self, legs: list[_Pair], verdicts: dict[str, Verdict], epoch: int) -> None:
        """Answer every decided item. A COMMITTED transfer is not logged one by
        one (a JSON line cost ~38 µs, more than the rest of the coordinator's
        work on it; its record holder journals it and `round_done` counts it);
        any other outcome is, up to OUTCOME_LOG_LINES_MAX per round."""
        logged = 0
        for leg in legs:
            verdict = verdicts.get(leg.transfer_id)
            if verdict is None:
                continue  # a retry
            transfer = leg.item.transfer
            if leg.debit.vote in (decisions.Vote.CONFLICT, decisions.Vote.NOT_RECORDED):
                result = decisions.rejected(transfer, verdict.code, verdict.reason, verdict.message)
            elif verdict.truth == Truth.UNKNOWN and self._leadership.epoch != epoch:
                result = decisions.unavailable(transfer, errors.NOT_LEADER, "deposed during the transfer")
            else:
                result = decisions.outcome(transfer, verdict)
            if result.status != types_pb2.TRANSFER_STATUS_COMMITTED and logged < OUTCOME_LOG_LINES_MAX:
                logged += 1
                log.info(
                    "transfer_done",
                    transfer_id=leg.transfer_id,
                    epoch=epoch,
                    status=types_pb2.TransferStatus.Name(result.status),
                    reason=result.reason,
                    debit_account_id=transfer.debit_account_id,
                    credit_account_id=transfer.credit_account_id,
                    debit_shard=leg.debit_shard,
                    credit_shard=leg.credit_shard,
                )
            _resolve(leg.item, result)

    async def _apply_local(self, local: dict[str, list[_Item]]) -> list[_Item]:
        """Both accounts on one shard (the gateway's map was older than ours):
        the shard posts the transfer in one step, no 2PC needed."""
        shard_ids = list(local)
        answers = await asyncio.gather(
            *(self._shards.apply(s, [i.transfer for i in local[s]]) for s in shard_ids)
        )
        retry: list[_Item] = []
        for shard_id, answer in zip(shard_ids, answers, strict=True):
            for index, item in enumerate(local[shard_id]):
                if isinstance(answer, errors.BankError):
                    _resolve(
                        item, decisions.unavailable(item.transfer, errors.SHARD_UNAVAILABLE, answer.message)
                    )
                elif answer[index].reason in (errors.SLOT_MOVED, errors.CROSS_SHARD):  # our map is stale
                    retry.append(item)
                else:
                    _resolve(item, answer[index])
        return retry


def _count_round(items: list[_Item], waiting: set[int], elapsed_s: float) -> dict[str, int]:
    """Metrics of one round: its size, its time, and one inc(n) per outcome;
    returns the count per outcome (for the round's log line)."""
    metrics.ROUND_ITEMS.observe(len(items))
    metrics.ROUND_DURATION.observe(elapsed_s)
    outcomes: collections.Counter[str] = collections.Counter(
        metrics.outcome_label(item.future.result())
        for item in items
        if id(item) not in waiting
        and item.future.done()
        and not item.future.cancelled()
        and item.future.exception() is None
    )
    for outcome, count in outcomes.items():
        metrics.COORDINATOR_TRANSFERS.labels(outcome).inc(count)
    return dict(outcomes)


def _classify_checked(leg: ledger_pb2.Leg, transfer_id: str, shard_id: str) -> Answer:
    if leg.transfer.id and leg.transfer.id != transfer_id:
        log.error("answer_out_of_order", shard_id=shard_id, expected=transfer_id, got=leg.transfer.id)
        return Answer(
            decisions.Vote.UNKNOWN, decisions.CODE_UNAVAILABLE, errors.SHARD_UNAVAILABLE, "bad answer"
        )
    return decisions.classify(leg)


def _decide_item(transfer: types_pb2.Transfer, plan: Plan, direct: bool) -> ledger_pb2.DecideItem:
    return ledger_pb2.DecideItem(
        transfer_id=transfer.id,
        decision=plan.decision,
        code=plan.code,
        reason=plan.reason,
        transfer=transfer,
        direct=direct,
    )


def _finish_item(transfer: types_pb2.Transfer, verdict: Verdict) -> ledger_pb2.DecideItem:
    decision = ledger_pb2.DECISION_COMMIT if verdict.truth == Truth.COMMITTED else ledger_pb2.DECISION_ABORT
    return ledger_pb2.DecideItem(
        transfer_id=transfer.id,
        decision=decision,
        code=verdict.code,
        reason=verdict.reason,
        transfer=transfer,
    )


def _answer_stopping(item: _Item) -> None:
    _resolve(item, decisions.unavailable(item.transfer, errors.NOT_LEADER, "coordinator stopping"))


def _resolve(item: _Item, result: types_pb2.Transfer) -> None:
    if not item.future.done():
        item.future.set_result(result)
