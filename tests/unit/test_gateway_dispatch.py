"""The gateway's batch router with fake destinations: grouping, order,
re-routing after SLOT_MOVED, resending after UNAVAILABLE, giving up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import grpc

from gateway import dispatch
from gateway.dispatch import Budget
from gateway.routing import COORDINATOR, Disposition, Target, shard
from shardbank import errors


@dataclass(frozen=True)
class Item:
    name: str
    account: int


@dataclass(frozen=True)
class Result:
    name: str
    code: int = 0
    reason: str = ""
    where: str = ""


def unreachable(reason: str = errors.SHARD_UNAVAILABLE) -> errors.BankError:
    return errors.BankError(grpc.StatusCode.UNAVAILABLE, reason, "down")


@dataclass
class FakeCluster:
    """owners: account -> shard; scripts: per target, answers to give per call (then OK)."""

    owners: dict[int, str]
    moved_owners: dict[int, str] = field(default_factory=dict)
    failures: dict[Target, list[errors.BankError]] = field(default_factory=dict)
    slot_moved_once: set[str] = field(default_factory=set)
    calls: list[tuple[Target, list[str]]] = field(default_factory=list)
    refreshes: int = 0
    unreachable_calls: list[Target] = field(default_factory=list)
    in_flight: int = 0
    in_flight_max: int = 0

    # Topology.
    async def refresh_map(self) -> None:
        self.refreshes += 1
        self.owners.update(self.moved_owners)

    async def unreachable(self, target: Target, error: errors.BankError) -> None:
        self.unreachable_calls.append(target)


class FakePlan:
    def __init__(self, cluster: FakeCluster, short_reply: bool = False) -> None:
        self.cluster = cluster
        self.short_reply = short_reply

    def target(self, item: Item) -> Target:
        if item.account < 0:
            return COORDINATOR
        owner = self.cluster.owners.get(item.account)
        if owner is None:
            raise unreachable()
        return shard(owner)

    async def send(self, target: Target, items: list[Item], timeout_s: float) -> list[Result]:
        cluster = self.cluster
        cluster.calls.append((target, [i.name for i in items]))
        cluster.in_flight += 1
        cluster.in_flight_max = max(cluster.in_flight_max, cluster.in_flight)
        await asyncio.sleep(0.01)
        cluster.in_flight -= 1
        script = cluster.failures.get(target)
        if script:
            raise script.pop(0)
        results = []
        for item in items:
            if item.name in cluster.slot_moved_once:
                cluster.slot_moved_once.discard(item.name)
                results.append(Result(item.name, 10, errors.SLOT_MOVED, str(target)))
            elif item.name.startswith("taken"):
                results.append(Result(item.name, 6, errors.ACCOUNT_EXISTS, str(target)))
            else:
                results.append(Result(item.name, where=str(target)))
        return results[:-1] if self.short_reply else results

    def classify(self, result: Result) -> Disposition:
        if result.reason == errors.SLOT_MOVED:
            return Disposition.MOVED
        if result.reason == errors.ACCOUNT_EXISTS:
            return Disposition.RENEW
        if result.code == 14:
            return Disposition.UNAVAILABLE
        return Disposition.DONE

    def renew(self, item: Item) -> Item:
        return replace(item, name="fresh-" + item.name)

    def give_up(self, item: Item, error: errors.BankError) -> Result:
        return Result(item.name, error.code_value, error.reason, "gave-up")


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(items: list[Item], cluster: FakeCluster, budget_s: float = 10.0, **kwargs: object) -> list[Result]:
    plan = FakePlan(cluster, **kwargs)  # type: ignore[arg-type]
    sleeps = Sleeps()
    results = asyncio.run(dispatch.dispatch(items, plan, cluster, Budget(budget_s), sleep=sleeps))
    cluster.waits = sleeps.waits  # type: ignore[attr-defined]
    return results


def test_groups_go_concurrently_and_results_keep_request_order() -> None:
    cluster = FakeCluster({1: "shard-1", 2: "shard-2"})
    items = [Item("a", 1), Item("b", 2), Item("c", -1), Item("d", 1)]
    results = run(items, cluster)
    assert [r.name for r in results] == ["a", "b", "c", "d"]
    assert [r.where for r in results] == ["shard-1", "shard-2", "coordinator", "shard-1"]
    assert sorted(len(names) for _, names in cluster.calls) == [1, 1, 2]
    assert cluster.in_flight_max == 3


def test_slot_moved_refreshes_the_map_and_reroutes_only_that_item() -> None:
    cluster = FakeCluster({1: "shard-1", 2: "shard-1"}, moved_owners={2: "shard-2"}, slot_moved_once={"b"})
    results = run([Item("a", 1), Item("b", 2)], cluster)
    assert [(r.name, r.code, r.where) for r in results] == [("a", 0, "shard-1"), ("b", 0, "shard-2")]
    assert cluster.refreshes == 1
    assert cluster.calls[-1] == (shard("shard-2"), ["b"])
    assert cluster.waits == []  # type: ignore[attr-defined]


def test_unavailable_is_resent_with_the_same_item_after_a_backoff() -> None:
    cluster = FakeCluster({1: "shard-1"}, failures={shard("shard-1"): [unreachable(), unreachable()]})
    results = run([Item("a", 1)], cluster)
    assert results == [Result("a", where="shard-1")]
    assert [names for _, names in cluster.calls] == [["a"], ["a"], ["a"]]
    assert cluster.unreachable_calls == [shard("shard-1")] * 2
    waits = cluster.waits  # type: ignore[attr-defined]
    assert len(waits) == 2 and 0 < waits[0] <= dispatch.BACKOFF_INITIAL_S


def test_persistent_unavailable_gives_up_with_code_14_and_bounded_attempts() -> None:
    failures = [unreachable(errors.NOT_LEADER) for _ in range(100)]
    cluster = FakeCluster({1: "shard-1"}, failures={COORDINATOR: failures})
    results = run([Item("x", -1), Item("a", 1)], cluster)
    assert results[0] == Result("x", 14, errors.NOT_LEADER, "gave-up")
    assert results[1] == Result("a", where="shard-1")
    assert len([c for c in cluster.calls if c[0] == COORDINATOR]) == dispatch.ATTEMPTS_MAX


def test_the_callers_deadline_bounds_the_retries() -> None:
    failures = [unreachable() for _ in range(100)]
    cluster = FakeCluster({1: "shard-1"}, failures={shard("shard-1"): failures})
    results = run([Item("a", 1)], cluster, budget_s=0.05)
    assert results == [Result("a", 14, errors.SHARD_UNAVAILABLE, "gave-up")]
    assert len(cluster.calls) == 1


def test_unknown_destination_counts_as_unavailable() -> None:
    cluster = FakeCluster({}, moved_owners={})
    results = run([Item("a", 1)], cluster, budget_s=0.3)
    assert results[0].code == 14
    assert results[0].where == "gave-up"
    assert cluster.calls == []


def test_renew_retries_with_a_new_item() -> None:
    cluster = FakeCluster({1: "shard-1"})
    results = run([Item("taken", 1)], cluster)
    # The renewed item ("fresh-taken") no longer collides.
    assert results == [Result("fresh-taken", where="shard-1")]


def test_a_final_call_error_settles_the_group_at_once() -> None:
    internal = errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, "boom")
    cluster = FakeCluster({1: "shard-1", 2: "shard-2"}, failures={shard("shard-1"): [internal]})
    results = run([Item("a", 1), Item("b", 2)], cluster)
    assert results[0] == Result("a", 13, errors.INTERNAL, "gave-up")
    assert results[1].code == 0
    assert len(cluster.calls) == 2


def test_a_short_reply_is_internal_not_a_shifted_answer() -> None:
    cluster = FakeCluster({1: "shard-1"})
    results = run([Item("a", 1), Item("b", 1)], cluster, short_reply=True)
    assert all(r.reason == errors.INTERNAL and r.where == "gave-up" for r in results)


def test_slot_moved_until_the_end_gives_up_as_a_retryable_slot_moving() -> None:
    cluster = FakeCluster({1: "shard-1"})
    cluster.slot_moved_once = set()

    class AlwaysMoved(FakePlan):
        async def send(self, target: Target, items: list[Item], timeout_s: float) -> list[Result]:
            self.cluster.calls.append((target, [i.name for i in items]))
            return [Result(i.name, 10, errors.SLOT_MOVED, str(target)) for i in items]

    results = asyncio.run(dispatch.dispatch([Item("a", 1)], AlwaysMoved(cluster), cluster, Budget(5.0)))
    # Not the node's SLOT_MOVED (a final-looking REJECTED): UNAVAILABLE, resend the same id.
    assert results == [Result("a", 14, errors.SLOT_MOVING, "gave-up")]
    assert len(cluster.calls) == dispatch.ATTEMPTS_MAX
    assert cluster.refreshes == dispatch.ATTEMPTS_MAX - 1


def test_budget() -> None:
    now = [100.0]
    budget = Budget(1.0, clock=lambda: now[0])
    assert budget.remaining_s() == 1.0
    assert budget.call_timeout_s() == 1.0 - dispatch.REPLY_MARGIN_S
    assert budget.affords(0.5)
    now[0] = 100.95
    assert not budget.affords(0.0)
    assert budget.call_timeout_s() == dispatch.CALL_TIMEOUT_S_MIN
    assert all(0 < dispatch.backoff_s(n) <= dispatch.BACKOFF_MAX_S for n in range(20))
