"""Where ftl keeps its caches on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def ftl_home() -> Path:
    """Cache root for builtin models and compiled extensions (FTL_HOME, default ~/.cache/ftl)."""
    return Path(os.environ.get("FTL_HOME") or Path.home() / ".cache" / "ftl")
