"""A series as a line of block characters, ``▇▅▄▃▂▂▁▁``, for ``ftl list``.

Eight heights, one character per bucket of steps (the mean of the values in it), scaled from
the series' minimum to its maximum: a falling loss reads high on the left, low on the right.
No plotting library: the terminal draws it."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
WIDTH = 16


def buckets(values: Sequence[float], width: int = WIDTH) -> list[float]:
    """``values`` in at most ``width`` consecutive buckets, each the mean of its share."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) <= width:
        return finite
    out = []
    for i in range(width):
        lo, hi = i * len(finite) // width, (i + 1) * len(finite) // width
        chunk = finite[lo:hi]
        out.append(sum(chunk) / len(chunk))
    return out


def sparkline(values: Sequence[float], width: int = WIDTH) -> str:
    """Up to ``width`` block characters; a flat series is a flat line; no values: ''."""
    points = buckets(values, width)
    if not points:
        return ""
    lo, hi = min(points), max(points)
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        return BLOCKS[len(BLOCKS) // 2 - 1] * len(points)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[round((v - lo) / (hi - lo) * top)] for v in points)


def loss_values(rows: Sequence[dict]) -> list[float]:
    """The training loss of metric rows in step order: ``train/loss`` (supervised methods),
    else ``policy/loss`` (PPO/GRPO, which log no ``train/loss``)."""
    for key in ("train/loss", "policy/loss"):
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            return values
    return []
