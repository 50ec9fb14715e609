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
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import tiny_config
from tests.integration.test_sharding import prepare


def torchrun(run: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "launcher.loop", str(run)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
        timeout=300)


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
