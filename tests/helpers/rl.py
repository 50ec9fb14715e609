"""RL runs on the letter-'a' task in a shared Ray session (tests/rl/conftest.py's
``ray_session``), and the check that a run's reward rose."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from launcher.metrics.jsonl import read_metrics
from tests.helpers.ftl import write_config

LETTER_A = "strategies.ppo.rewards:letter_a_fraction"
RISE = 0.3  # on a [0, 1] reward


def letters_config(method: str, name: str, **section) -> dict:
    """PPO/GRPO on builtin:prompts-letters with the letter-'a' rule: a random tiny Llama starts
    near 0.04 and reaches 0.4-0.9 within 15-20 steps (2 rollout workers, 1 trainer)."""
    opts = {"rollout": {"num_workers": 2, "batch_size": 32 if method == "ppo" else 8, "max_new_tokens": 12,
                        "engine": "hf"},  # tests/rl/test_vllm_rollouts.py covers vLLM
            "reward": {"function": LETTER_A}, "ppo_epochs": 2, "minibatches": 2}
    if method == "ppo":
        opts.update(kl_coef=0.01, critic={"lr": 3e-3})
    else:
        opts.update(num_generations=4, beta=0.0)
    opts["rollout"].update(section.pop("rollout", {}))
    opts.update(section)
    return {
        "name": name, "method": method, "model": {"path": "builtin:tiny-llama"},
        "data": {"train": {"path": "builtin:prompts-letters", "num_rows": 256}, "max_length": 64},
        "train": {"max_steps": 16, "micro_batch_size": 16, "lr": 6e-3 if method == "ppo" else 4e-3,
                  "schedule": "constant", "seed": 1},
        method: opts,
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "cluster": {"target": "local", "local": {"num_cpus": 8}},
        "checkpoint": {"dir": "runs"},
        "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}, "report": False},
    }


def run_in_session(workdir: Path, cfg: dict | Path, overrides: tuple[str, ...] = ()) -> Path:
    """``ftl run`` minus the process and the Ray start: validate, preflight, plan, run the driver."""
    from launcher.run.driver import run_trainer
    from launcher.run.submit import prepare_run

    path = cfg if isinstance(cfg, Path) else write_config(workdir, cfg, f"{cfg['name']}.yaml")
    folder, _ = prepare_run(str(path), None, overrides, runs_dir=str(workdir / "runs"))
    run_trainer(folder)
    return folder.path


def rewards(run: Path) -> list[float]:
    return [m["reward/mean"] for m in read_metrics(run / "metrics.jsonl") if "reward/mean" in m]


def assert_reward_rose(run: Path) -> tuple[float, float]:
    curve = rewards(run)
    summary = json.loads((run / "summary.json").read_text())
    initial, final = summary["initial"]["reward/mean"], statistics.mean(curve[-3:])
    assert initial == curve[0] and summary["final"]["reward/mean"] == curve[-1]
    assert final >= initial + RISE, f"reward {initial:.3f} -> {final:.3f}: {[round(r, 3) for r in curve]}"
    return initial, final
