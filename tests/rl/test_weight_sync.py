"""Weight sync is verified, not assumed: after every sync each rollout engine's log-probs of a
fixed probe sequence must equal the trainer's, and a sync that silently never lands stops the
run naming the worker (TRL #5312 is that failure going unnoticed)."""

from __future__ import annotations

import pytest

from launcher.core.errors import JobFailed
from tests.helpers.rl import letters_config, run_in_session


def test_a_sync_that_never_lands_stops_the_run_naming_the_worker(ray_session, tmp_path, monkeypatch):
    """HF engines; the matching case is asserted in every RL run (tests/rl/test_rl_runs.py,
    test_vllm_rollouts.py: sync/probe_max_diff)."""
    cfg = letters_config("grpo", "sync-skipped", rollout={"batch_size": 4, "max_new_tokens": 8})
    cfg["train"]["max_steps"] = 3
    monkeypatch.setenv("FTL_FAILPOINT", "rollout.load_weights:2:skip")
    monkeypatch.setenv("FTL_FAILPOINT_RANK", "1")
    with pytest.raises(JobFailed) as info:
        run_in_session(tmp_path, cfg)
    text = str(info.value)
    assert "rollout worker 1 (actor" in text and "does not hold the policy's weights v2" in text, text
