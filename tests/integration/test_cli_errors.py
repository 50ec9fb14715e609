"""Every kind of bad input exits 2 with a located message and no traceback.

The CLI runs in this process (Click's ``CliRunner``, in the test's folder): a user error is
decided before any process or cluster starts, so a new Python process per case (~4 s of
imports each) would test nothing more. One case runs the real ``ftl`` process, for what only
the process shows: its exit status and what reaches its stderr.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.ftl import ftl_in_process, run_dirs, run_ftl, tiny_config, write_config


@pytest.fixture
def ftl(workdir):
    """``ftl ARGS`` in this process, from ``workdir`` (the runs folder is relative to it)."""
    return lambda args: ftl_in_process(args, workdir)


def assert_user_error(proc: subprocess.CompletedProcess, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_unknown_key_exits_2_with_suggestion(workdir):
    """The real process: exit status 2, the message on its stderr, no traceback, no run folder."""
    cfg = tiny_config()
    cfg["data"]["max_lenght"] = 128
    proc = run_ftl(["run", write_config(workdir, cfg)], workdir)
    assert_user_error(proc, "data.max_lenght: unknown key", "did you mean 'max_length'?")
    assert run_dirs(workdir) == []  # nothing submitted, no run folder


def test_wrong_type_exits_2(ftl, workdir):
    cfg = tiny_config()
    cfg["train"]["lr"] = "fast"
    proc = ftl(["validate", write_config(workdir, cfg)])
    assert_user_error(proc, "train.lr: Input should be a valid number")


def test_several_errors_reported_together(ftl, workdir):
    cfg = tiny_config(resources={"num_workers": 0})
    cfg["train"]["schedule"] = "cosin"
    cfg["model"]["dtype"] = "int3"
    proc = ftl(["validate", write_config(workdir, cfg)])
    assert_user_error(proc, "3 problem(s)", "resources.num_workers", "train.schedule", "model.dtype")


def test_bad_set_path_exits_2(ftl, workdir):
    proc = ftl(["run", write_config(workdir, tiny_config()), "--set", "train.learning_rate=1"])
    assert_user_error(proc, "--set train.learning_rate=1: unknown config path")
    assert run_dirs(workdir) == []


def test_missing_dataset_column_names_file_and_row(ftl, workdir):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    rows.insert(2, {"prompt": "no messages here"})
    data = workdir / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(data={"train": {"path": str(data)}, "eval": []})
    proc = ftl(["run", write_config(workdir, cfg)])
    assert_user_error(proc, f"{data}:3: missing column 'messages'")
    assert run_dirs(workdir) == []


def test_malformed_jsonl_line_is_located(ftl, workdir):
    data = workdir / "broken.jsonl"
    data.write_text('{"text": "ok"}\n{"text": oops}\n')
    cfg = tiny_config(method="full", data={"train": {"path": str(data)}, "eval": []})
    proc = ftl(["validate", write_config(workdir, cfg)])
    assert_user_error(proc, f"{data}:2: invalid JSON")


def test_missing_file_and_unknown_builtin(ftl, workdir):
    cfg = tiny_config(model={"path": "builtin:tiny-lama"},
                      data={"train": {"path": "./nowhere.jsonl"}, "eval": []})
    proc = ftl(["validate", write_config(workdir, cfg)])
    assert_user_error(proc, "model.path: unknown builtin model 'tiny-lama'", "did you mean 'tiny-llama'",
                      "data.train.0.path: file not found: ./nowhere.jsonl")


def test_too_many_local_workers_is_a_user_error(ftl, workdir):
    proc = ftl(["validate", write_config(workdir, tiny_config(resources={"num_workers": 64}))])
    assert_user_error(proc, "resources: 64 workers x 1 CPUs need 64 CPUs")


def test_help_shows_examples(ftl, workdir):
    for cmd in (["--help"], ["run", "--help"], ["validate", "--help"], ["plan", "--help"],
                ["schema", "--help"], ["list", "--help"], ["export", "--help"], ["status", "--help"],
                ["logs", "--help"], ["stop", "--help"]):
        proc = ftl(cmd)
        assert proc.returncode == 0
        assert "Example" in proc.stdout, cmd


def test_qlora_without_gpu_and_bad_deepspeed_config_exit_2(ftl, workdir):
    bad_ds = {"zero_optimization": {"stage": 7}}
    cfg = tiny_config(peft={"type": "qlora", "r": 8},
                      sharding={"backend": "zero2", "deepspeed_config": bad_ds})
    proc = ftl(["validate", write_config(workdir, cfg)])
    assert_user_error(proc, "peft.type: qlora needs a CUDA GPU",
                      "sharding.deepspeed_config: DeepSpeed rejects")


def test_feedback_label_that_is_not_a_boolean_is_located(ftl, workdir):
    rows = [{"prompt": "hi", "completion": "yo", "label": True},
            {"prompt": "hi", "completion": "no", "label": "meh"}]
    data = workdir / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(method="kto", data={"train": {"path": str(data)}, "eval": []})
    proc = ftl(["validate", write_config(workdir, cfg)])
    assert_user_error(proc, f"{data}:2: label 'meh' is neither true nor false", "hint: label: true")
