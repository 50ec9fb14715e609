"""Shared fixtures: real ftl processes in temp folders, offline, with private caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FTL = [sys.executable, "-m", "launcher.cli"]

os.environ.setdefault("FTL_HOME", str(ROOT / ".cache" / "ftl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.pop("WANDB_API_KEY", None)


def tiny_config(name: str = "t", **sections) -> dict:
    """A small, fast SFT config on the builtin reverse task (override any section)."""
    cfg = {
        "name": name,
        "method": "sft",
        "model": {"path": "builtin:tiny-llama"},
        "data": {
            "train": {"path": "builtin:reverse", "num_rows": 512},
            "eval": {"path": "builtin:reverse", "num_rows": 32},
            "max_length": 64,
        },
        "train": {"max_steps": 6, "micro_batch_size": 4, "lr": 3e-3, "schedule": "constant"},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"dir": "runs"},
        # Reports (matplotlib, a few seconds a run) are drawn by the runs that check them.
        "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}, "report": False},
        "eval": {"max_generate": 16, "max_new_tokens": 12},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(folder: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_ftl(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(FTL + [str(a) for a in args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "runs").iterdir() if p.is_dir()) if (cwd / "runs").exists() else []


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
