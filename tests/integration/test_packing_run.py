"""A packed SFT run through the real per-rank loop (one process, no Ray): it learns, and its
token counts are the real tokens of the rows it trained on, not the padded batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launcher.metrics.jsonl import read_metrics
from tests.conftest import tiny_config, write_config

STEPS, MICRO, MAX_LENGTH = 6, 2, 128


def rows_seen(folder_path) -> list[dict]:
    """The packed rows the loop's sampler hands rank 0 over the run, rebuilt here."""
    from launcher.data.pipeline import prepare_data
    from launcher.data.sampler import StepSampler
    from launcher.models.load import load_tokenizer
    from launcher.rundir import RunFolder
    from strategies import build_strategy

    cfg = RunFolder(folder_path).load_config()
    strategy = build_strategy(cfg, load_tokenizer(cfg))
    data = prepare_data(cfg, strategy, with_eval=False)
    sampler = StepSampler(data.source_sizes, data.weights, cfg.train.seed)
    return [data.train[i] for step in range(STEPS)
            for idx in sampler.micro_batches(step, 0, 1, MICRO, cfg.grad_accum) for i in idx]


def test_packed_run_learns_and_counts_real_tokens(workdir):
    from launcher.submit import prepare_run

    cfg = tiny_config(data={"packing": True, "max_length": MAX_LENGTH},
                      train={"max_steps": STEPS, "micro_batch_size": MICRO, "lr": 3e-3,
                             "schedule": "constant"},
                      resources={"num_workers": 1, "cpus_per_worker": 1})
    os.chdir(workdir)
    folder, _ = prepare_run(str(write_config(workdir, cfg)), None, ())
    proc = subprocess.run([sys.executable, "-m", "launcher.loop", str(folder.path)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((folder.path / "summary.json").read_text())
    assert summary["final"]["eval/loss"] < summary["initial"]["eval/loss"]

    rows = rows_seen(folder.path)
    real = sum(len(r["input_ids"]) for r in rows)
    batches = [rows[i:i + MICRO] for i in range(0, len(rows), MICRO)]
    padded = sum(MICRO * max(len(r["input_ids"]) for r in batch) for batch in batches)
    examples_per_row = sum(r["position_ids"].count(0) for r in rows) / len(rows)
    assert examples_per_row > 2  # rows really hold several chats
    assert summary["tokens"] == real < padded
    logged = [m["train/tokens"] for m in read_metrics(folder.path / "metrics.jsonl") if "train/tokens" in m]
    assert logged[-1] == real
