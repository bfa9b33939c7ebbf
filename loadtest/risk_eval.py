"""Precision and recall of the risk engine over a synthetic day, in-process.

The engine and the feature computation run in this process over the day's
transfers in time order (the shards' window code, `shardbank.activity`, on a
simulated clock: `gateway.risk.state.MemoryActivity`), so a day of thousands
of customers is scored in seconds. A transfer the engine lets through
(ALLOW) moves money and counts in later windows; a REVIEW or BLOCK does not.

A transfer is *flagged* when the engine raises an alert for it (REVIEW,
BLOCK, or an alert-only AML rule). A planted pattern is *caught* when at
least one of its transfers is flagged. Precision: flagged transfers that
belong to a planted pattern / all flagged. Recall: caught patterns / planted.
False-positive rate: flagged normal transfers / normal transfers.

    python -m loadtest.risk_eval --seed 7 --customers 5000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from gateway.risk import config as risk_config
from gateway.risk.config import RiskConfig
from gateway.risk.gate import assess_batch, queries_of
from gateway.risk.state import MemoryActivity
from loadtest.synthetic_day import SyntheticDay, generate


@dataclass
class Evaluation:
    transfers: int
    flagged: int
    flagged_planted: int
    flagged_normal: int
    normal: int
    patterns: int
    caught: dict[str, int] = field(default_factory=dict)
    planted: dict[str, int] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    # transfer id -> (decision name, rules) of every flagged transfer.
    decisions: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.flagged_planted / self.flagged if self.flagged else 1.0

    @property
    def recall(self) -> float:
        return sum(self.caught.values()) / self.patterns if self.patterns else 1.0

    @property
    def false_positive_rate(self) -> float:
        return self.flagged_normal / self.normal if self.normal else 0.0

    def summary(self) -> str:
        per_kind = ", ".join(f"{k} {self.caught.get(k, 0)}/{n}" for k, n in sorted(self.planted.items()))
        return (
            f"{self.transfers} transfers, {self.patterns} planted patterns: recall {self.recall:.3f} "
            f"({per_kind}); precision {self.precision:.3f} ({self.flagged_planted}/{self.flagged} flagged "
            f"are planted); false positives {self.flagged_normal}/{self.normal} normal transfers "
            f"= {self.false_positive_rate:.4%}"
        )


def memory_activity(day: SyntheticDay) -> MemoryActivity:
    """The day's accounts and their history before the day, in memory."""
    activity = MemoryActivity()
    for account in day.accounts:
        activity.open(account.account_id, account.account_type, account.customer_id, account.created_at_ms)
    for past in day.history:
        activity.post(past.to_proto(), past.at_ms)
    return activity


def evaluate(day: SyntheticDay, config: RiskConfig) -> Evaluation:
    activity = memory_activity(day)
    flagged: set[str] = set()
    decisions: dict[str, tuple[str, tuple[str, ...]]] = {}
    for item in day.transfers:
        transfer = item.to_proto()
        activity.now_ms = item.at_ms
        found = activity.fetch_now(queries_of(transfer), config)
        (assessment,) = assess_batch([transfer], found, config, item.at_ms)
        if assessment.decision_name == "ALLOW":
            activity.post(transfer, item.at_ms)
        if assessment.needs_alert:
            flagged.add(item.transfer_id)
            decisions[item.transfer_id] = (assessment.decision_name, assessment.rules)
    return score(day, flagged, decisions)


def score(
    day: SyntheticDay, flagged: set[str], decisions: dict[str, tuple[str, tuple[str, ...]]] | None = None
) -> Evaluation:
    """Precision/recall of a set of flagged transfer ids (in-process or read back from a cluster)."""
    labels = day.labels()
    result = Evaluation(
        transfers=len(day.transfers),
        flagged=len(flagged),
        flagged_planted=sum(1 for t in flagged if t in labels),
        flagged_normal=sum(1 for t in flagged if t not in labels),
        normal=len(day.transfers) - len(labels),
        patterns=len(day.patterns),
        decisions=decisions or {},
    )
    for pattern in day.patterns:
        result.planted[pattern.kind] = result.planted.get(pattern.kind, 0) + 1
        if any(t in flagged for t in pattern.transfer_ids):
            result.caught[pattern.kind] = result.caught.get(pattern.kind, 0) + 1
        else:
            result.missed.append(pattern.pattern_id)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.risk_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--patterns-per-kind", type=int, default=5)
    parser.add_argument("--risk-config", default=risk_config.DEFAULT_PATH)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    day = generate(args.seed, args.customers, patterns_per_kind=args.patterns_per_kind)
    generated = time.perf_counter()
    result = evaluate(day, risk_config.load(args.risk_config))
    done = time.perf_counter()
    print(result.summary())
    per_transfer_us = (done - generated) / max(1, result.transfers) * 1e6
    print(f"generated in {generated - started:.2f} s, scored in {done - generated:.2f} s "
          f"({per_transfer_us:.0f} us per transfer, in-process)")  # fmt: skip
    return 0 if not result.missed else 1


if __name__ == "__main__":
    raise SystemExit(main())
