"""Recovery: end every transfer left PREPARED past the prepare timeout.

Runs on election and then every `interval_s` while leader. Participants never
expire legs themselves, so this loop is what guarantees that, after a
coordinator crash at any step, every hold and pending credit is released or
posted within seconds of a leader being in office.

For each PREPARED leg found by `ListInDoubt(older_than_ms=prepare_timeout_ms)`:

1. `Decide(ABORT, body)` at the record holder (presumed abort). Its answer is
   the truth: ABORTED (just now, or before), or COMMITTED shown through
   CONTRADICTORY_DECISION (the old leader decided commit and died before
   finishing). With no record there, the node writes an ABORTED tombstone, so
   a late Prepare of the same id finds ABORTED.
2. `Finish(truth)` at the credit shard (a tombstone there too when no leg).

The timeout keeps recovery from racing the live rounds: a round's prepare,
decide and finish take milliseconds; only a transfer stuck far longer than
that is presumed abandoned. Racing is still safe (the record holder's
conditional write decides), only less friendly: the round then reports the
abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TypeVar

import structlog

from coordinator import decisions
from coordinator.decisions import Plan, Step, Truth, Verdict
from coordinator.shards import Leadership, Shards
from shardbank import errors, limits, metrics
from shardbank.directory import UnknownShard
from shardbank.v1 import ledger_pb2, types_pb2

log = structlog.get_logger("recovery")

T = TypeVar("T")

# A leg prepared longer ago than this is presumed abandoned. Rounds finish in
# milliseconds; 2 s leaves a wide margin on a loaded 2-core machine.
PREPARE_TIMEOUT_MS_DEFAULT = 2000
# How often the leader sweeps the shards.
SWEEP_INTERVAL_S = 1.0
# Legs one ListInDoubt returns; more are taken at the next sweep.
IN_DOUBT_LIMIT = limits.BATCH_ITEMS_MAX

_PRESUMED_ABORT = Plan(
    Step.DECIDE,
    ledger_pb2.DECISION_ABORT,
    decisions.CODE_ABORTED,
    errors.PREPARE_TIMEOUT,
    "prepared too long ago; presumed abort",
)


@dataclass
class _Doubt:
    transfer: types_pb2.Transfer
    prepared_at_unix_ms: int
    record_holder: str = ""
    credit_shard: str = ""


class Recovery:
    def __init__(
        self,
        shards: Shards,
        leadership: Leadership,
        prepare_timeout_ms: int = PREPARE_TIMEOUT_MS_DEFAULT,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._shards = shards
        self._leadership = leadership
        self._prepare_timeout_ms = prepare_timeout_ms
        self._interval_s = interval_s
        self._kick = asyncio.Event()

    def kick(self) -> None:
        """Sweep now (called on election)."""
        self._kick.set()

    async def run(self) -> None:
        while True:
            if self._leadership.is_leader:
                try:
                    await self.sweep()
                except Exception:  # a bug: log, keep sweeping; holds must not stay forever
                    log.exception("sweep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._interval_s)
            self._kick.clear()

    async def sweep(self) -> int:
        """One pass over every shard; the number of transfers resolved."""
        epoch = self._leadership.epoch
        if epoch == 0:
            return 0
        doubts = await self._collect()
        metrics.IN_DOUBT_FOUND.set(len(doubts))
        if not doubts:
            return 0
        verdicts = await self._decide(doubts, epoch)
        if self._leadership.epoch != epoch:
            return 0
        await self._finish(doubts, verdicts, epoch)
        now_ms = int(time.time() * 1000)
        for transfer_id, verdict in verdicts.items():
            doubt = doubts[transfer_id]
            if verdict.truth == Truth.UNKNOWN:
                log.warning(
                    "in_doubt_unresolved",
                    transfer_id=transfer_id,
                    epoch=epoch,
                    record_holder=doubt.record_holder,
                    reason=verdict.reason,
                )
                continue
            metrics.IN_DOUBT_RESOLVED.labels(verdict.truth.value.lower()).inc()
            log.info(
                "in_doubt_resolved",
                transfer_id=transfer_id,
                epoch=epoch,
                outcome=verdict.truth.value,
                record_holder=doubt.record_holder,
                credit_shard=doubt.credit_shard,
                time_to_resolve_ms=max(0, now_ms - doubt.prepared_at_unix_ms),
            )
        return sum(1 for v in verdicts.values() if v.truth != Truth.UNKNOWN)

    async def _collect(self) -> dict[str, _Doubt]:
        shard_ids = self._shards.router.shard_ids()
        answers = await asyncio.gather(
            *(self._shards.list_in_doubt(s, self._prepare_timeout_ms, IN_DOUBT_LIMIT) for s in shard_ids)
        )
        doubts: dict[str, _Doubt] = {}
        for shard_id, answer in zip(shard_ids, answers, strict=True):
            if isinstance(answer, errors.BankError):
                continue  # logged by Shards; the next sweep tries again
            for leg in answer:
                if leg.state != ledger_pb2.LEG_STATE_PREPARED or not leg.transfer.id:
                    continue
                doubt = doubts.setdefault(leg.transfer.id, _Doubt(leg.transfer, leg.prepared_at_unix_ms))
                doubt.prepared_at_unix_ms = min(doubt.prepared_at_unix_ms, leg.prepared_at_unix_ms)
                if leg.role == types_pb2.LEG_ROLE_DEBIT:
                    doubt.record_holder = shard_id
                else:
                    doubt.credit_shard = shard_id
        for transfer_id in list(doubts):
            doubt = doubts[transfer_id]
            try:
                doubt.record_holder = doubt.record_holder or self._shards.router.owner(
                    doubt.transfer.debit_account_id
                )
                doubt.credit_shard = doubt.credit_shard or self._shards.router.owner(
                    doubt.transfer.credit_account_id
                )
            except UnknownShard:
                log.warning("in_doubt_unroutable", transfer_id=transfer_id)
                del doubts[transfer_id]
        return doubts

    async def _decide(self, doubts: dict[str, _Doubt], epoch: int) -> dict[str, Verdict]:
        by_shard: dict[str, list[str]] = defaultdict(list)
        for transfer_id, doubt in doubts.items():
            by_shard[doubt.record_holder].append(transfer_id)
        calls = [(s, chunk) for s, ids in by_shard.items() for chunk in _chunks(ids)]
        answers = await asyncio.gather(
            *(
                self._shards.decide(s, epoch, [_abort_item(doubts[t].transfer) for t in chunk])
                for s, chunk in calls
            )
        )
        verdicts: dict[str, Verdict] = {}
        for (_, chunk), answer in zip(calls, answers, strict=True):
            for index, transfer_id in enumerate(chunk):
                if isinstance(answer, errors.BankError):
                    verdicts[transfer_id] = Verdict(Truth.UNKNOWN, decisions.CODE_UNAVAILABLE, answer.reason)
                else:
                    plan = presumed_abort(doubts[transfer_id].transfer)
                    verdicts[transfer_id] = decisions.verdict_of_decide(plan, answer[index])
        return verdicts

    async def _finish(self, doubts: dict[str, _Doubt], verdicts: dict[str, Verdict], epoch: int) -> None:
        by_shard: dict[str, list[ledger_pb2.DecideItem]] = defaultdict(list)
        for transfer_id, verdict in verdicts.items():
            if verdict.truth == Truth.UNKNOWN:
                continue
            decision = (
                ledger_pb2.DECISION_COMMIT if verdict.truth == Truth.COMMITTED else ledger_pb2.DECISION_ABORT
            )
            doubt = doubts[transfer_id]
            by_shard[doubt.credit_shard].append(
                ledger_pb2.DecideItem(
                    transfer_id=transfer_id,
                    decision=decision,
                    code=verdict.code,
                    reason=verdict.reason,
                    transfer=doubt.transfer,
                )
            )
        calls = [(s, chunk) for s, items in by_shard.items() for chunk in _chunks(items)]
        answers = await asyncio.gather(*(self._shards.finish(s, epoch, chunk) for s, chunk in calls))
        for (shard_id, chunk), answer in zip(calls, answers, strict=True):
            if isinstance(answer, errors.BankError):
                continue  # the leg stays PREPARED; the next sweep finds it again
            for item, leg in zip(chunk, answer, strict=True):
                if leg.code != decisions.OK:
                    log.error(
                        "finish_refused",
                        transfer_id=item.transfer_id,
                        shard_id=shard_id,
                        asked=ledger_pb2.Decision.Name(item.decision),
                        reason=leg.reason,
                        actual=ledger_pb2.LegState.Name(leg.state),
                        epoch=epoch,
                    )


_REVIEW_EXPIRED = Plan(
    Step.DECIDE,
    ledger_pb2.DECISION_ABORT,
    decisions.CODE_ABORTED,
    errors.REVIEW_EXPIRED,
    "not reviewed before the deadline; hold released",
)


def presumed_abort(transfer: types_pb2.Transfer) -> Plan:
    """Why recovery aborts it: a review hold whose deadline passed is
    REVIEW_EXPIRED (the node lists it only from its deadline on), anything
    else PREPARE_TIMEOUT."""
    return _REVIEW_EXPIRED if transfer.review_deadline_unix_ms else _PRESUMED_ABORT


def _abort_item(transfer: types_pb2.Transfer) -> ledger_pb2.DecideItem:
    plan = presumed_abort(transfer)
    return ledger_pb2.DecideItem(
        transfer_id=transfer.id,
        decision=ledger_pb2.DECISION_ABORT,
        code=plan.code,
        reason=plan.reason,
        transfer=transfer,
    )


def _chunks(values: list[T]) -> list[list[T]]:
    size = limits.BATCH_ITEMS_MAX
    return [values[i : i + size] for i in range(0, len(values), size)]
