"""Shared fixtures: real ftl processes in temp folders, offline, with private caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.ftl import ROOT

os.environ.setdefault("FTL_HOME", str(ROOT / ".cache" / "ftl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier is tests/unit (config, planning, rendering, math: no Ray, Slurm, torchrun or
    training run). Everything else starts real processes and is marked ``slow``, so
    ``./scripts/test.sh -m "not slow"`` runs the fast tier alone."""
    unit = ROOT / "tests" / "unit"
    for item in items:
        if unit not in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
