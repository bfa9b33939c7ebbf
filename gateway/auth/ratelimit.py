"""Token buckets, one per API key, in the gateway process.

Each key's bucket holds up to `burst` tokens and refills at
`requests_per_second`; a call takes one token or is refused with the seconds
until one is back (RESOURCE_EXHAUSTED `RATE_LIMITED`, trailing metadata
`retry-after`). Buckets of keys not seen for IDLE_S are dropped, and there
are at most BUCKETS_MAX of them (only authenticated keys get one, so the
count is bounded by the keys that exist anyway).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.permissions import RateLimit

# Buckets kept; the least recently used goes first.
BUCKETS_MAX = 100_000


@dataclass
class Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def take(self, key_id: str, limit: RateLimit, cost: int = 1) -> float:
        """0.0 when the call may go ahead, else the seconds until it may.

        `cost`: the requests this call stands for (the HTTP edge's shared calls
        carry several), at least 1 and at most the burst, so a call can always
        pass once the bucket is full."""
        need = float(min(max(1, cost), limit.burst))
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = Bucket(float(limit.burst), now)
            self._buckets[key_id] = bucket
            while len(self._buckets) > BUCKETS_MAX:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key_id)
        elapsed_s = max(0.0, now - bucket.updated_s)
        bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed_s * limit.requests_per_second)
        bucket.updated_s = now
        if bucket.tokens >= need:
            bucket.tokens -= need
            return 0.0
        return (need - bucket.tokens) / limit.requests_per_second


def retry_after_s(wait_s: float) -> int:
    """Whole seconds for Retry-After: never 0 (that reads as 'now')."""
    return max(1, math.ceil(wait_s))
