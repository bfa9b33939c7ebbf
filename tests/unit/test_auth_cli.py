"""Which token the CLI and the clients send."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clients import channel, cli, cli_auth


def test_token_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "admin.token").write_text("from-file\n")
    monkeypatch.delenv(channel.TOKEN_ENV, raising=False)
    args = argparse.Namespace(token=None, data_dir=str(tmp_path))
    assert cli_auth.resolve_token(args) == "from-file"
    monkeypatch.setenv(channel.TOKEN_ENV, "from-env")
    assert cli_auth.resolve_token(args) == "from-env"
    args.token = "from-flag"
    assert cli_auth.resolve_token(args) == "from-flag"
    monkeypatch.delenv(channel.TOKEN_ENV)
    assert cli_auth.resolve_token(argparse.Namespace(token=None, data_dir=str(tmp_path / "none"))) is None


def test_metadata() -> None:
    assert channel.auth_metadata("sbk_x") == (("authorization", "Bearer sbk_x"),)
    assert channel.auth_metadata(None) == ()
    assert channel.auth_metadata("") == ()


def test_parser_has_key_and_audit_commands() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["keys", "create", "--role", "customer", "--customer", "c1", "--token", "t"])
    assert (args.role, args.customer, args.token) == ("customer", "c1", "t")
    assert parser.parse_args(["keys", "revoke", "0123456789ab"]).key_id == "0123456789ab"
    assert parser.parse_args(["audit", "--limit", "5"]).limit == 5
