"""Atomic, rotating checkpoints in ``<run>/checkpoints/step-XXXXXXXX``.

All ranks write into ``.tmp-step-XXXXXXXX``; after a barrier rank 0 fsyncs and renames it.
A rename is atomic, so a kill at any moment leaves either the old set of checkpoints or the
new one, never a half-written ``step-*``. Leftover temp folders are removed on the next start.
The folder holds the backend's model/optimizer/scheduler files, every rank's RNG state,
``state.json`` (step, counters): everything an exact resume needs, and ``writer.json``: what
wrote it (sharding backend and ZeRO stage, model path, adapters). Those decide the files'
layout, so a resume that changes one could not load them and ``ftl export`` could not read
them: ``refuse_changed_writer`` stops such a resume before the run folder is touched.
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

from launcher.core import failpoints
from launcher.core.errors import Problem, UserError
from launcher.train.dist import RankContext, barrier

PREFIX = "step-"
WRITER_FILE = "writer.json"
#: writer fields, as the user names them in messages
WRITER_FIELDS = {"backend": "sharding backend", "zero_stage": "ZeRO stage", "model": "model.path",
                 "adapters": "adapters (peft)"}


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


def publish(root: Path, step: int, state: dict[str, Any], keep: int,
            writer: dict[str, Any] | None = None) -> Path:
    """Write ``state.json`` (and ``writer.json``) into the filled temp folder, fsync it, rename
    it to ``step-*`` (atomic) and drop all but the newest ``keep``. One process calls this."""
    tmp, final = temp_dir(root, step), step_dir(root, step)
    if writer is not None:
        (tmp / WRITER_FILE).write_text(json.dumps(writer, indent=1))
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
    def __init__(self, run_dir: Path, keep: int, ctx: RankContext, *,
                 writer: dict[str, Any] | None = None):
        """``writer``: what this run writes checkpoints with (``checkpoint_writer(cfg)``),
        recorded in each one. Without it, the record ``prepare_run`` left in launch.json is
        used (none in folders prepared by older versions: such checkpoints get no record)."""
        from launcher.run.rundir import RunFolder

        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.ctx = ctx
        self.writer = writer if writer is not None else RunFolder(Path(run_dir)).launch_writer()

    def check_writer(self, folder: Path) -> None:
        """Raise UserError when checkpoint ``folder`` was written by another backend, model or
        adapter set than this run's (before ``backend.load`` fails on it with a shape error)."""
        if self.writer is not None:
            recorded = recorded_writer(folder)
            changes = writer_changes(recorded, self.writer) if recorded else []
            if changes:
                raise UserError(_changed_writer_problem(folder, changes))

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
            publish(self.root, step, state, self.keep, self.writer)
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


# -- what wrote a checkpoint


def checkpoint_writer(cfg: Any) -> dict[str, Any]:
    """What decides a checkpoint's layout: the sharding backend as resolved (``auto`` as
    chosen) and its ZeRO stage (stage 3 shards parameters, 1-2 only optimizer states), the
    model it continues, and the adapters' type, rank and target modules (their tensors' names
    and shapes). Settings that leave the files readable (offload, LR, alpha, dropout) are not
    part of it: a resume may change those."""
    from launcher.backends.registry import resolve_sharding

    sharding = resolve_sharding(cfg.sharding)  # ftl run wrote auto's choice into the config
    peft = cfg.peft
    return {
        "backend": sharding.kind,
        "zero_stage": sharding.zero_stage if sharding.kind == "deepspeed" else None,
        "model": cfg.model.path,
        "adapters": None if peft is None else {"type": peft.type, "r": peft.r,
                                               "target_modules": peft.target_modules},
    }


def backend_of_files(ckpt: Path) -> str | None:
    """The backend whose files a checkpoint holds (DDP: model.pt; DeepSpeed: its ``ds`` tag;
    FSDP2: a ``dcp`` folder), for checkpoints written before ``writer.json`` existed."""
    if (ckpt / "ds").is_dir():
        return "deepspeed"
    if (ckpt / "dcp").is_dir():
        return "fsdp2"
    if (ckpt / "model.pt").exists():
        return "ddp"
    return None


def recorded_writer(ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint's ``writer.json``, or None when an older version wrote it."""
    path = ckpt / WRITER_FILE
    return json.loads(path.read_text()) if path.exists() else None


def legacy_writer(ckpt: Path, folder_cfg: Any) -> dict[str, Any]:
    """The best record for a checkpoint without ``writer.json``: the run folder's config (what
    last ran in it), its backend corrected by the files the checkpoint holds; a ZeRO stage
    that the files contradict is unknown (None is never compared)."""
    record = checkpoint_writer(folder_cfg)
    kind = backend_of_files(ckpt)
    if kind is not None and kind != record["backend"]:
        record.update(backend=kind, zero_stage=None)
    return record


def writer_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'<field>: <old> -> <new>' for each field that differs (a None ZeRO stage is unknown)."""
    out = []
    stages = old.get("zero_stage"), new.get("zero_stage")
    if old.get("backend") != new.get("backend"):  # the stage goes with it: 'ddp -> deepspeed ZeRO-3'
        out.append(f"{WRITER_FIELDS['backend']}: {_backend(old)} -> {_backend(new)}")
    elif None not in stages and stages[0] != stages[1]:
        out.append(f"{WRITER_FIELDS['zero_stage']}: {stages[0]} -> {stages[1]}")
    for key in ("model", "adapters"):
        if old.get(key) != new.get(key):
            out.append(f"{WRITER_FIELDS[key]}: {_show(old.get(key))} -> {_show(new.get(key))}")
    return out


def _backend(record: dict[str, Any]) -> str:
    stage = record.get("zero_stage")
    return str(record.get("backend")) + (f" ZeRO-{stage}" if stage is not None else "")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _changed_writer_problem(ckpt: Path, changes: list[str]) -> Problem:
    run = ckpt.parent.parent
    return Problem(
        str(ckpt), "this checkpoint was written with other settings than this resume asks for ("
        + "; ".join(changes) + "): it could not be loaded, and `ftl export` could no longer read it",
        "resume with the original settings (drop the --set that changes them), or start a new run "
        f"from this checkpoint: `ftl export {run} --to DIR`, then `ftl run CONFIG --set model.path=DIR`")


def refuse_changed_writer(run_dir: Path, cfg: Any) -> None:
    """Raise UserError when ``cfg`` would resume checkpoints of ``run_dir`` that another
    backend, ZeRO stage, model or adapter set wrote. Every complete checkpoint is checked
    (``ftl export --step`` reads old ones too), newest first; read-only, so a refused resume
    leaves the folder as it was."""
    new = checkpoint_writer(cfg)
    folder_cfg = None
    for ckpt in reversed(complete_checkpoints(Path(run_dir) / "checkpoints")):
        old = recorded_writer(ckpt)
        if old is None:
            if folder_cfg is None:
                from launcher.run.rundir import RunFolder

                folder_cfg = RunFolder(Path(run_dir)).load_config()
            old = legacy_writer(ckpt, folder_cfg)
        changes = writer_changes(old, new)
        if changes:
            raise UserError(_changed_writer_problem(ckpt, changes))
