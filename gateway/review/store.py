"""The gateway's async handle on the alert store (`shardbank.alerts`, etcd):
each call runs in a worker thread on one cached client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import etcd3
import grpc

from shardbank import alerts, errors, meta

T = TypeVar("T")


class AlertStore:
    def __init__(self, etcd_endpoint: str) -> None:
        self._endpoint = etcd_endpoint
        self._client: etcd3.Etcd3Client | None = None

    def _etcd(self) -> etcd3.Etcd3Client:
        if self._client is None:
            self._client = meta.connect(self._endpoint)
        return self._client

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        """`work(client, *args)` in a thread; etcd down -> UNAVAILABLE ALERTS_UNAVAILABLE
        (every alert change is a compare-and-swap, so a retry reads what landed)."""
        try:
            return await asyncio.to_thread(work, self._etcd(), *args)
        except errors.BankError:
            raise
        except Exception as exc:  # etcd unreachable or failing; a write may or may not have landed
            self._client = None
            raise errors.BankError(
                grpc.StatusCode.UNAVAILABLE,
                ALERTS_UNAVAILABLE,
                f"alert store unavailable ({type(exc).__name__})",
            ) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


ALERTS_UNAVAILABLE = "ALERTS_UNAVAILABLE"
__all__ = ["ALERTS_UNAVAILABLE", "AlertStore", "alerts"]
