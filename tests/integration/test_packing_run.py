"""A packed SFT run through the real per-rank loop (one process, no Ray): it learns, and its
token counts are the real tokens of the rows it trained on, not the padded batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from launcher.metrics.jsonl import read_metrics
from scripts.bench.common import replayed_rows  # rebuilds rows independently of the loop
from tests.helpers.ftl import tiny_config, write_config

STEPS, MICRO, MAX_LENGTH = 6, 2, 128


def run_loop(workdir, cfg: dict, monkeypatch) -> tuple:
    """Prepare ``cfg`` in ``workdir`` and run the per-rank loop in one process (no Ray)."""
    from launcher.run.submit import prepare_run

    monkeypatch.chdir(workdir)
    folder, _ = prepare_run(str(write_config(workdir, cfg)), None, ())
    proc = subprocess.run([sys.executable, "-m", "launcher.train.loop", str(folder.path)],
                          capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, json.loads((folder.path / "summary.json").read_text())


def test_packed_run_learns_and_counts_real_tokens(workdir, monkeypatch):
    cfg = tiny_config(data={"packing": True, "max_length": MAX_LENGTH},
                      train={"max_steps": STEPS, "micro_batch_size": MICRO, "lr": 3e-3,
                             "schedule": "constant"},
                      resources={"num_workers": 1, "cpus_per_worker": 1}, logging={"report": True})
    folder, summary = run_loop(workdir, cfg, monkeypatch)
    assert summary["final"]["eval/loss"] < summary["initial"]["eval/loss"]
    report = folder.path / "report"  # written by the run's end
    assert f"{summary['final']['eval/loss']:.4f}" in (report / "index.html").read_text()
    assert (report / "train-loss.png").read_bytes().startswith(b"\x89PNG")

    rows = [row for step in replayed_rows(folder.path, STEPS) for row in step]  # the sampler's picks
    real = sum(len(r["input_ids"]) for r in rows)
    batches = [rows[i:i + MICRO] for i in range(0, len(rows), MICRO)]
    padded = sum(MICRO * max(len(r["input_ids"]) for r in batch) for batch in batches)
    examples_per_row = sum(r["position_ids"].count(0) for r in rows) / len(rows)
    assert examples_per_row > 2  # rows really hold several chats
    assert summary["tokens"] == real < padded
    logged = [m["train/tokens"] for m in read_metrics(folder.path / "metrics.jsonl") if "train/tokens" in m]
    assert logged[-1] == real


def test_packed_dpo_run_keeps_pairs_and_counts_real_tokens(workdir, monkeypatch):
    """DPO with ``data.packing``: whole pairs packed into rows, the reference precomputed on the
    packed rows. At step 1 the policy is the reference, so every pair's log-ratio is 0 and the
    loss is exactly log 2 only if each stored reference score went back to its own pair."""
    steps, micro = 3, 2
    cfg = tiny_config(method="dpo", data={"train": {"path": "builtin:prefs-reverse", "num_rows": 48},
                                          "eval": {"path": "builtin:prefs-reverse", "num_rows": 8},
                                          "packing": True, "max_length": 64},
                      train={"max_steps": steps, "micro_batch_size": micro, "lr": 1e-3,
                             "schedule": "constant"},
                      resources={"num_workers": 1, "cpus_per_worker": 1}, eval={"at_start": False},
                      checkpoint={"dir": "runs", "save_final": False})
    folder, summary = run_loop(workdir, cfg, monkeypatch)
    metrics = [m for m in read_metrics(folder.path / "metrics.jsonl") if "train/loss" in m]
    assert metrics[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(metrics[-1]["train/loss"] - math.log(2)) > 1e-4  # the policy moved, the reference did not

    rows = [row for step in replayed_rows(folder.path, steps) for row in step]
    pairs = [len(r["units"]) for r in rows]
    assert min(pairs) >= 1 and sum(pairs) > len(rows)  # several whole pairs per row
    assert all(sorted(s[1] for s in r["segments"]) == sorted(["chosen", "rejected"] * n)
               for r, n in zip(rows, pairs))  # each pair's two answers in the same row
    real = sum(seg[2] for r in rows for seg in r["segments"])  # prompt + answer, both answers
    assert summary["tokens"] == real == sum(len(r["input_ids"]) for r in rows)
