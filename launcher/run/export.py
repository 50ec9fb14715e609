"""``ftl export``: one HF safetensors folder from any backend's checkpoint, offline.

Runs in a single process with no process group: DDP checkpoints hold the state dict;
DeepSpeed ZeRO shards are consolidated with ``zero_to_fp32``; FSDP2's distributed checkpoint
is read with ``dcp_to_torch_save``. Which of those applies is read from the checkpoint itself
(its ``writer.json``, or the files it holds), not from config.yaml, which a later edit may have
changed. The state dict is loaded strictly into the model the config describes (adapters
included), so a mismatch fails instead of exporting garbage.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from launcher.backends.registry import resolve_sharding
from launcher.core.errors import Problem, UserError
from launcher.models.load import load_model, load_tokenizer
from launcher.plan.auto_sharding import concrete_config
from launcher.run.rundir import RunFolder
from launcher.train.checkpoint import (
    backend_of_files,
    checkpoint_step,
    checkpoint_writer,
    complete_checkpoints,
    recorded_writer,
    writer_changes,
)
from strategies import build_strategy


def pick_checkpoint(folder: RunFolder, step: int | None) -> Path:
    root = folder.path / "checkpoints"
    found = complete_checkpoints(root)
    if step is not None:
        found = [p for p in found if checkpoint_step(p) == step]
    if not found:
        raise UserError(Problem(str(root), "no complete checkpoint" + (f" at step {step}" if step else ""),
                                "checkpoints are written every checkpoint.every_steps"))
    return found[-1]


def checkpoint_backend(ckpt: Path, cfg: Any) -> str | None:
    """The backend that wrote ``ckpt``; UserError when its record names another model or
    adapter set than config.yaml (the state dict could not fit the model built from it)."""
    recorded = recorded_writer(ckpt)
    if recorded is None:
        return backend_of_files(ckpt)
    sharding = {"backend": recorded["backend"], "zero_stage": recorded.get("zero_stage")}
    changes = writer_changes(recorded, {**checkpoint_writer(cfg), **sharding})  # model, adapters
    if changes:
        raise UserError(Problem(str(ckpt), "written for another model than config.yaml describes ("
                                + "; ".join(changes) + ")",
                                "restore model.path and peft in config.yaml to what this run trained"))
    return recorded["backend"]


def consolidated_state_dict(ckpt: Path, kind: str) -> dict[str, torch.Tensor]:
    """The full model state dict of one checkpoint, whatever backend wrote it."""
    if kind == "ddp":
        return torch.load(ckpt / "model.pt", map_location="cpu")
    if kind == "deepspeed":
        from launcher.core.host import deepspeed_on_host

        with deepspeed_on_host():
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="ds")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(ckpt / "dcp"), str(out))
        return torch.load(out, map_location="cpu", weights_only=False)["model"]


def export_run(run_dir: str, to: str, *, merge_lora: bool = False, step: int | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    folder = RunFolder(Path(run_dir))
    if not folder.config_file.exists():
        raise UserError(Problem(run_dir, "not a run folder (no config.yaml)"))
    out = Path(to)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            # Mixing files breaks models silently: an adapter next to merged weights is applied
            # twice by transformers; a base model's folder would lose its weights.
            raise UserError(Problem("--to", f"{to} is not empty",
                                    "export into a new folder, or pass --overwrite to empty it first"))
        shutil.rmtree(out)
    cfg = folder.load_config()
    if merge_lora and cfg.peft is None:
        raise UserError(Problem("--merge-lora", "this run has no LoRA adapters to merge"))
    ckpt = pick_checkpoint(folder, step)
    # a folder written before ftl run recorded auto's choice in config.yaml: choose as it did
    kind = checkpoint_backend(ckpt, cfg) or resolve_sharding(concrete_config(cfg).sharding).kind
    state_dict = consolidated_state_dict(ckpt, kind)
    tokenizer = load_tokenizer(cfg)
    strategy = build_strategy(cfg, tokenizer)
    model = load_model(cfg, strategy)
    model.load_state_dict(state_dict, strict=True)
    if merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"checkpoint": str(ckpt), "backend": kind, "to": str(out), "merged": merge_lora,
            "tensors": len(state_dict)}
