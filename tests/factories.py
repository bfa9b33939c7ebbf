"""Valid holder details for tests: real check digits, real birth dates."""

from __future__ import annotations

import itertools

from shardbank.identity import cn_check_digit

_counter = itertools.count(1)


def resident_id(n: int | None = None) -> str:
    """A valid 18-character mainland resident ID (Beijing, born 1990-01-01)."""
    serial = next(_counter) if n is None else n
    first17 = f"110105199001{(serial % 28) + 1:02d}{serial % 1000:03d}"
    return first17 + cn_check_digit(first17)


def mobile(n: int | None = None) -> str:
    serial = next(_counter) if n is None else n
    return f"+86138{serial % 10**8:08d}"
