"""Move records in etcd (the schema is `shardbank.moves.Move`).

    /shardbank/moves/<move_id>            Move JSON: written by the CLI (PENDING), then by the mover
    /shardbank/move_rollbacks/<move_id>   "1": an operator asked to undo the move

A rollback request is its own key so the CLI never races the mover's
read-modify-write of the record. The mover writes only while it leads: each
put compares the leader key's create_revision (its epoch), so a deposed
leader's late write fails instead of overwriting its successor's progress.
The flip is one transaction: compare the slot map's mod_revision and the
epoch, put the new map and the record in phase FLIPPED.
"""

from __future__ import annotations

import etcd3

from shardbank import meta
from shardbank.moves import MOVES, Move
from shardbank.slots import SlotMap

ROLLBACKS = f"{meta.PREFIX}/move_rollbacks/"


def list_moves(client: etcd3.Etcd3Client) -> list[Move]:
    """Every move, oldest first."""
    found = [Move.from_json(value) for value, _ in client.get_prefix(MOVES)]
    return sorted(found, key=lambda m: (m.started_at_unix_ms, m.move_id))


def read_move(client: etcd3.Etcd3Client, move_id: str) -> Move | None:
    value, _ = client.get(MOVES + move_id)
    return None if value is None else Move.from_json(value)


def create_move(client: etcd3.Etcd3Client, move: Move) -> bool:
    """Store a new move; False if the id is taken."""
    done, _ = client.transaction(
        compare=[client.transactions.create(move.key()) == 0],
        success=[client.transactions.put(move.key(), move.to_json())],
        failure=[],
    )
    return bool(done)


def request_rollback(client: etcd3.Etcd3Client, move_id: str) -> None:
    client.put(ROLLBACKS + move_id, "1")


def rollback_requested(client: etcd3.Etcd3Client, move_id: str) -> bool:
    value, _ = client.get(ROLLBACKS + move_id)
    return value is not None


def read_slot_map_revision(client: etcd3.Etcd3Client) -> tuple[SlotMap, int]:
    value, found = client.get(meta.SLOTMAP)
    if value is None:
        raise RuntimeError("no slot map in etcd")
    return SlotMap.from_json(value), int(found.mod_revision)


def save_as_leader(client: etcd3.Etcd3Client, move: Move, epoch: int) -> bool:
    """Put the record if we still lead in `epoch`; False if deposed."""
    done, _ = client.transaction(
        compare=[client.transactions.create(meta.LEADER) == epoch],
        success=[client.transactions.put(move.key(), move.to_json())],
        failure=[],
    )
    return bool(done)


def flip(client: etcd3.Etcd3Client, move: Move, new_map: SlotMap, map_revision: int, epoch: int) -> bool:
    """The commit point of a move: the new slot map and the FLIPPED record,
    together, if the map is still the one verified and we still lead."""
    done, _ = client.transaction(
        compare=[
            client.transactions.mod(meta.SLOTMAP) == map_revision,
            client.transactions.create(meta.LEADER) == epoch,
        ],
        success=[
            client.transactions.put(meta.SLOTMAP, new_map.to_json()),
            client.transactions.put(move.key(), move.to_json()),
        ],
        failure=[],
    )
    return bool(done)
