"""`shardbank`: the command line.

    shardbank up                                   a local cluster in the foreground
    shardbank account open --name 张三 --id-number 11010519491231002X --phone +8613812345678
    shardbank deposit 6222020000000008 100.50
    shardbank transfer FROM TO 20 --memo rent

Exit codes: 0 done, 1 refused or failed (one line `error: CODE REASON: message`
on stderr), 2 usage error (bad flags, an amount with too many decimals, a
mistyped account id). Never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from clients import cli_auth, cli_cluster, cli_report, cli_risk, cli_shard, render
from clients.channel import default_target
from clients.client import BankClient
from clients.messages import ACCOUNT_TYPES, ID_TYPES
from shardbank import errors as bank_errors
from shardbank import identity, ids, limits, money

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input caught before any call: exit 2."""

    def __init__(self, error: bank_errors.BankError) -> None:
        super().__init__(str(error))
        self.error = error


def _checked(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except bank_errors.BankError as exc:
        raise UsageError(exc) from None


def account_id(text: str) -> int:
    return int(_checked(lambda: ids.parse_account_id(text)))


def amount(text: str, currency: str) -> int:
    return int(_checked(lambda: money.parse_amount(text, currency)))


def to_json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)


def emit(args: argparse.Namespace, message: Message, human: Callable[[], str]) -> int:
    print(to_json(message) if args.json else human())
    return EXIT_OK


def client(args: argparse.Namespace) -> BankClient:
    try:
        actor = f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        actor = "cli"
    return BankClient(args.gateway, deadline_s=args.deadline, actor=actor, token=cli_auth.resolve_token(args))


# Commands.


def cmd_account_open(args: argparse.Namespace) -> int:
    id_number = args.id_number.strip().upper()
    phone = identity.normalize_phone(args.phone)
    _checked(lambda: identity.check_name(args.name))
    _checked(lambda: identity.check_phone(phone))
    if args.id_type == "cn_resident_id":
        _checked(lambda: identity.check_cn_resident_id(id_number))
    else:
        _checked(lambda: identity.check_passport(id_number))
    _checked(lambda: money.currency(args.currency))
    country = args.country.strip().upper()
    _checked(lambda: identity.check_country(country))
    overdraft = amount(args.overdraft_limit, args.currency) if args.overdraft_limit else 0
    with client(args) as bank:
        found = bank.open_account(
            args.name,
            id_number,
            phone,
            args.currency,
            args.type,
            args.id_type,
            overdraft_limit=overdraft,
            country=country,
        )
    return emit(args, found, lambda: render.account(found))


def cmd_account_show(args: argparse.Namespace) -> int:
    with client(args) as bank:
        found = bank.get_account(account_id(args.account))
    return emit(args, found, lambda: render.account(found))


def cmd_account_status(args: argparse.Namespace) -> int:
    target = account_id(args.account)
    with client(args) as bank:
        change = {"freeze": bank.freeze, "unfreeze": bank.unfreeze, "close": bank.close}[args.action]
        found = change(target, args.reason)
    return emit(args, found, lambda: render.account(found))


def cmd_account_update(args: argparse.Namespace) -> int:
    target = account_id(args.account)
    if args.phone is None and args.name is None:
        raise UsageError(bank_errors.invalid(bank_errors.INVALID_ARGUMENT, "give --phone and/or --name"))
    phone = identity.normalize_phone(args.phone) if args.phone is not None else None
    if phone is not None:
        _checked(lambda: identity.check_phone(phone))
    if args.name is not None:
        _checked(lambda: identity.check_name(args.name))
    with client(args) as bank:
        found = bank.update_contact(target, phone=phone, name=args.name)
    return emit(args, found, lambda: render.account(found))


def _transfer_id(args: argparse.Namespace) -> str:
    """Chosen here (once) so an error line can name it: resend with --id to retry safely."""
    if args.id:
        return str(_checked(lambda: ids.normalize_transfer_id(args.id.strip())))
    return ids.new_transfer_id()


def cmd_money(args: argparse.Namespace) -> int:
    _checked(lambda: money.currency(args.currency))
    minor = amount(args.amount, args.currency)
    first = account_id(args.account)
    transfer_id = _transfer_id(args)
    with client(args) as bank:
        try:
            if args.command == "deposit":
                found = bank.deposit(first, minor, args.currency, transfer_id, args.memo)
            elif args.command == "withdraw":
                found = bank.withdraw(first, minor, args.currency, transfer_id, args.memo)
            else:
                kind = "payment" if args.payment else "transfer"
                to = account_id(args.to_account)
                found = bank.transfer(first, to, minor, args.currency, transfer_id, args.memo, kind)
        except bank_errors.BankError as exc:
            exc.message = f"{exc.message} (transfer id {transfer_id})"
            raise
    return emit(args, found, lambda: render.transfer(found))


