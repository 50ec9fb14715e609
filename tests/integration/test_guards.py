"""Runs that go wrong stop loudly, through the real ``ftl run`` on a local Ray cluster.

- A loss that turns NaN at step k stops every rank at step k, names k and the rank, saves
  nothing from that step, and leaves the last checkpoint good: ``--resume`` finishes from it.
- A rank that hangs after a step is noticed by its watchdog within ``train.hang_timeout_s``;
  the run fails naming the rank, and the rank's log holds the stack of every thread, showing
  where it hung.
"""

from __future__ import annotations

import json
import time

from tests.conftest import run_dirs, run_ftl, tiny_config, write_config


def test_nan_loss_stops_at_its_step_and_the_last_checkpoint_resumes(workdir):
    cfg = tiny_config(train={"max_steps": 6}, checkpoint={"dir": "runs", "every_steps": 2, "keep": 3},
                      data={"eval": []})
    path = write_config(workdir, cfg)
    proc = run_ftl(["run", path], workdir, env={"FTL_FAILPOINT": "train.nan_loss:3:skip",
                                                 "FTL_FAILPOINT_RANK": "0"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "NonFiniteError: step 3: the loss is nan on rank(s) 0" in proc.stderr, proc.stderr[-3000:]
    (run,) = run_dirs(workdir)
    assert "the last good checkpoint is" in proc.stderr and "step-00000002" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # nothing logged from the bad step

    resumed = run_ftl(["run", "--resume", run], workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from_step"] == 2


def test_a_hung_rank_fails_the_run_with_every_threads_stack(workdir):
    cfg = tiny_config(train={"max_steps": 6, "hang_timeout_s": 6}, checkpoint={"dir": "runs"},
                      data={"eval": []})
    start = time.monotonic()
    proc = run_ftl(["run", write_config(workdir, cfg)], workdir,
                   env={"FTL_FAILPOINT": "train.after_step:2:hang", "FTL_FAILPOINT_RANK": "1"}, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "rank 1 failed: HangError: no step progress for" in proc.stderr, proc.stderr[-3000:]
    assert "after step 2" in proc.stderr
    (run,) = run_dirs(workdir)
    log = (run / "logs" / "rank-1.log").read_text()
    assert "ftl-step-watchdog" in log or "Thread 0x" in log  # faulthandler's all-thread dump
    assert "failpoints.py" in log and "in hit" in log  # where the rank hung
    print(f"hung rank detected and the run failed in {elapsed:.0f} s")
    assert elapsed < 240
