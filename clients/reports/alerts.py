"""Alerts of the risk engine, read from etcd for a report window.

Shared schema (issue #7): key `/shardbank/risk/alerts/<alert_id>`,
`alert_id = f"{created_at_unix_ms:013d}-{uuid4().hex[:12]}"`, value JSON with
`created_at_unix_ms`, `transfer_id`, `transfer_kind`, `customer_id`,
`account_id`, `amount`, `currency`, `rules`, `aml_typologies`, `decision`,
`score`, `severity`, `status`, ... Because ids start with the zero-padded
creation time, one key range selects a day; it is read in pages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import etcd3

from clients.reports.day import DayWindow
from shardbank import alerts

ALERTS_PREFIX = alerts.ALERTS
# Alerts per etcd range read; alerts are rare next to transfers, but a day's
# read must not ask etcd for an unbounded reply.
PAGE_KEYS_MAX = 500


def alert_key(unix_ms: int, suffix: str = "") -> str:
    return f"{ALERTS_PREFIX}{unix_ms:013d}{suffix}"


def read_alerts(client: etcd3.Etcd3Client, window: DayWindow) -> Iterator[dict[str, Any]]:
    """Alerts created in the window, oldest first; values that are not JSON
    objects are skipped (they are not alerts of this schema)."""
    start = alert_key(window.start_ms).encode()
    end = alert_key(window.end_ms).encode()
    while True:
        page = list(client.get_range(start, end, limit=PAGE_KEYS_MAX))
        for value, _metadata in page:
            try:
                alert = json.loads(value)
            except ValueError:
                continue
            if isinstance(alert, dict):
                yield alert
        if len(page) < PAGE_KEYS_MAX:
            return
        start = page[-1][1].key + b"\x00"
