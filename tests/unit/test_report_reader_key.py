"""`shardbank report reader-key`: the reports' read-only key, derived from the
cluster secret, written once with mode 0600, and what the reports use by
default when it is there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clients import cli
from shardbank import service_auth


def test_the_reader_key_is_derived_written_once_and_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = service_auth.ensure_secret_file(tmp_path / service_auth.SECRET_FILE_NAME)
    reader = tmp_path / service_auth.READER_SECRET_FILE_NAME

    assert cli.main(["report", "reader-key", "--data-dir", str(tmp_path)]) == 0
    assert "written" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(reader).st_mode) == 0o600
    assert service_auth.read_secret(reader) == service_auth.reader_secret(secret) != secret

    assert cli.main(["report", "reader-key", "--data-dir", str(tmp_path)]) == 0
    assert "already there" in capsys.readouterr().out


def test_a_reader_file_of_another_cluster_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service_auth.ensure_secret_file(tmp_path / service_auth.SECRET_FILE_NAME)
    service_auth.ensure_reader_file(tmp_path / service_auth.READER_SECRET_FILE_NAME, bytes(range(32)))
    assert cli.main(["report", "reader-key", "--data-dir", str(tmp_path)]) != 0
    assert "holds another key" in capsys.readouterr().err


def test_no_cluster_secret_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "reader-key", "--data-dir", str(tmp_path)]) == 2
    assert "no usable cluster secret" in capsys.readouterr().err
