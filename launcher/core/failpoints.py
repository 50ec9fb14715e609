"""Named fault-injection points, armed by ``FTL_FAILPOINT=name:step[:action][,...]``.

Tests use them to fail a real process at an exact moment (mid checkpoint save, after a given
step), which a timer cannot hit reliably. ``action`` is ``kill`` (SIGKILL, the default: what
an OOM killer or a lost node does), ``raise`` (a Python exception in the training code) or
``hang`` (a call that never returns, like a stuck shutdown), ``skip`` (``hit`` returns True
and the caller leaves out what it was about to do, e.g. a weight sync that silently never lands)
or ``hold`` (wait until a file matching the glob ``FTL_FAILPOINT_HOLD`` exists, ``{step}`` in
it replaced by the step, at most 120 s: lets a test act at an exact step, e.g. send SIGTERM or
remove a node, however fast the steps are). A name may be armed for several steps.
``FTL_FAILPOINT_RANK`` limits it to one rank. Unarmed, a failpoint costs one env lookup.
"""

from __future__ import annotations

import glob
import os
import signal
import time

from launcher.core import env


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with the ``raise`` action."""


def _armed(name: str, step: int) -> str | None:
    """The action armed for ``name`` at ``step`` (an entry without a step: every step)."""
    for item in filter(None, (s.strip() for s in (env.failpoint() or "").split(","))):
        armed_name, _, rest = item.partition(":")
        armed_step, _, action = rest.partition(":")
        if armed_name == name and (int(armed_step) if armed_step else -1) in (step, -1):
            return action or "kill"
    return None


def hit(name: str, step: int, rank: int | None = None) -> bool:
    """Fail here if failpoint ``name`` is armed for ``step`` (and this rank); True when it is
    armed with ``skip``."""
    if env.failpoint() is None:
        return False
    action = _armed(name, step)
    if action is None:
        return False
    if rank is not None and env.failpoint_rank() not in (None, rank):
        return False
    if action == "skip":
        return True
    if action == "raise":
        raise FailpointError(f"failpoint {name} at step {step}")
    if action == "hold":
        pattern = env.failpoint_hold().replace("{step}", str(step))
        deadline = time.monotonic() + 120
        while not glob.glob(pattern) and time.monotonic() < deadline:
            time.sleep(0.1)
        return False
    if action == "hang":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
