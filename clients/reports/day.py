"""A report date as a window of milliseconds in the bank's time zone.

PBoC reporting days are calendar days in Beijing time, so the default zone is
Asia/Shanghai; `--tz` changes it (zoneinfo, with the tzdata package so it
works on a machine without a system zone database).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Asia/Shanghai"


@dataclass(frozen=True)
class DayWindow:
    """[start_ms, end_ms) of one calendar day in `tz`."""

    date: dt.date
    tz: str
    start_ms: int
    end_ms: int

    def contains(self, unix_ms: int) -> bool:
        return self.start_ms <= unix_ms < self.end_ms

    def hour_of(self, unix_ms: int) -> int:
        """0..23 (a day with a DST change has 23 or 25 hours; the extra hour folds into its neighbour)."""
        local = dt.datetime.fromtimestamp(unix_ms / 1000, tz=ZoneInfo(self.tz))
        return local.hour

    def local_time(self, unix_ms: int) -> str:
        """ISO 8601 with the zone's offset, to the millisecond."""
        local = dt.datetime.fromtimestamp(unix_ms / 1000, tz=ZoneInfo(self.tz))
        return local.isoformat(timespec="milliseconds")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Asia/Shanghai)") from None


def day_window(date: dt.date, tz: str = DEFAULT_TZ) -> DayWindow:
    """Local midnight to the next local midnight, as unix ms."""
    where = zone(tz)
    start = dt.datetime.combine(date, dt.time(0), tzinfo=where)
    end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(0), tzinfo=where)
    return DayWindow(date, tz, _ms(start), _ms(end))


def today(tz: str = DEFAULT_TZ) -> dt.date:
    return dt.datetime.now(tz=zone(tz)).date()


def parse_date(text: str, tz: str = DEFAULT_TZ) -> dt.date:
    """YYYY-MM-DD, or 'today' in the zone."""
    if text == "today":
        return today(tz)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (YYYY-MM-DD or 'today')") from None


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1000
