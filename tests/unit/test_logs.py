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
