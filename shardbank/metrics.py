"""Prometheus metrics of every shardbank process, defined in one place.

Each process (ledger node, coordinator, gateway) serves `/metrics` on its
`--metrics-port` (0: off) through `serve()`, and announces the address in its
etcd registration as `metrics_address`. The Grafana dashboard
(`docs/grafana/shardbank.json`) reads only names defined here; a unit test
checks that, so the dashboard cannot rot silently.

Hot-path cost is kept tiny on purpose:
- counters and histograms move once per RPC, per drain or per round, with
  `inc(n)` for the n items in it, never once per transfer;
- values the processes already keep (a node's journal sequence, committed
  transfers, queue depth, RocksDB properties; slot-move records in etcd) are
  read only when Prometheus scrapes, by collectors (`NodeCollector`,
  `MoveCollector`), so serving costs nothing between scrapes;
- no label holds a transfer id or an account id (unbounded cardinality);
  labels are component, rpc, kind, outcome, and for slot moves the move id
  (few moves, and only unfinished ones are exported per move).
"""

from __future__ import annotations

import collections
import operator
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shardbank.moves import MOVES, PHASES, Move
from shardbank.v1 import types_pb2

log = structlog.get_logger("metrics")

NAMESPACE = "shardbank"
# Component label values.
LEDGER_NODE = "ledger_node"
COORDINATOR = "coordinator"
GATEWAY = "gateway"

# Latency of one RPC as the server saw it: 0.5 ms (a read from memory) up to
# the 30 s a loaded batch call may take.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Items in one request / drain / round: 1 (a single transfer) up to the
# group-commit drain limit (limits.GROUP_COMMIT_ITEMS_MAX is 8192 or less).
ITEMS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# One synced RocksDB WriteBatch: 50 us (a fast SSD) to 1 s (a stalled disk).
SYNC_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# ---- every component --------------------------------------------------------------

RPC_DURATION = Histogram(
    "shardbank_rpc_duration_seconds",
    "Server-side latency of one RPC, from the handler's start to its answer.",
    ["component", "rpc"],
    buckets=LATENCY_BUCKETS_S,
)
RPC_FAILURES = Counter(
    "shardbank_rpc_failures_total",
    "RPCs that ended in a whole-request error status (per-item refusals are not counted here).",
    ["component", "rpc", "code"],
)
BATCH_ITEMS = Histogram(
    "shardbank_batch_items",
    "Items (transfers, legs, accounts) in one request.",
    ["component", "rpc"],
    buckets=ITEMS_BUCKETS,
)
NODE_STREAM_OPENS = Counter(
    "shardbank_node_stream_opens_total",
    "WriteStreams this process opened to a ledger node (one per node while healthy; "
    "each further open follows a broken stream).",
    ["node"],
)

# ---- gateway ----------------------------------------------------------------------

GATEWAY_TRANSFERS = Counter(
    "shardbank_gateway_transfers_total",
    "Transfers answered by the gateway, by kind (deposit, withdrawal, transfer, payment) and "
    "outcome (the transfer status: committed, aborted, rejected, pending; unavailable when "
    "the outcome was not learned).",
    ["kind", "outcome"],
)
GATEWAY_DOWNSTREAM_ITEMS = Histogram(
    "shardbank_gateway_downstream_items",
    "Transfers in one call from the gateway to a node (ApplyTransfers) or the coordinator leader "
    "(SubmitTransfers), after concurrent callers' sends were coalesced into it.",
    ["rpc"],
    buckets=ITEMS_BUCKETS,
)
GATEWAY_DOWNSTREAM_CALLERS = Histogram(
    "shardbank_gateway_downstream_callers",
    "Callers (dispatch sends) sharing one downstream transfer call (gateway.coalesce).",
    ["rpc"],
    buckets=ITEMS_BUCKETS,
)

# ---- ledger node ------------------------------------------------------------------

GROUP_COMMIT_ITEMS = Histogram(
    "shardbank_node_group_commit_items",
    "Items applied by one writer drain (one synced WriteBatch).",
    buckets=ITEMS_BUCKETS,
)
GROUP_COMMIT_SYNC = Histogram(
    "shardbank_node_group_commit_sync_seconds",
    "Time to write and fsync one drain's WriteBatch (RocksDB, WAL synced).",
    buckets=SYNC_BUCKETS_S,
)
GROUP_COMMIT_APPLY = Histogram(
    "shardbank_node_group_commit_apply_seconds",
    "Time the state machine spent applying one drain in memory, before the write.",
    buckets=SYNC_BUCKETS_S,
)

