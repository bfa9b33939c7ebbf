"""CLI credentials and the commands about them: `keys create|revoke|list`, `audit`.

The token a command sends is, in order: `--token`, `$SHARDBANK_TOKEN`,
`<--data-dir or ./var>/admin.token` (written by `shardbank up`).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients import render
from clients.channel import TOKEN_ENV, default_token
from clients.local_cluster import ADMIN_TOKEN_FILE

DATA_DIR_DEFAULT = "./var"
AUDIT_LIMIT_DEFAULT = 20
AUDIT_LIMIT_MAX = 1000


def resolve_token(args: argparse.Namespace) -> str | None:
    given: str | None = getattr(args, "token", None)
    if given:
        return given
    from_env = default_token()
    if from_env:
        return from_env
    path = Path(getattr(args, "data_dir", "") or DATA_DIR_DEFAULT) / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def add_token_argument(common: argparse.ArgumentParser) -> None:
    common.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help=f"API key (sbk_...); default ${TOKEN_ENV}, then <data dir>/{ADMIN_TOKEN_FILE}",
    )


def _when(unix_ms: int) -> str:
    return dt.datetime.fromtimestamp(unix_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_keys_create(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        made = bank.create_api_key(args.role, args.customer or "")
    return emit(
        args,
        made,
        lambda: render.fields(
            [("key id", made.key.key_id), ("role", made.key.role), ("customer", made.key.customer_id or "-"),
             ("token", made.token), ("", "the token is shown only now: keep it safe")]
        ),
    )  # fmt: skip


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        key = bank.revoke_api_key(args.key_id)
    return emit(args, key, lambda: f"revoked {key.key_id} ({key.role})")


def cmd_keys_list(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        found = bank.list_api_keys()
    rows = [
        [
            k.key_id,
            k.role,
            k.customer_id or "-",
            _when(k.created_at_unix_ms),
            "revoked" if k.revoked else "active",
        ]
        for k in found.keys
    ]
    return emit(
        args, found, lambda: render.table(["KEY ID", "ROLE", "CUSTOMER", "CREATED (UTC)", "STATE"], rows)
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from clients.cli import client, emit

    with client(args) as bank:
        page = bank.list_audit(page_size=args.limit, action=args.action or "", target=args.target or "")
    rows = [
        [str(r.seq), _when(r.at_unix_ms), f"{r.actor_role}:{r.actor_key_id}", r.action, r.target or "-",
         "OK" if r.code == 0 else f"{r.code} {r.reason}"]
        for r in page.records
    ]  # fmt: skip
    return emit(
        args, page, lambda: render.table(["SEQ", "AT (UTC)", "ACTOR", "ACTION", "TARGET", "OUTCOME"], rows)
    )


def count_at_most(maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number 1..maximum (page sizes, limits)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be 1..{maximum}")
        return value

    return parse


_limit = count_at_most(AUDIT_LIMIT_MAX)


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", help="API keys: create, revoke, list (admin)")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="a new API key; prints its token once")
    create.add_argument("--role", required=True)
    create.add_argument("--customer", default="", help="customer id (role customer only)")
    create.set_defaults(handler=cmd_keys_create)
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key at once")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(handler=cmd_keys_revoke)
    listing = actions.add_parser("list", parents=[common], help="every key (no secrets)")
    listing.set_defaults(handler=cmd_keys_list)
    audit = commands.add_parser(
        "audit", parents=[common], help="the audit log, newest first (admin, auditor)"
    )
    audit.add_argument("--limit", type=_limit, default=AUDIT_LIMIT_DEFAULT)
    audit.add_argument("--action", default="", help="e.g. account.freeze, key.create")
    audit.add_argument("--target", default="", help="account id or key id")
    audit.set_defaults(handler=cmd_audit)
