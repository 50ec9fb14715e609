"""The small helpers every layer shares: token-row padding, following a growing JSONL file,
worker threads and their environment, derived seeds, and the FTL_* accessors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from launcher.core import env
from launcher.core.seeds import mix_seed
from launcher.core.workers import thread_env, worker_threads
from launcher.data.batching import pad_rows
from launcher.metrics.jsonl import JsonlTail


def test_pad_rows_right_left_and_fixed_width():
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_rows([[], (9,)], pad_id=3, width=2)
    assert ids.tolist() == [[3, 3], [9, 3]] and mask.tolist() == [[0, 0], [1, 0]]
    assert ids.dtype == torch.long and mask.dtype == torch.long


def test_jsonl_tail_leaves_a_partial_line_and_restarts_on_a_replaced_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = JsonlTail(path)
    assert tail.read() == []  # not written yet
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "train/lo')
    assert tail.read() == [{"step": 1}]
    with path.open("a") as fh:
        fh.write('ss": 0.5}\n')
    assert tail.read() == [{"step": 2, "train/loss": 0.5}]
    assert tail.read() == []
    replacement = tmp_path / "new.jsonl"  # a resume rewrites the file: a new inode, shorter
    replacement.write_text(json.dumps({"step": 1, "again": True}) + "\n")
    replacement.replace(path)
    assert tail.read() == [{"step": 1, "again": True}]


def test_worker_threads_and_their_environment():
    class Section:
        threads_per_worker: int | None = None
        cpus_per_worker: float = 2.5

    section = Section()
    assert worker_threads(section) == 2
    section.cpus_per_worker = 0.5
    assert worker_threads(section) == 1
    section.threads_per_worker = 4
    assert worker_threads(section) == 4
    assert thread_env(3) == {"OMP_NUM_THREADS": "3"}
    assert thread_env(1, cpu=True) == {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def test_mixed_seeds_keep_neighbouring_run_seeds_apart():
    streams = {mix_seed(seed, step) for seed in range(3) for step in range(100)}
    assert len(streams) == 300
    assert mix_seed(0, 1) != mix_seed(1, 0)


def test_env_accessors_read_the_variables_when_called(monkeypatch, tmp_path):
    monkeypatch.setenv(env.HOME, str(tmp_path))
    assert env.home() == tmp_path
    monkeypatch.setenv(env.HOME, "")
    assert env.home() == env.Path.home() / ".cache" / "ftl"
    monkeypatch.delenv(env.FAILPOINT, raising=False)
    monkeypatch.delenv(env.FAILPOINT_RANK, raising=False)
    assert env.failpoint() is None and env.failpoint_rank() is None
    monkeypatch.setenv(env.FAILPOINT, "train.after_step:2")
    monkeypatch.setenv(env.FAILPOINT_RANK, "1")
    assert env.failpoint() == "train.after_step:2" and env.failpoint_rank() == 1
    monkeypatch.delenv(env.INTERRUPT_GRACE_S, raising=False)
    monkeypatch.delenv(env.ELASTIC_RESIZE_CHECK_S, raising=False)
    assert env.interrupt_grace_s() == 30.0 and env.elastic_resize_check_s() == 60.0
    monkeypatch.setenv(env.ELASTIC_RESIZE_CHECK_S, "1")
    assert env.elastic_resize_check_s() == 1.0
    assert os.environ[env.ELASTIC_RESIZE_CHECK_S] == "1"


@pytest.mark.parametrize("name", ["HOME", "FAILPOINT", "FAILPOINT_RANK", "FAILPOINT_HOLD",
                                  "INTERRUPT_GRACE_S", "ELASTIC_RESIZE_CHECK_S", "BENCH_T0"])
def test_env_names_keep_their_ftl_spelling(name):
    assert getattr(env, name) == f"FTL_{name}"
