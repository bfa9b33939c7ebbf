"""What the processes write to their logs, read back from the files.

Operators grep these lines and ship them to a log store, so every line a
shardbank process writes is one JSON object with the process identity; a
transfer's id is findable; and neither a customer's full ID number nor a
credential ever appears (the policy in shardbank/logs.py and the handlers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from shardbank.v1 import types_pb2
from tests.factories import mobile, resident_id
from tests.integration.helpers import OPEN_ATTEMPTS_MAX, slot_map

pytestmark = pytest.mark.integration

OUR_LOGS = ("shard-", "coord-", "gw-")
# The supervisor marks each (re)start with one plain line of its own.
START_MARK = "--- "


def _our_log_files(cluster: LocalCluster) -> list[Path]:
    files = [p for p in sorted(cluster.log_dir.glob("*.log")) if p.name.startswith(OUR_LOGS)]
    assert any(p.name.startswith("gw-") for p in files), files
    assert sum(p.name.startswith("coord-") for p in files) == cluster.coordinators, files
    assert sum(p.name.startswith("shard-") for p in files) == cluster.shards, files
    return files


def _events(path: Path) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or (line.startswith(START_MARK) and " start: " in line):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not one JSON event: {line[:200]!r}") from None
        assert isinstance(event, dict), f"{path.name}:{number}: {line[:200]!r}"
        events.append(event)
    return events


def _open_on(client: BankClient, cluster: LocalCluster, shard_id: str) -> tuple[types_pb2.Account, str]:
    """An account on `shard_id` and the full ID number it was opened with."""
    slots = slot_map(cluster)
    for _ in range(OPEN_ATTEMPTS_MAX):
        id_number = resident_id()
        account = client.open_account(
            name="Han Meimei", id_number=id_number, phone=mobile(), currency="CNY", account_type="personal"
        )
        if slots.owner(account.id) == shard_id:
            return account, id_number
    raise AssertionError(f"no account landed on {shard_id}")


def test_every_line_is_one_json_event_with_ids_and_without_secrets(
    cluster: LocalCluster, client: BankClient
) -> None:
    opened = [_open_on(client, cluster, shard) for shard in ("shard-1", "shard-1", "shard-2")]
    (a, b, c), id_numbers = [x for x, _ in opened], [n for _, n in opened]
    client.deposit(a.id, 10_000, "CNY")
    single = client.transfer(a.id, b.id, 1_000, "CNY")
    cross = client.transfer(a.id, c.id, 2_000, "CNY")
    with pytest.raises(ShardbankError) as refused:
        client.transfer(b.id, a.id, 5_000, "CNY")  # b holds 1,000
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "INSUFFICIENT_FUNDS"

    secrets = [cluster.admin_token, cluster.cluster_secret.decode(errors="replace"), *id_numbers]
    seen_ids: set[str] = set()
    for path in _our_log_files(cluster):
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, f"{path.name} carries a secret or a full ID number"
        for event in _events(path):
            assert {"event", "level", "timestamp", "component", "pid"} <= event.keys(), (path.name, event)
        seen_ids.update(tid for tid in (single.id, cross.id) if tid in text)
    assert seen_ids == {single.id, cross.id}, "a committed transfer's id is in no log"
