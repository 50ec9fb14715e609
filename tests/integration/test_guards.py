"""Runs that go wrong stop loudly: the per-rank loop on 2 gloo ranks under ``torchrun``.

(The Ray path adds nothing here: a rank's failure record is what ``ftl run`` reports, tested
in test_local_run.py with a failing rank.)

- A loss that turns NaN at step k stops every rank at step k, names k and the rank, saves
  nothing from that step, and leaves the last checkpoint good: the next launch resumes from it
  and finishes.
- A rank that hangs after a step is noticed by its watchdog within ``train.hang_timeout_s``;
  the run fails, the failure names the rank, and the rank's log holds the stack of every
  thread, showing where it hung.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tests.helpers.ftl import tiny_config
from tests.helpers.runs import prepare, torchrun


def failure(run: Path, rank: int) -> str:
    return json.loads((run / "logs" / f"failed-rank-{rank}.json").read_text())["error"]


def test_nan_loss_stops_at_its_step_and_the_last_checkpoint_resumes(tmp_path):
    cfg = tiny_config(train={"max_steps": 6}, checkpoint={"dir": "runs", "every_steps": 2, "keep": 3},
                      data={"eval": []})
    run = prepare(tmp_path, "nan", cfg)
    proc = torchrun(run, {"FTL_FAILPOINT": "train.nan_loss:3:skip", "FTL_FAILPOINT_RANK": "0"})
    assert proc.returncode != 0
    for rank in (0, 1):  # every rank stops at the same step, naming the rank whose loss went bad
        error = failure(run, rank)
        assert error.startswith("NonFiniteError: step 3: the loss is nan on rank(s) 0"), error
        assert "the last good checkpoint is" in error and "step-00000002" in error
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # nothing logged from the bad step

    for stale in (run / "logs").glob("failed-rank-*.json"):
        stale.unlink()
    resumed = torchrun(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from_step"] == 2


def test_a_hung_rank_fails_the_run_with_every_threads_stack(tmp_path):
    cfg = tiny_config(train={"max_steps": 6, "hang_timeout_s": 6}, data={"eval": []})
    run = prepare(tmp_path, "hang", cfg)
    start = time.monotonic()
    proc = torchrun(run, {"FTL_FAILPOINT": "train.after_step:2:hang", "FTL_FAILPOINT_RANK": "1"})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    error = failure(run, 1)
    assert error.startswith("HangError: no step progress for") and "after step 2" in error, error
    log = (run / "logs" / "rank-1.log").read_text()
    assert "Thread 0x" in log  # faulthandler's dump of every thread
    assert "failpoints.py" in log and "in hit" in log  # where the rank hung
    print(f"hung rank detected and the run failed in {elapsed:.0f} s")
    assert elapsed < 120


def test_skip_nonfinite_skips_a_bad_step_and_stops_when_the_budget_is_spent(tmp_path):
    """`train.skip_nonfinite: 1`: a NaN loss at step 3 leaves the parameters as they were (the
    step-3 checkpoint equals step 2's, bit for bit), is counted in the metrics, and the run
    finishes; NaN at every step stops at step 2, the first one past the budget."""
    cfg = tiny_config(train={"max_steps": 5, "skip_nonfinite": 1},
                      checkpoint={"dir": "runs", "every_steps": 1, "keep": 5}, data={"eval": []})
    run = prepare(tmp_path, "skip", cfg)
    proc = torchrun(run, {"FTL_FAILPOINT": "train.nan_loss:3:skip", "FTL_FAILPOINT_RANK": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 4, 5]  # the skipped step's NaN is not logged
    assert [m["train/skipped_steps"] for m in metrics] == [0, 0, 1, 1]
    weights = {step: torch.load(run / "checkpoints" / f"step-{step:08d}" / "model.pt")
               for step in (2, 3, 4)}  # DDP's checkpoint: the whole state dict
    assert all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])  # untouched at step 3
    assert not all(torch.equal(weights[3][k], weights[4][k]) for k in weights[3])  # step 4 trained
    assert all(torch.isfinite(t).all() for t in weights[4].values())

    cfg["name"] = "over"
    over = prepare(tmp_path, "over", cfg)
    proc = torchrun(over, {"FTL_FAILPOINT": "train.nan_loss::skip", "FTL_FAILPOINT_RANK": "0"})
    assert proc.returncode != 0
    error = failure(over, 0)
    assert error.startswith("NonFiniteError: step 2: the loss is nan on rank(s) 0"), error
    assert "train.skip_nonfinite: 1 steps were skipped already" in error
