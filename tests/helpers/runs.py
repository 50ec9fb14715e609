"""Run folders prepared in-process and trained under ``torchrun`` (2 CPU ranks over gloo), and
the per-step losses they log: what the backend, method and guard tests compare runs with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from launcher.metrics.jsonl import read_metrics
from tests.helpers.ftl import ROOT, tiny_config, write_config

#: Steps of a sharding-matrix run (test_sharding.py; also the chunked-CE and state-bytes runs).
MATRIX_STEPS = 8
LORA = {"r": 8, "alpha": 16, "target_modules": "all-linear"}


def losses(run: Path) -> dict[int, float]:
    """``train/loss`` per step, from the run's metrics.jsonl."""
    return {m["step"]: m["train/loss"] for m in read_metrics(run / "metrics.jsonl") if "train/loss" in m}


def prepare(work: Path, name: str, cfg: dict) -> Path:
    """A run folder for ``cfg`` under ``work/runs`` (what ``ftl run`` writes before training)."""
    from launcher.run.submit import prepare_run

    folder, _ = prepare_run(str(write_config(work, cfg, f"{name}.yaml")), None, (),
                            runs_dir=str(work / "runs"))
    return folder.path.resolve()


def torchrun(run: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """One run folder's per-rank loop on 2 ranks; the caller checks the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "launcher.train.loop", str(run)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
        timeout=300)


def torchrun_many(run_dirs: list[Path], timeout: float = 900, env: dict | None = None) -> None:
    """Every run folder in turn in ONE 2-rank launch (tests/helpers/run_many.py): one process
    start for many runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "tests" / "helpers" / "run_many.py"), *map(str, run_dirs)],
        env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


def matrix_config(name: str, backend: str, lora: bool, **train) -> dict:
    """A sharding-matrix run: ``MATRIX_STEPS`` steps, global batch 16, a checkpoint half-way."""
    cfg = tiny_config(name=name, sharding={"backend": backend},
                      train={"max_steps": MATRIX_STEPS, "micro_batch_size": 4, "lr": 3e-3,
                             "schedule": "constant", "global_batch_size": 16, **train},
                      checkpoint={"dir": "runs", "every_steps": MATRIX_STEPS // 2, "keep": 2},
                      eval={"max_generate": 8, "max_new_tokens": 8, "batch_size": 4})
    cfg["data"]["eval"]["num_rows"] = 16
    if lora:
        cfg["peft"] = LORA
    return cfg
