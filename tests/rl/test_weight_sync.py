"""Weight sync is verified, not assumed: after every sync each rollout engine's log-probs of a
fixed probe sequence must equal the trainer's, and a sync that silently never lands stops the
run naming the worker (TRL #5312 is that failure going unnoticed)."""

from __future__ import annotations

import pytest

from launcher.errors import JobFailed
from launcher.metrics.jsonl import read_metrics
from tests.rl.conftest import letters_config, run_in_session


def test_engines_match_the_trainer_after_every_sync_and_a_skipped_sync_fails(ray_session, tmp_path,
                                                                              monkeypatch):
    cfg = letters_config("grpo", "sync-ok", rollout={"num_workers": 2, "batch_size": 4, "max_new_tokens": 8})
    cfg["train"]["max_steps"] = 3
    run = run_in_session(tmp_path, cfg)
    rows = read_metrics(run / "metrics.jsonl")
    diffs = [r["sync/probe_max_diff"] for r in rows]
    assert len(diffs) == 3 and max(diffs) < 1e-4, diffs  # same model code: float noise only

    monkeypatch.setenv("FTL_FAILPOINT", "rollout.load_weights:2:skip")
    monkeypatch.setenv("FTL_FAILPOINT_RANK", "1")
    cfg["name"] = "sync-skipped"
    with pytest.raises(JobFailed) as info:
        run_in_session(tmp_path, cfg)
    text = str(info.value)
    assert "rollout worker 1 (actor" in text and "does not hold the policy's weights v2" in text, text
