"""The RLHF chain as three configs: SFT, a reward model, then PPO against that reward model.

The configs are configs/examples/rlhf/{sft,reward,ppo}.yaml, shortened with --set (fewer steps)
and linked with --set the way a user links them: PPO's model.path is the SFT run's final/,
ppo.reward.model the reward run's final/. The PPO stage must raise the learned reward on
held-out prompts (eval/reward_mean, sampled before and after training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from launcher.metrics.jsonl import read_metrics
from tests.helpers.ftl import ROOT
from tests.helpers.rl import run_in_session

EXAMPLES = ROOT / "configs" / "examples" / "rlhf"
RISE = 1.0  # reward-model units; its chosen-minus-rejected margin on held-out pairs is ~5


def supervised_stages(tmp_path: Path) -> tuple[Path, Path]:
    """SFT and reward model side by side, each as one process running ftl's per-rank loop
    (``python -m launcher.train.loop RUN_DIR``: the loop Ray Train runs, without its start-up cost; the
    stages do not depend on each other)."""
    from launcher.run.submit import prepare_run

    runs = []
    for name, overrides in (("sft.yaml", ("train.max_steps=80",)), ("reward.yaml", ("train.max_steps=100",))):
        folder, _ = prepare_run(str(EXAMPLES / name), None, (*overrides, "data.eval=[]"),
                                runs_dir=str(tmp_path / "runs"))
        runs.append(folder.path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "launcher.train.loop", str(run)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for run in runs]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return runs[0], runs[1]


def test_sft_then_reward_model_then_ppo_raises_the_learned_reward(ray_session, tmp_path):
    sft, rm = supervised_stages(tmp_path)
    assert (sft / "final" / "config.json").exists() and (rm / "final" / "config.json").exists()
    ppo = run_in_session(tmp_path, EXAMPLES / "ppo.yaml", (
        f"model.path={sft / 'final'}", f"ppo.reward.model={rm / 'final'}", "train.max_steps=12",
        "eval.max_generate=32", "checkpoint.every_steps=12", "ppo.rollout.num_workers=1",
        "ppo.rollout.engine=hf"))  # the figures below were measured with HF generate
    summary = json.loads((ppo / "summary.json").read_text())
    before, after = summary["initial"]["eval/reward_mean"], summary["final"]["eval/reward_mean"]
    assert after >= before + RISE, f"held-out learned reward {before:.2f} -> {after:.2f}"
    assert set(summary["roles"]) == {"policy", "critic", "reference", "reward", "rollout", "controller"}
    rows = [r for r in read_metrics(ppo / "metrics.jsonl") if "reward/mean" in r]
    assert len(rows) == 12 and rows[0]["kl/ref_per_token"] == 0.0 and rows[-1]["kl/ref_per_token"] > 0
    cfg = (ppo / "config.yaml").read_text()
    assert str(rm / "final") in cfg and str(sft / "final") in cfg
