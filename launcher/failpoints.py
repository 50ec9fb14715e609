"""Named fault-injection points, armed by ``FTL_FAILPOINT=name:step[:action][,...]``.

Tests use them to fail a real process at an exact moment (mid checkpoint save, after a given
step), which a timer cannot hit reliably. ``action`` is ``kill`` (SIGKILL, the default: what
an OOM killer or a lost node does), ``raise`` (a Python exception in the training code) or
``hang`` (a call that never returns, like a stuck shutdown), ``skip`` (``hit`` returns True
and the caller leaves out what it was about to do, e.g. a weight sync that silently never lands)
or ``hold`` (wait until a file matching the glob ``FTL_FAILPOINT_HOLD`` exists, at most 120 s:
lets a test act at an exact step, e.g. send SIGTERM, however fast the steps are).
``FTL_FAILPOINT_RANK`` limits it to one rank. Unarmed, a failpoint costs one env lookup.
"""

from __future__ import annotations

import glob
import os
import signal
import time


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with the ``raise`` action."""


def _armed() -> dict[str, tuple[int, str]]:
    spec = os.environ.get("FTL_FAILPOINT", "")
    out: dict[str, tuple[int, str]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        step, _, action = rest.partition(":")
        out[name] = (int(step) if step else -1, action or "kill")
    return out


def hit(name: str, step: int, rank: int | None = None) -> bool:
    """Fail here if failpoint ``name`` is armed for ``step`` (and this rank); True when it is
    armed with ``skip``."""
    if "FTL_FAILPOINT" not in os.environ:
        return False
    armed = _armed()
    if name not in armed or armed[name][0] not in (step, -1):
        return False
    only_rank = os.environ.get("FTL_FAILPOINT_RANK")
    if only_rank is not None and rank is not None and int(only_rank) != rank:
        return False
    if armed[name][1] == "skip":
        return True
    if armed[name][1] == "raise":
        raise FailpointError(f"failpoint {name} at step {step}")
    if armed[name][1] == "hold":
        deadline = time.monotonic() + 120
        while not glob.glob(os.environ.get("FTL_FAILPOINT_HOLD", "")) and time.monotonic() < deadline:
            time.sleep(0.1)
        return False
    if armed[name][1] == "hang":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
