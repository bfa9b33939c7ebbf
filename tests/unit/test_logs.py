"""shardbank.logs: every JSON event carries the process identity, also from threads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import structlog

from shardbank import logs


@pytest.fixture
def configured() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_identity_on_every_event_even_from_a_thread(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("ledger_node", "info", shard_id="shard-3")
    log = structlog.get_logger("test")
    log.info("from_the_main_thread", transfer_id="t-1")
    worker = threading.Thread(target=lambda: log.warning("from_a_thread", shard_id="own"))
    worker.start()
    worker.join()
    log.debug("filtered_out")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["event"] for e in lines] == ["from_the_main_thread", "from_a_thread"]
    main, thread = lines
    assert (main["component"], main["shard_id"], main["transfer_id"]) == ("ledger_node", "shard-3", "t-1")
    assert isinstance(main["pid"], int) and main["level"] == "info"
    assert thread["component"] == "ledger_node" and thread["shard_id"] == "own"  # the event's own key wins


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_values_orjson_refuses_still_make_one_json_line(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log call must never raise on the hot path: a 65-bit int and a
    non-string key go through json instead, and an unknown object is its repr."""
    logs.configure("gateway", "info")
    log = structlog.get_logger("test")
    log.info("big", value=2**70, by_slot={7: "a"}, thing=_Opaque())
    log.info("plain", items=1, note="élan")
    big, plain = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (big["value"], big["by_slot"], big["thing"]) == (2**70, {"7": "a"}, "<opaque>")
    assert (plain["items"], plain["note"], plain["component"]) == (1, "élan", "gateway")


def test_console_format_is_text_not_json(
    configured: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDBANK_LOG_FORMAT", "console")
    logs.configure("gateway", "info")
    structlog.get_logger("test").info("hello", transfer_id="t-9")
    err = capsys.readouterr().err
    assert "hello" in err and "transfer_id=t-9" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)
