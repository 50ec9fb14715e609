"""PPO and GRPO on real Ray actor groups raise a rule reward, sync and one-step-off async.

Task: builtin:prompts-letters scored by strategies.ppo.rewards:letter_a_fraction (share of 'a'
in the response, in [0, 1]); the random tiny Llama starts near 0.04. Every run has 1 policy
trainer and 2 rollout workers as separate actors; the assertions read what a user reads: the
run folder (metrics.jsonl, summary.json, logs/roles.json, final/, checkpoints/).
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from launcher.metrics.jsonl import read_metrics
from tests.helpers.ftl import run_dirs, run_ftl, write_config
from tests.helpers.rl import assert_reward_rose, letters_config, run_in_session


def actors(run: Path) -> dict[str, list[dict]]:
    return json.loads((run / "summary.json").read_text())["roles"]


def assert_separate_actors(run: Path, roles: set[str]) -> None:
    found = actors(run)
    assert set(found) == roles | {"controller"}
    pids = [a["pid"] for role in roles for a in found[role]] + [found["controller"][0]["pid"]]
    ids = [a["actor_id"] for role in roles for a in found[role]]
    assert len(set(pids)) == len(pids) and len(set(ids)) == len(ids)  # one process per actor
    assert len(found["rollout"]) == 2 and len(found["policy"]) == 1


def test_ppo_sync_raises_reward_and_writes_the_run_folder(ray_session, tmp_path):
    cfg = letters_config("ppo", "ppo-sync", placement="separate")
    cfg["checkpoint"] = {"dir": "runs", "every_steps": 8, "keep": 1}
    cfg["logging"]["wandb"] = {"mode": "offline", "project": "t"}
    run = run_in_session(tmp_path, cfg)
    assert_reward_rose(run)
    assert_separate_actors(run, {"policy", "critic", "reference", "rollout"})
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17))
    for key in ("reward/std", "kl/ref_per_token", "policy/entropy", "policy/clip_fraction",
                "policy/approx_kl", "critic/value_loss", "response/length_mean", "time/generate_s",
                "time/score_s", "time/train_s", "time/sync_s", "rollout/tokens_per_s", "train/tokens_per_s"):
        assert all(key in r for r in rows), key
    assert {r["rollout/weights_lag"] for r in rows} == {0}  # sync: always the newest weights
    assert rows[-1]["sync/tensors"] == rows[0]["sync/tensors"] > 20  # full weights travel
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"generate", "score", "train", "sync"}
    assert summary["tokens"]["rollout"] > 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000016"]
    assert (run / "checkpoints" / "step-00000016" / "critic" / "model.pt").exists()
    assert json.loads((run / "logs" / "roles.json").read_text())["roles"] == summary["roles"]
    assert {p.name for p in (run / "logs").glob("*.log")} >= {
        "controller.log", "policy-0.log", "critic-0.log", "reference-0.log", "rollout-0.log", "rollout-1.log"}
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "final").config.vocab_size > 0


def test_ppo_async_is_one_step_off_policy_and_raises_reward(ray_session, tmp_path):
    run = run_in_session(tmp_path, letters_config("ppo", "ppo-async", kl_coef=0.0, **{"async": True}))
    assert_reward_rose(run)
    assert_separate_actors(run, {"policy", "critic", "rollout"})  # kl_coef 0: no reference actor
    lags = [r["rollout/weights_lag"] for r in read_metrics(run / "metrics.jsonl")]
    assert lags == [0] + [1] * 15  # batch k+1 sampled with the weights of step k-1
    assert json.loads((run / "summary.json").read_text())["async"] is True


def test_grpo_colocated_with_reference_raises_reward(ray_session, tmp_path):
    cfg = letters_config("grpo", "grpo-sync", placement="colocate", beta=0.01)
    run = run_in_session(tmp_path, cfg)
    assert_reward_rose(run)
    assert_separate_actors(run, {"policy", "reference", "rollout"})
    placement = json.loads((run / "logs" / "roles.json").read_text())["placement"]
    assert placement["mode"] == "colocate"
    slots = [s for role in placement["roles"].values() for s in role]
    assert {s["bundle"] for s in slots} == {0} and sum(s["num_cpus"] for s in slots) == pytest.approx(1.0)
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[-1]["kl/ref_per_token"] > 0 and "critic/value_loss" not in rows[-1]
    assert max(r["sync/probe_max_diff"] for r in rows) < 1e-4  # every sync verified: same model code


def test_grpo_async_through_ftl_run_replaces_a_killed_rollout_worker(tmp_path):
    """The real path (`ftl run` on the local target, its own Ray), with rollout worker 1 SIGKILLing
    itself (failpoint) as it starts generating step 4's batch."""
    cfg = write_config(tmp_path, letters_config("grpo", "grpo-async", **{"async": True}))
    proc = run_ftl(["run", cfg, "--no-progress"], tmp_path,
                   env={"FTL_FAILPOINT": "rollout.generate:4", "FTL_FAILPOINT_RANK": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert "before: reward/mean" in proc.stdout and f"run folder: runs/{run.name}" in proc.stdout
    assert_reward_rose(run)
    summary = json.loads((run / "summary.json").read_text())
    (event,) = summary["rollout_replacements"]
    assert event["step"] == 4 and event["worker"] == 1 and event["weights_version"] == 2
    assert event["old_pid"] != event["new_pid"] and event["old_actor_id"] != event["new_actor_id"]
    assert not psutil.pid_exists(event["old_pid"])
    assert summary["roles"]["rollout"][1]["pid"] == event["new_pid"]
    log = (run / "logs" / "controller.log").read_text()
    assert f"pid {event['old_pid']} -> actor {event['new_actor_id']} pid {event['new_pid']}" in log
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17)) and rows[-1]["rollout/replacements"] == 1
    assert [r["rollout/weights_lag"] for r in rows] == [0] + [1] * 15


def test_roles_that_do_not_fit_the_cluster_fail_before_starting_naming_the_fields(ray_session, tmp_path):
    from launcher.core.errors import UserError

    cfg = letters_config("grpo", "too-big", rollout={"num_workers": 2, "batch_size": 8, "cpus_per_worker": 4})
    with pytest.raises(UserError) as info:
        run_in_session(tmp_path, cfg)
    text = info.value.render()
    assert "grpo.rollout, resources: the roles need 9 CPU in all and the Ray cluster has 8" in text
    assert "role rollout (2 x 4 CPU)" in text and "cluster.local.num_cpus" in text