# Read at scrape time from the node (NodeCollector): name -> help.
NODE_GAUGES = {
    "shardbank_node_writer_queue_items": "Items queued for the group-commit writer.",
    "shardbank_node_in_doubt_legs": "PREPARED 2PC records and legs on this shard (any age).",
    "shardbank_node_journal_seq": "Sequence number of the journal head.",
    "shardbank_node_accounts": "Accounts on this shard (customer and system).",
    "shardbank_node_slots_owned": "Slots the slot map assigns to this shard.",
    "shardbank_node_slot_map_version": "Version of the slot map this node serves by.",
    "shardbank_node_max_epoch_seen": "Highest coordinator epoch this shard has seen (fencing).",
    "shardbank_node_frame_connections": "Open frame lane connections (gateways' and coordinators' writes).",
}
NODE_COUNTERS = {
    "shardbank_node_transfers_committed": "Transfers posted on this shard (single-shard posts and "
    "committed 2PC legs); since the shard was created, not since the process started.",
    "shardbank_node_group_commit_drains": "Writer drains since the process started.",
}
# RocksDB integer properties (rocksdict `property_int_value`) -> metric name.
ROCKSDB_PROPERTIES = {
    "rocksdb.estimate-num-keys": "shardbank_rocksdb_estimate_num_keys",
    "rocksdb.total-sst-files-size": "shardbank_rocksdb_total_sst_files_size_bytes",
    "rocksdb.live-sst-files-size": "shardbank_rocksdb_live_sst_files_size_bytes",
    "rocksdb.cur-size-all-mem-tables": "shardbank_rocksdb_mem_tables_size_bytes",
    "rocksdb.estimate-live-data-size": "shardbank_rocksdb_estimate_live_data_size_bytes",
    "rocksdb.estimate-pending-compaction-bytes": "shardbank_rocksdb_pending_compaction_bytes",
    "rocksdb.num-running-compactions": "shardbank_rocksdb_running_compactions",
    "rocksdb.num-running-flushes": "shardbank_rocksdb_running_flushes",
    "rocksdb.num-immutable-mem-table": "shardbank_rocksdb_immutable_mem_tables",
    "rocksdb.actual-delayed-write-rate": "shardbank_rocksdb_delayed_write_rate_bytes",
    "rocksdb.is-write-stopped": "shardbank_rocksdb_write_stopped",
}

# ---- coordinator ------------------------------------------------------------------

COORDINATOR_TRANSFERS = Counter(
    "shardbank_coordinator_transfers_total",
    "Cross-shard transfers answered by the coordinator leader, by outcome "
    "(committed, aborted, rejected, pending; unavailable when the outcome was not learned).",
    ["outcome"],
)
ROUND_ITEMS = Histogram(
    "shardbank_coordinator_round_items",
    "Transfers in one 2PC round (they share one Prepare/Decide/Finish RPC per shard).",
    buckets=ITEMS_BUCKETS,
)
ROUND_DURATION = Histogram(
    "shardbank_coordinator_round_seconds",
    "Time of one 2PC round, prepare to finish.",
    buckets=LATENCY_BUCKETS_S,
)
IS_LEADER = Gauge("shardbank_coordinator_is_leader", "1 while this coordinator is the leader, else 0.")
EPOCH = Gauge(
    "shardbank_coordinator_epoch", "Epoch of this coordinator's term while leader; else the known leader's."
)
LEADER_CHANGES = Counter(
    "shardbank_coordinator_leader_changes_total", "Times this coordinator became or stopped being leader."
)
IN_DOUBT_FOUND = Gauge(
    "shardbank_coordinator_in_doubt_transfers",
    "In-doubt transfers (PREPARED past the prepare timeout) the last recovery sweep found.",
)
IN_DOUBT_RESOLVED = Counter(
    "shardbank_coordinator_in_doubt_resolved_total",
    "In-doubt transfers recovery ended, by outcome (committed, aborted).",
    ["outcome"],
)

# Slot moves, read from etcd at scrape time by the leader (MoveCollector).
MOVE_GAUGES = {
    "shardbank_slot_move_accounts_total": "Accounts the unfinished move has to copy.",
    "shardbank_slot_move_accounts_copied": "Accounts the unfinished move has copied so far.",
    "shardbank_slot_move_records_copied": "Records (transfers, journal) the move has copied.",
    "shardbank_slot_move_slots": "Slots the unfinished move carries.",
    "shardbank_slot_move_progress_ratio": "accounts_copied / accounts_total of the unfinished move (0..1).",
    "shardbank_slot_move_age_seconds": "Seconds since the unfinished move started.",
}
MOVE_PHASE = "shardbank_slot_move_phase"
MOVES_BY_PHASE = "shardbank_slot_moves"


SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def base_name(series: str) -> str:
    """A series name without the suffix Prometheus adds (`x_seconds_bucket` -> `x_seconds`)."""
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def defined_labels() -> dict[str, frozenset[str]]:
    """Every metric family this module defines (base name, see `base_name`) ->
    its label names: what the dashboard's PromQL may use."""
    families: dict[str, frozenset[str]] = {
        base_name(metric._name): frozenset(metric._labelnames)  # prometheus_client keeps them here
        for metric in (
            RPC_DURATION, RPC_FAILURES, BATCH_ITEMS, GATEWAY_TRANSFERS, GROUP_COMMIT_ITEMS,
            GROUP_COMMIT_SYNC, GROUP_COMMIT_APPLY, COORDINATOR_TRANSFERS, ROUND_ITEMS, ROUND_DURATION,
            IS_LEADER, EPOCH, LEADER_CHANGES, IN_DOUBT_FOUND, IN_DOUBT_RESOLVED,
        )
    }  # fmt: skip
    move_labels = frozenset({"move_id", "source", "target"})
    families |= {name: frozenset() for name in [*NODE_GAUGES, *NODE_COUNTERS, *ROCKSDB_PROPERTIES.values()]}
    families |= dict.fromkeys(MOVE_GAUGES, move_labels)
    families[MOVE_PHASE] = move_labels | {"phase"}
    families[MOVES_BY_PHASE] = frozenset({"phase"})
    return families


def defined_names() -> set[str]:
    return set(defined_labels())


# Per-item code of an answer whose outcome was not learned (google.rpc UNAVAILABLE).
CODE_UNAVAILABLE = 14


def _enum_labels(items: Iterable[tuple[str, int]], prefix: str) -> dict[int, str]:
    return {int(number): name.removeprefix(prefix).lower() for name, number in items}


KIND_LABELS = _enum_labels(types_pb2.TransferKind.items(), "TRANSFER_KIND_")
STATUS_LABELS = _enum_labels(types_pb2.TransferStatus.items(), "TRANSFER_STATUS_")


def outcome_of(status: int, code: int) -> str:
    """The `outcome` label: the transfer status in lower case, or
    `unavailable` when the outcome was not learned (code UNAVAILABLE)."""
    if code == CODE_UNAVAILABLE:
        return "unavailable"
    return STATUS_LABELS.get(status, "unspecified")


def outcome_label(transfer: types_pb2.Transfer) -> str:
    return outcome_of(transfer.status, transfer.code)


_KIND_STATUS_CODE = operator.attrgetter("kind", "status", "code")


def count_transfers(outcomes: Iterable[types_pb2.Transfer]) -> None:
    """The gateway's transfer counter. One C-level pass over a batch's answers
    (~0.5 us per transfer measured, against ~20 us the gateway spends on it),
    labels made once per distinct (kind, status, code), then one inc(n) each."""
    for (kind, status, code), count in collections.Counter(map(_KIND_STATUS_CODE, outcomes)).items():
        GATEWAY_TRANSFERS.labels(KIND_LABELS.get(kind, "unspecified"), outcome_of(status, code)).inc(count)


# ---- serving ----------------------------------------------------------------------


def serve(port: int, host: str) -> str:
    """Serve /metrics on host:port from a daemon thread; the bound "host:port".
    Port 0 is "off" for the processes' flag, so callers only call this with a port."""
    server, _thread = start_http_server(port, addr=host)
    return f"{host}:{server.server_port}"


def add_port_argument(parser: Any) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port, same host as --listen (0: off)",
    )


def start_for(listen: str, port: int) -> str:
    """Start the endpoint for a process listening on `listen` (host:port); "" when off."""
    if port <= 0:
        return ""
    host = listen.rpartition(":")[0] or "127.0.0.1"
    address = serve(port, host)
    log.info("metrics_serving", metrics_address=address)
    return address


def register(collector: Collector) -> Callable[[], None]:
    """Add a scrape-time collector; returns its removal (tests build several in one process)."""
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)


# ---- scrape-time collectors ---------------------------------------------------------


