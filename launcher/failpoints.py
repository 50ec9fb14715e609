"""Named fault-injection points, armed by ``FTL_FAILPOINT=name:step[,name:step]``.

Tests use them to kill a real process at an exact moment (mid checkpoint save, mid step),
which a timer cannot hit reliably. Unarmed, a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


def _armed() -> dict[str, int]:
    spec = os.environ.get("FTL_FAILPOINT", "")
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, step = item.partition(":")
        out[name] = int(step) if step else -1
    return out


def hit(name: str, step: int, rank: int | None = None) -> None:
    """SIGKILL this process if failpoint ``name`` is armed for ``step`` (and ``rank``)."""
    armed = _armed()
    if name not in armed or armed[name] not in (step, -1):
        return
    only_rank = os.environ.get("FTL_FAILPOINT_RANK")
    if only_rank is not None and rank is not None and int(only_rank) != rank:
        return
    os.kill(os.getpid(), signal.SIGKILL)
