"""Where ftl keeps its caches on this machine."""

from __future__ import annotations

from pathlib import Path

from launcher.core import env


def ftl_home() -> Path:
    """Cache root for builtin models and compiled extensions (FTL_HOME, default ~/.cache/ftl)."""
    return env.home()
