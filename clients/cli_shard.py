"""CLI commands that grow and reshape the cluster (docs/moves.md):

    shardbank shard add [--address HOST:PORT]
    shardbank shard move --slots 100-199 --to shard-3 [--no-wait]
    shardbank shard move --rollback MOVE_ID
    shardbank shard moves
    shardbank shard drain shard-2 [--no-wait]
    shardbank rebalance [--no-wait]

They talk to etcd (the move records, the slot map, the audit log), found by
`--etcd`, `$SHARDBANK_ETCD`, or the cluster.json of `--data-dir`; the
coordinator leader carries the moves out. Waiting shows a progress bar fed
by the move record; Ctrl-C stops waiting, never the move.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import etcd3
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from clients import added_shards, render, shard_ops
from clients.cluster_state import read_state
from shardbank import errors, meta, move_records, moves
from shardbank.moves import Move

ETCD_ENV = "SHARDBANK_ETCD"
ETCD_DEFAULT = "127.0.0.1:2379"
# How long `--wait` (the default) follows one move before giving up waiting.
WAIT_S_DEFAULT = 600.0


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    shard = commands.add_parser("shard", parents=[common], help="add shards, move slots, drain a shard")
    verbs = shard.add_subparsers(dest="shard_command", required=True, metavar="VERB")
    add = verbs.add_parser("add", parents=[common], help="start and register a new ledger node")
    add.add_argument("--address", default="", help="a node started elsewhere: check it is registered")
    _etcd_arguments(add)
    add.set_defaults(handler=cmd_add)
    move = verbs.add_parser("move", parents=[common], help="move slots to another shard, online")
    move.add_argument("--slots", type=_checked(moves.parse_slots), default=None, help="e.g. 100-199,300")
    move.add_argument(
        "--to", type=_checked(moves.check_shard_id), default=None, metavar="SHARD", help="e.g. shard-3"
    )
    move.add_argument(
        "--rollback", type=_checked(moves.check_move_id), default=None, metavar="MOVE_ID", help="undo a move"
    )
    _wait_arguments(move)
    move.set_defaults(handler=cmd_move)
    listing = verbs.add_parser("moves", parents=[common], help="moves and their progress")
    _etcd_arguments(listing)
    listing.set_defaults(handler=cmd_moves)
    drain = verbs.add_parser("drain", parents=[common], help="move every slot off a shard")
    drain.add_argument("shard_id", type=_checked(moves.check_shard_id), metavar="SHARD")
    _wait_arguments(drain)
    drain.set_defaults(handler=cmd_drain)
    rebalance = commands.add_parser("rebalance", parents=[common], help="even out slots across the shards")
    _wait_arguments(rebalance)
    rebalance.set_defaults(handler=cmd_rebalance)


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a checker that raises BankError: a bad value is
    a usage error (exit 2) with the checker's reason."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except errors.BankError as exc:
            raise argparse.ArgumentTypeError(f"{exc.reason}: {exc.message}") from None

    return convert


def _etcd_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etcd", default="", help=f"etcd host:port (default ${ETCD_ENV} or the data dir's)")
    parser.add_argument("--data-dir", default="./var", help="where `shardbank up` keeps cluster.json")


def _wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true", help="request and return; watch with `shard moves`")
    parser.add_argument("--wait-s", type=float, default=WAIT_S_DEFAULT, help=argparse.SUPPRESS)
    _etcd_arguments(parser)


def etcd_endpoint(args: argparse.Namespace) -> str:
    given = getattr(args, "etcd", "") or os.environ.get(ETCD_ENV, "")
    if given:
        return str(given)
    state = read_state(Path(getattr(args, "data_dir", "./var")))
    return state.etcd if state is not None else ETCD_DEFAULT


@contextmanager
def _etcd(args: argparse.Namespace) -> Iterator[etcd3.Etcd3Client]:
    client = meta.connect(etcd_endpoint(args))
    try:
        yield client
    finally:
        client.close()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _usage(reason: str, message: str) -> errors.BankError:
    return errors.invalid(reason, message)


# ---------------------------------------------------------------- commands


def cmd_add(args: argparse.Namespace) -> int:
    with _etcd(args) as client:
        if args.address:
            registered = {v["address"]: k for k, v in meta.list_shards(client).items()}
            name = registered.get(args.address)
            if name is None:
                raise errors.not_found(
                    moves.UNKNOWN_SHARD,
                    f"no node registered at {args.address}: start it with --etcd {etcd_endpoint(args)}",
                )
            added = added_shards.AddedShard(name, args.address, ())
        else:
            state = read_state(Path(args.data_dir))
            if state is None:
                raise _usage(errors.INVALID_ARGUMENT, f"no cluster in {args.data_dir}: `shardbank up` first")
            added = added_shards.start(Path(state.data_dir), etcd_endpoint(args))
    if args.json:
        print(json.dumps({"shard_id": added.name, "address": added.address, "pid": added.pid}))
    else:
        print(f"{added.name} is up at {added.address}; it owns no slots: `shardbank rebalance` moves some")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    with _etcd(args) as client:
        if args.rollback:
            move = shard_ops.request_rollback(client, args.rollback, _actor())
            return _follow(args, client, [move])
        if not args.slots or not args.to:
            raise _usage(errors.INVALID_ARGUMENT, "give --slots and --to (or --rollback MOVE_ID)")
        move = shard_ops.request_move(client, args.slots, args.to, _actor())
        return _follow(args, client, [move])


def cmd_drain(args: argparse.Namespace) -> int:
    shard_id = args.shard_id
    with _etcd(args) as client:
        view = shard_ops.cluster_view(client)
        if shard_id not in view.slot_map.owners and shard_id not in view.registered:
            raise errors.not_found(moves.UNKNOWN_SHARD, f"no shard {shard_id}")
        plan = moves.plan_drain(view.slot_map, shard_id, sorted(view.registered - {shard_id}))
        requested = shard_ops.request_plan(client, plan, _actor(), drain=True)
        return _follow(args, client, requested)


def cmd_rebalance(args: argparse.Namespace) -> int:
    with _etcd(args) as client:
        view = shard_ops.cluster_view(client)
        plan = moves.plan_rebalance(view.slot_map, sorted(view.registered))
        if not plan:
            print("balanced: nothing to move")
            return 0
        requested = shard_ops.request_plan(client, plan, _actor())
        return _follow(args, client, requested)


def cmd_moves(args: argparse.Namespace) -> int:
    with _etcd(args) as client:
        found = move_records.list_moves(client)
    if args.json:
        print(json.dumps([json.loads(m.to_json()) for m in found], indent=2))
        return 0
    header = ("move", "phase", "from", "to", "slots", "accounts", "records", "fenced ms", "note")
    rows = [
        *(
            (
                m.move_id,
                m.phase,
                m.source,
                m.target,
                moves.format_slots(m.slots)[:30],
                f"{m.accounts_copied}/{m.accounts_total}",
                str(m.records_copied),
                str(m.fenced_ms),
                (m.error or m.waiting)[:60],
            )
            for m in found
        ),
    ]
    print(render.table(header, rows) if found else "no moves")
    return 0


# ---------------------------------------------------------------- waiting


def _follow(args: argparse.Namespace, client: etcd3.Etcd3Client, requested: list[Move]) -> int:
    """Print what was requested; unless --no-wait, follow each to its end."""
    if args.no_wait:
        for move in requested:
            _print_move(args, move)
        return 0
    failed = False
    for move in requested:
        done = _watch(client, move, args.wait_s, show=not args.json and sys.stdout.isatty())
        _print_move(args, done)
        undone = done.phase == moves.ROLLED_BACK and done.rollback_requested
        failed |= done.phase != moves.COMPLETED and not undone
    return 1 if failed else 0


def _watch(client: etcd3.Etcd3Client, move: Move, wait_s: float, show: bool) -> Move:
    if not show:
        return shard_ops.wait(client, move.move_id, wait_s)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} accounts"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"{move.move_id} {move.source}->{move.target}", total=None)

        def update(current: Move) -> None:
            total = max(current.accounts_total, current.accounts_copied, 1)
            progress.update(
                task,
                total=total,
                completed=current.accounts_copied,
                description=f"{current.move_id} {current.source}->{current.target} {current.phase}",
            )

        return shard_ops.wait(client, move.move_id, wait_s, on_update=update)


def _print_move(args: argparse.Namespace, move: Move) -> None:
    if args.json:
        print(move.to_json())
        return
    detail = f" ({move.error})" if move.error else ""
    print(
        f"{move.move_id} {move.phase}: slots {moves.format_slots(move.slots)} "
        f"{move.source} -> {move.target}{detail}"
    )