def cmd_transfer_status(args: argparse.Namespace) -> int:
    with client(args) as bank:
        found = bank.get_transfer(args.transfer_id)
    return emit(args, found, lambda: render.transfer(found))


def cmd_history(args: argparse.Namespace) -> int:
    target = account_id(args.account)
    with client(args) as bank:
        page = bank.history(target, page_size=args.limit, page_token=args.page_token)
    return emit(args, page, lambda: render.history(page))


# Parser.


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= limits.HISTORY_PAGE_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"must be 1..{limits.HISTORY_PAGE_SIZE_MAX}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be 0..3600 seconds")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--gateway",
        default=default_target(),
        metavar="HOST:PORT",
        help="gateway address ($SHARDBANK_GATEWAY)",
    )
    common.add_argument("--json", action="store_true", help="print the result as proto3 JSON")
    cli_auth.add_token_argument(common)
    common.add_argument(
        "--deadline", type=_positive_seconds, default=limits.CALL_DEADLINE_S, metavar="S", help="per call"
    )
    return common


def _money_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("amount", metavar="AMOUNT", help="decimal in major units, e.g. 100.50")
    parser.add_argument("--currency", default="CNY")
    parser.add_argument("--id", metavar="TRANSFER_ID", help="UUID; resend the same id to retry safely")
    parser.add_argument("--memo", default="")
    parser.set_defaults(handler=cmd_money)


def _add_account(commands: Any, common: argparse.ArgumentParser) -> None:
    account = commands.add_parser("account", help="open, show, freeze, unfreeze, close, update")
    actions = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    opening = actions.add_parser("open", parents=[common], help="open an account")
    opening.add_argument("--name", required=True)
    opening.add_argument("--id-number", required=True)
    opening.add_argument("--phone", required=True, help="E.164, e.g. +8613812345678")
    opening.add_argument("--currency", default="CNY")
    opening.add_argument("--type", choices=list(ACCOUNT_TYPES), default="personal")
    opening.add_argument("--id-type", choices=list(ID_TYPES), default="cn_resident_id")
    opening.add_argument("--overdraft-limit", default="", metavar="AMOUNT")
    opening.add_argument(
        "--country", default="", metavar="CC", help="holder's ISO 3166-1 alpha-2 country (default CN)"
    )
    opening.set_defaults(handler=cmd_account_open)
    show = actions.add_parser("show", parents=[common], help="an account and its balances")
    show.add_argument("account", metavar="ID")
    show.set_defaults(handler=cmd_account_show)
    for action, required in (("freeze", True), ("unfreeze", True), ("close", False)):
        change = actions.add_parser(action, parents=[common], help=f"{action} an account")
        change.add_argument("account", metavar="ID")
        if required:
            change.add_argument("--reason", required=True)
        else:
            change.add_argument("--reason", default="closed at the holder's request")
        change.set_defaults(handler=cmd_account_status)
    update = actions.add_parser("update", parents=[common], help="change phone and/or name")
    update.add_argument("account", metavar="ID")
    update.add_argument("--phone")
    update.add_argument("--name")
    update.set_defaults(handler=cmd_account_update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardbank", description="shardbank client and local cluster")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()
    cli_cluster.add_commands(commands, common)
    cli_auth.add_commands(commands, common)
    cli_report.add_commands(commands, common)
    cli_risk.add_commands(commands, common)
    cli_shard.add_commands(commands, common)
    _add_account(commands, common)
    for name, verb in (("deposit", "cash in"), ("withdraw", "cash out")):
        sub = commands.add_parser(name, parents=[common], help=verb)
        sub.add_argument("account", metavar="ID")
        _money_args(sub)
    move = commands.add_parser("transfer", parents=[common], help="move money between two accounts")
    move.add_argument("account", metavar="FROM")
    move.add_argument("to_account", metavar="TO")
    _money_args(move)
    move.add_argument("--payment", action="store_true", help="pay a merchant (business) account")
    status = commands.add_parser("transfer-status", parents=[common], help="a transfer's outcome")
    status.add_argument("transfer_id", metavar="TRANSFER_ID")
    status.set_defaults(handler=cmd_transfer_status)
    history = commands.add_parser("history", parents=[common], help="an account's entries, newest first")
    history.add_argument("account", metavar="ID")
    history.add_argument("--limit", type=_page_size, default=limits.HISTORY_PAGE_SIZE_DEFAULT)
    history.add_argument("--page-token", default="")
    history.set_defaults(handler=cmd_history)
    return parser


def error_line(error: bank_errors.BankError) -> str:
    return f"error: {error.code.name} {error.reason}: {error.message}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(error_line(exc.error), file=sys.stderr)
        return EXIT_USAGE
    except bank_errors.BankError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: CANCELLED INTERRUPTED: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback for a user
        print(f"error: INTERNAL {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
