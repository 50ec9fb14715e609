"""Atomic, rotating checkpoints in ``<run>/checkpoints/step-XXXXXXXX``.

All ranks write into ``.tmp-step-XXXXXXXX``; after a barrier rank 0 fsyncs and renames it.
A rename is atomic, so a kill at any moment leaves either the old set of checkpoints or the
new one, never a half-written ``step-*``. Leftover temp folders are removed on the next start.
The folder holds the backend's model/optimizer/scheduler files, every rank's RNG state and
``state.json`` (step, counters): everything an exact resume needs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launcher import failpoints
from launcher.dist import RankContext, barrier

PREFIX = "step-"


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished ``step-*`` folders under ``root``, oldest first (temp folders never match)."""
    if not root.exists():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if (p / "state.json").exists()]
    return sorted(done, key=checkpoint_step)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def temp_dir(root: Path, step: int) -> Path:
    """Where step ``step`` is written before it is published (never matched as complete)."""
    return root / f".tmp-{PREFIX}{step:08d}"


def begin(root: Path, step: int) -> Path:
    """An empty temp folder for step ``step`` (a leftover of an interrupted save is dropped)."""
    tmp = temp_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def remove_partial(root: Path) -> None:
    """Temp folders of saves a kill interrupted."""
    for tmp in root.glob(".tmp-*") if root.exists() else []:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(root: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state.json`` into the filled temp folder, fsync it, rename it to ``step-*``
    (atomic) and drop all but the newest ``keep``. One process calls this."""
    tmp, final = temp_dir(root, step), step_dir(root, step)
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    _fsync_tree(tmp)
    failpoints.hit("checkpoint.before_rename", step)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointManager:
    def __init__(self, run_dir: Path, keep: int, ctx: RankContext):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.ctx = ctx

    def clean_partial(self) -> None:
        if self.ctx.is_main:
            remove_partial(self.root)
        barrier()

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def save(self, step: int, write: Callable[[Path], None], state: dict[str, Any]) -> Path:
        tmp = temp_dir(self.root, step)
        if self.ctx.is_main:
            begin(self.root, step)
        barrier()
        write(tmp)
        torch.save(rng_state(), tmp / f"rng-rank{self.ctx.rank}.pt")
        barrier()
        if self.ctx.is_main:
            publish(self.root, step, state, self.keep)
        barrier()
        return step_dir(self.root, step)

    def load_state(self, folder: Path) -> dict[str, Any]:
        rng_file = folder / f"rng-rank{self.ctx.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return json.loads((folder / "state.json").read_text())


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
