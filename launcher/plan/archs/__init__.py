"""Bundled architectures: the public HF ``config.json`` of a few well-known models.

Why: ``ftl plan`` must size a 70B run on a laptop or a login node, where neither the weights
nor the hub are reachable. A config.json holds only hyper-parameters (no weights), and
instantiating it on the meta device gives the exact parameter count. When ``model.path`` is a
hub id listed in ``index.json`` and not a local folder, the planner reads the bundled file.
Training itself always uses the real checkpoint.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

ARCHS_DIR = Path(__file__).resolve().parent


@cache
def _index() -> dict[str, str]:
    """Hub id (lower case: the hub resolves ids case-insensitively) -> bundled folder name."""
    raw = json.loads((ARCHS_DIR / "index.json").read_text())
    return {hub_id.lower(): folder for hub_id, folder in raw.items()}


def bundled_config_dir(model_path: str) -> Path | None:
    """The bundled folder holding ``config.json`` for a hub id, or None if none is bundled."""
    folder = _index().get(model_path.strip().strip("/").lower())
    return ARCHS_DIR / folder if folder else None


def bundled_names() -> list[str]:
    """The bundled architectures' folder names (for hints)."""
    return sorted(set(_index().values()))


def bundled_hub_ids() -> list[str]:
    return sorted(json.loads((ARCHS_DIR / "index.json").read_text()))
