"""Rollouts on a real inference engine: vLLM (its CPU build here) in the rollout actors.

The same task as tests/rl/test_rl_runs.py (builtin:prompts-letters, letter-'a' rule, random tiny
Llama starting near 0.04), with ``rollout.engine: vllm``: two Ray actors each own a vLLM engine
whose weights are replaced in place after every update. The assertions read the run folder.
"""

from __future__ import annotations

import json

import psutil
import pytest

from launcher.core.errors import JobFailed
from launcher.metrics.jsonl import read_metrics
from strategies.ppo.engine import vllm_status
from tests.helpers.ftl import run_dirs, run_ftl, write_config
from tests.helpers.rl import assert_reward_rose, letters_config, run_in_session

pytestmark = pytest.mark.skipif(vllm_status() is not None, reason=str(vllm_status()))

VLLM = {"engine": "vllm", "kv_cache_gb": 0.1}
FP32_PROBE_TOLERANCE = 1e-3  # the default for fp32 runs; measured here: ~5e-7


def vllm_config(method: str, name: str, **section) -> dict:
    cfg = letters_config(method, name, **section)
    cfg[method]["rollout"].update(VLLM)
    return cfg


def test_grpo_on_vllm_through_ftl_run_raises_reward_and_replaces_a_killed_worker(tmp_path):
    """The real path (`ftl run`, its own Ray), async, with rollout worker 1 SIGKILLing itself as it
    starts generating step 4's batch: a new actor with a new engine regenerates its chunk."""
    cfg = write_config(tmp_path, vllm_config("grpo", "vllm-grpo", **{"async": True}))
    proc = run_ftl(["run", cfg, "--no-progress"], tmp_path,
                   env={"FTL_FAILPOINT": "rollout.generate:4", "FTL_FAILPOINT_RANK": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert_reward_rose(run)
    summary = json.loads((run / "summary.json").read_text())
    (event,) = summary["rollout_replacements"]
    assert event["step"] == 4 and event["worker"] == 1
    assert not psutil.pid_exists(event["old_pid"])  # the engine lived in the actor: nothing orphaned
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17)) and rows[-1]["rollout/replacements"] == 1
    assert max(r["sync/probe_max_diff"] for r in rows) < FP32_PROBE_TOLERANCE
    # the engine's own sampling log-probs reach the loss (truncated importance sampling)
    assert all("rollout/logprob_diff" in r and "rollout/is_weight_mean" in r for r in rows)
    assert "vllm" in (run / "logs" / "rollout-0.log").read_text()


def test_ppo_on_vllm_raises_reward_with_verified_syncs(ray_session, tmp_path):
    run = run_in_session(tmp_path, vllm_config("ppo", "vllm-ppo", kl_coef=0.0))
    assert_reward_rose(run)
    rows = read_metrics(run / "metrics.jsonl")
    assert max(r["sync/probe_max_diff"] for r in rows) < FP32_PROBE_TOLERANCE
    # engine and trainer agree on the sampled tokens' log-probs up to float noise (fp32 here)
    assert max(r["rollout/logprob_diff"] for r in rows) < 1e-3


def test_a_sync_that_never_reaches_a_vllm_engine_stops_the_run(ray_session, tmp_path, monkeypatch):
    cfg = vllm_config("grpo", "vllm-skip", rollout={"num_workers": 1, "batch_size": 4})
    cfg["train"]["max_steps"] = 4
    monkeypatch.setenv("FTL_FAILPOINT", "rollout.load_weights:2:skip")
    with pytest.raises(JobFailed) as info:
        run_in_session(tmp_path, cfg)
    text = str(info.value)
    assert "rollout worker 0 (actor" in text and "does not hold the policy's weights v2" in text, text
