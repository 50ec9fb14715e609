"""Checkpoints record what wrote them (sharding backend, ZeRO stage, model, adapters), and a
resume that changes any of those is refused before anything is written (issue #20, item 7).
Real checkpoint folders written by CheckpointManager in one process; the full-run version
(a real `ftl run --resume --set sharding.backend=fsdp2`) is in
tests/integration/test_run_folder_writers.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from launcher.config.load import validate_config
from launcher.core.errors import UserError
from launcher.run.rundir import RunFolder
from launcher.train.checkpoint import (
    CheckpointManager,
    checkpoint_writer,
    complete_checkpoints,
    refuse_changed_writer,
)
from launcher.train.dist import RankContext
from tests.helpers.ftl import tiny_config

CTX = RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), launcher="single")


def cfg_with(**sections):
    return validate_config(tiny_config(**sections))


def ddp_run(tmp_path: Path) -> tuple[RunFolder, Path]:
    """A run folder as prepare_run leaves it (config.yaml, launch.json with the writer) and one
    DDP-style checkpoint saved the way loop.py saves it today (no writer passed)."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    cfg = cfg_with()
    folder.write_config(tiny_config())
    folder.new_launch(writer=checkpoint_writer(cfg))
    manager = CheckpointManager(folder.path, 2, CTX)

    def write(tmp: Path) -> None:
        torch.save({"w": torch.ones(2)}, tmp / "model.pt")

    ckpt = manager.save(2, write, {"step": 2})
    return folder, ckpt


def refusal(folder: RunFolder, cfg) -> str:
    with pytest.raises(UserError) as info:
        refuse_changed_writer(folder.path, cfg)
    return info.value.render()


def test_a_checkpoint_records_its_writer_and_a_resume_must_keep_it(tmp_path):
    folder, ckpt = ddp_run(tmp_path)
    assert json.loads((ckpt / "writer.json").read_text()) == {
        "backend": "ddp", "zero_stage": None, "model": "builtin:tiny-llama", "adapters": None}
    refuse_changed_writer(folder.path, cfg_with(train={"max_steps": 60, "lr": 1e-4}))  # allowed

    text = refusal(folder, cfg_with(sharding={"backend": "fsdp2"}))
    assert f"{ckpt}: this checkpoint was written with other settings than this resume asks for " \
           "(sharding backend: ddp -> fsdp2)" in text
    assert "hint: resume with the original settings" in text
    assert f"`ftl export {folder.path} --to DIR`" in text
    text = refusal(folder, cfg_with(peft={"type": "lora", "r": 8}))
    assert "adapters (peft): none -> type lora, r 8, target_modules all-linear" in text
    text = refusal(folder, cfg_with(model={"path": "builtin:tiny-llama-256"}))
    assert "model.path: builtin:tiny-llama -> builtin:tiny-llama-256" in text
    # The ranks check it too, before loading (what loop.py can call: check_writer).
    fsdp2 = checkpoint_writer(cfg_with(sharding={"backend": "fsdp2"}))
    manager = CheckpointManager(folder.path, 2, CTX, writer=fsdp2)
    with pytest.raises(UserError, match="ddp -> fsdp2"):
        manager.check_writer(ckpt)


def test_zero_stages_are_told_apart(tmp_path):
    folder, ckpt = ddp_run(tmp_path)
    zero2 = cfg_with(sharding={"backend": "zero2"})
    (ckpt / "writer.json").write_text(json.dumps(checkpoint_writer(zero2)))
    refuse_changed_writer(folder.path, cfg_with(sharding={"backend": "deepspeed", "zero_stage": 2}))
    text = refusal(folder, cfg_with(sharding={"backend": "zero3"}))
    assert "(ZeRO stage: 2 -> 3)" in text and "sharding backend" not in text
    text = refusal(folder, cfg_with(sharding={"backend": "ddp"}))
    assert "(sharding backend: deepspeed ZeRO-2 -> ddp)" in text


def test_checkpoints_without_a_record_still_resume_and_are_judged_by_their_files(tmp_path):
    """Checkpoints of older versions have no writer.json: the run folder's config stands in,
    its backend corrected by the files the checkpoint holds."""
    folder, ckpt = ddp_run(tmp_path)
    (ckpt / "writer.json").unlink()
    refuse_changed_writer(folder.path, cfg_with(train={"max_steps": 60}))  # resumes as before
    assert "sharding backend: ddp -> fsdp2" in refusal(folder, cfg_with(sharding={"backend": "fsdp2"}))
    # An old resume already rewrote config.yaml to fsdp2; the files still say DDP.
    folder.write_config(tiny_config(sharding={"backend": "fsdp2"}))
    assert "sharding backend: ddp -> fsdp2" in refusal(folder, cfg_with(sharding={"backend": "fsdp2"}))
    refuse_changed_writer(folder.path, cfg_with())


def test_every_complete_checkpoint_is_checked_and_a_partial_one_is_not(tmp_path):
    folder, ckpt = ddp_run(tmp_path)
    older = ckpt.with_name("step-00000001")
    shutil.copytree(ckpt, older)
    other_model = checkpoint_writer(cfg_with(model={"path": "builtin:tiny-llama-256"}))
    (older / "writer.json").write_text(json.dumps(other_model))
    partial = ckpt.with_name(".tmp-step-00000003")
    shutil.copytree(ckpt, partial)
    (partial / "writer.json").write_text(json.dumps({"backend": "fsdp2"}))
    assert [p.name for p in complete_checkpoints(folder.path / "checkpoints")] == [older.name, ckpt.name]
    assert f"{older}: this checkpoint was written" in refusal(folder, cfg_with())


def test_export_reads_the_backend_from_the_checkpoint_not_from_an_edited_config(tmp_path):
    from launcher.run.export import checkpoint_backend

    folder, ckpt = ddp_run(tmp_path)
    edited = cfg_with(sharding={"backend": "fsdp2"})
    assert checkpoint_backend(ckpt, edited) == "ddp"
    (ckpt / "writer.json").unlink()
    assert checkpoint_backend(ckpt, edited) == "ddp"  # from its files: model.pt
    (ckpt / "writer.json").write_text(json.dumps(checkpoint_writer(cfg_with())))
    with pytest.raises(UserError, match="written for another model than config.yaml describes "
                                        r"\(model.path: builtin:tiny-llama -> builtin:tiny-llama-256\)"):
        checkpoint_backend(ckpt, cfg_with(model={"path": "builtin:tiny-llama-256"}))
