"""Run-folder files read back safely: a cut-off metrics line, a growing Slurm log, sacct's
truncated state names (parts of issue #20)."""

from __future__ import annotations

import json
import logging
import os

from cluster.slurm import TERMINAL, ByteFollower, job_state
from launcher.metrics.jsonl import JsonlSink, read_metrics


def test_a_metrics_line_cut_off_mid_write_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "train/lo')
    with caplog.at_level(logging.WARNING, logger="ftl.metrics"):
        assert read_metrics(path) == rows
    assert f"{path}:4: skipped a line that is not JSON" in caplog.text
    sink = JsonlSink(path, resume_step=2)  # a resume keeps what came before its checkpoint
    sink.log(3, {"train/loss": 0.5})
    sink.close()
    assert read_metrics(path) == rows[:2] + [{"step": 3, "train/loss": 0.5}]


def test_sacct_truncated_states_are_whole_and_terminal():
    assert job_state("OUT_OF_ME+") == "OUT_OF_MEMORY" and "OUT_OF_MEMORY" in TERMINAL
    assert job_state("CANCELLED+") == "CANCELLED"
    assert job_state("RUNNING") == "RUNNING"


def test_log_follower_keeps_a_split_character_for_the_next_poll(tmp_path):
    path = tmp_path / "slurm-1.out"
    text = "step 1: loss 0.5 — ok ✓\n"
    data = text.encode()
    cut = data.index("✓".encode()) + 1  # inside the 3-byte character
    follower = ByteFollower(path)
    assert follower.read_new() == ""  # not there yet
    path.write_bytes(data[:cut])
    first = follower.read_new()
    with path.open("ab") as fh:
        fh.write(data[cut:])
    assert follower.behind()
    assert first + follower.read_new() == text
    assert not follower.behind()


def test_export_into_a_folder_with_files_is_refused_and_leaves_them(tmp_path):
    from click.testing import CliRunner

    from launcher.cli import cli
    from tests.conftest import tiny_config, write_config

    run = tmp_path / "run"
    run.mkdir()
    write_config(run, tiny_config(), name="config.yaml")
    out = tmp_path / "model"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights of another export")
    result = CliRunner().invoke(cli, ["export", str(run), "--to", str(out)])
    assert result.exit_code == 2, result.output
    assert f"--to: {out} is not empty" in result.stderr
    assert "--overwrite" in result.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights of another export"


def test_the_cli_leaves_no_ds_accelerator_for_sbatch_and_workers_get_it_from_the_config(tmp_path):
    import subprocess
    import sys

    from launcher.config.load import validate_config
    from launcher.driver import worker_env
    from tests.conftest import ROOT, tiny_config, write_config

    path = write_config(tmp_path, tiny_config(sharding={"backend": "zero2"}))  # imports DeepSpeed
    probe = ("import os, sys; from launcher.cli import main; sys.argv = ['ftl', 'validate', sys.argv[1]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('DS_ACCELERATOR=' + str(os.environ.get('DS_ACCELERATOR')))")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok:" in proc.stdout and "DS_ACCELERATOR=None" in proc.stdout
    assert worker_env(validate_config(tiny_config()))["DS_ACCELERATOR"] == "cpu"
    gpu = validate_config(tiny_config(resources={"num_workers": 2, "gpus_per_worker": 1}))
    assert "DS_ACCELERATOR" not in worker_env(gpu)
