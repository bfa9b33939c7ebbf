"""Operator actions on slot moves, against etcd: request, roll back, watch.

The coordinator leader carries moves out (`coordinator/mover.py`); this side
only judges a request (`shardbank.moves.check_request`, the same rules the
mover applies again when it starts the move), stores it as PENDING, records
it in the audit log, and watches the record. Used by `shardbank shard ...`
(`clients/cli_shard.py`), the fault runner and the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import etcd3
import grpc

from gateway.auth import audit
from shardbank import errors, meta, move_records, moves
from shardbank.moves import Move

# How often a waiting caller re-reads the move record.
WATCH_INTERVAL_S = 0.2


def cluster_view(client: etcd3.Etcd3Client) -> moves.Cluster:
    slot_map, _ = move_records.read_slot_map_revision(client)
    return moves.Cluster(
        slot_map=slot_map,
        registered=frozenset(meta.list_shards(client)),
        active=tuple(m for m in move_records.list_moves(client) if not m.terminal),
    )


def _audit(client: etcd3.Etcd3Client, actor: str, action: str, move: Move, reason: str) -> None:
    audit.append(
        client,
        [
            audit.Entry(
                actor_key_id=actor[:64],
                actor_role="operator",
                action=action,
                target=f"{move.move_id} {move.source}->{move.target} slots {moves.format_slots(move.slots)}",
                code=0,
                reason=reason,
            )
        ],
    )


def request_move(
    client: etcd3.Etcd3Client, slots: Sequence[int], target: str, actor: str, drain: bool = False
) -> Move:
    """Judge and store a move (PENDING); the refusal is a BankError with a reason."""
    source = moves.check_request(cluster_view(client), slots, target, drain=drain)
    stamp = moves.now_ms()
    move = Move(
        move_id=moves.new_move_id(),
        slots=tuple(sorted(slots)),
        source=source,
        target=target,
        started_at_unix_ms=stamp,
        updated_at_unix_ms=stamp,
        drain=drain,
        requested_by=actor[:64],
    )
    if not move_records.create_move(client, move):
        raise errors.BankError(grpc.StatusCode.ABORTED, errors.INTERNAL, "move id collision; try again")
    _audit(client, actor, "slot_move_requested", move, moves.PENDING)
    return move


def request_plan(
    client: etcd3.Etcd3Client, plan: moves.Planned, actor: str, drain: bool = False
) -> list[Move]:
    """Store each planned move in order (the mover runs them one by one)."""
    stored: list[Move] = []
    for slots, _source, target in plan:
        move = request_move(client, slots, target, actor, drain=drain)
        stored.append(move)
    return stored


def request_rollback(client: etcd3.Etcd3Client, move_id: str, actor: str) -> Move:
    move = move_records.read_move(client, moves.check_move_id(move_id))
    if move is None:
        raise errors.not_found(moves.MOVE_NOT_FOUND, f"no move {move_id}")
    if move.phase not in moves.ROLLBACK_ALLOWED:
        raise errors.precondition(
            moves.MOVE_NOT_REVERSIBLE,
            f"move {move_id} is {move.phase}: only a move before its flip can be undone",
        )
    move_records.request_rollback(client, move_id)
    _audit(client, actor, "slot_move_rollback_requested", move, move.phase)
    return move


def wait(
    client: etcd3.Etcd3Client,
    move_id: str,
    timeout_s: float,
    on_update: Callable[[Move], None] | None = None,
) -> Move:
    """The move once terminal (or as it stands when timeout_s ran out)."""
    deadline = time.monotonic() + timeout_s
    last: Move | None = None
    while True:
        move = move_records.read_move(client, move_id)
        if move is None:
            raise errors.not_found(moves.MOVE_NOT_FOUND, f"no move {move_id}")
        if on_update is not None and move != last:
            on_update(move)
        last = move
        if move.terminal or time.monotonic() > deadline:
            return move
        time.sleep(WATCH_INTERVAL_S)
