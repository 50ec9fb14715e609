"""Build configs and run the real ``ftl`` CLI in a temp folder: what most tests share.

Kept out of conftest.py so that test modules import plain helpers (pytest may import a
conftest under another name, and a test module importing another runs its tests' imports)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FTL = [sys.executable, "-m", "launcher.cli"]


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


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` for Python 3.10 too (the project supports 3.10)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def ftl_in_process(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """``ftl ARGS`` run from ``cwd`` in this process (Click's CliRunner): for what is decided
    before any process or cluster starts (user errors), without a Python start per call. The
    caller's cwd is put back. Anything raised but a ``sys.exit`` is a bug and fails here."""
    from click.testing import CliRunner

    from launcher.cli import cli

    with working_directory(cwd):
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="ftl")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return subprocess.CompletedProcess(["ftl", *map(str, args)], result.exit_code, result.stdout,
                                       result.stderr)