@dataclass(frozen=True)
class NodeReadings:
    """What a node reports at scrape time (plain numbers read off the live objects)."""

    gauges: dict[str, float]
    counters: dict[str, float]
    rocksdb: dict[str, float]


class NodeCollector(Collector):
    """A ledger node's numbers, read only when scraped."""

    def __init__(self, read: Callable[[], NodeReadings]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        try:
            readings = self._read()
        except Exception as exc:  # a node stopping (DB closed): export nothing, never fail the scrape
            log.warning("node_metrics_unreadable", error=type(exc).__name__)
            return
        for name, value in readings.gauges.items():
            yield GaugeMetricFamily(name, NODE_GAUGES[name], value=value)
        for name, value in readings.counters.items():
            yield CounterMetricFamily(name, NODE_COUNTERS[name], value=value)
        for prop, value in readings.rocksdb.items():
            yield GaugeMetricFamily(ROCKSDB_PROPERTIES[prop], f"RocksDB property {prop}.", value=value)

    def describe(self) -> Iterable[Any]:
        return []  # dynamic: nothing is checked at registration


def rocksdb_readings(property_int_value: Callable[[str], int | None]) -> dict[str, float]:
    """The RocksDB properties of ROCKSDB_PROPERTIES that the DB answers."""
    found: dict[str, float] = {}
    for prop in ROCKSDB_PROPERTIES:
        value = property_int_value(prop)
        if value is not None:
            found[prop] = float(value)
    return found


def read_moves(client: Any) -> tuple[list[Move], list[str]]:
    """Every parseable move record in etcd, oldest first, and the keys that
    are not move records (skipped: a reader must not crash on one; the
    caller reports them, as it reports everything else)."""
    moves, unreadable = [], []
    for value, meta in client.get_prefix(MOVES):
        try:
            moves.append(Move.from_json(value))
        except ValueError:
            unreadable.append(meta.key.decode(errors="replace"))
    return sorted(moves, key=lambda m: (m.started_at_unix_ms, m.move_id)), unreadable


def move_families(moves: list[Move], now_ms: int) -> Iterator[Any]:
    """Metric families of the moves: per unfinished move its progress and phase,
    and a count of all records by phase."""
    labels = ["move_id", "source", "target"]
    families = {name: GaugeMetricFamily(name, text, labels=labels) for name, text in MOVE_GAUGES.items()}
    phase = GaugeMetricFamily(
        MOVE_PHASE, "1 for the phase the unfinished move is in.", labels=[*labels, "phase"]
    )
    by_phase = GaugeMetricFamily(MOVES_BY_PHASE, "Move records in etcd by phase.", labels=["phase"])
    counts = dict.fromkeys(PHASES, 0)
    for move in moves:
        counts[move.phase] = counts.get(move.phase, 0) + 1
        if move.terminal:
            continue
        key = [move.move_id, move.source, move.target]
        values = {
            "shardbank_slot_move_accounts_total": move.accounts_total,
            "shardbank_slot_move_accounts_copied": move.accounts_copied,
            "shardbank_slot_move_records_copied": move.records_copied,
            "shardbank_slot_move_slots": len(move.slots),
            "shardbank_slot_move_progress_ratio": move.progress,
            "shardbank_slot_move_age_seconds": max(0, now_ms - move.started_at_unix_ms) / 1000,
        }
        for name, value in values.items():
            families[name].add_metric(key, float(value))
        phase.add_metric([*key, move.phase], 1.0)
    for name, count in counts.items():
        by_phase.add_metric([name], float(count))
    yield from families.values()
    yield phase
    yield by_phase


class MoveCollector(Collector):
    """Slot-move progress from etcd, read at scrape time; only while `active()`
    (the coordinator leader), so a dashboard sees each move once."""

    def __init__(
        self, connect: Callable[[], Any], active: Callable[[], bool], clock_ms: Callable[[], int]
    ) -> None:
        self._connect = connect
        self._active = active
        self._clock_ms = clock_ms
        self._client: Any = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        if not self._active():
            return
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._connect()
                moves, unreadable = read_moves(self._client)
            except Exception as exc:  # etcd down: no move metrics this scrape
                log.warning("move_metrics_unreadable", error=type(exc).__name__)
                self._client = None
                return
        if unreadable:
            log.warning("move_records_unreadable", keys=unreadable[:10], count=len(unreadable))
        yield from move_families(moves, self._clock_ms())

    def describe(self) -> Iterable[Any]:
        return []
