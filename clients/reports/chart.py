"""The day's volume per local hour as a PNG (matplotlib, headless Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shardbank import money

FIGURE_SIZE_IN = (10.0, 4.5)
DPI = 110


def volume_chart(hours: Mapping[str, Sequence[int]], title: str, path: Path) -> Path:
    """One bar group per hour, one colour per currency, in major units.
    Floats appear only here, for drawing; every number in the report files is
    exact minor units."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE_IN)
    try:
        currencies = list(hours) or ["CNY"]
        width = 0.8 / len(currencies)
        for index, currency in enumerate(currencies):
            exponent = money.CURRENCIES[currency].exponent if currency in money.CURRENCIES else 2
            values = [minor / 10**exponent for minor in hours.get(currency, [0] * 24)]
            positions = [hour - 0.4 + width * (index + 0.5) for hour in range(24)]
            axes.bar(positions, values, width=width, label=currency)
        axes.set_xticks(range(24))
        axes.set_xlabel("local hour")
        axes.set_ylabel("volume (major units)")
        axes.set_title(title)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
    return path
