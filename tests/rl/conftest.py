"""One embedded Ray session for the RL tests, and a helper that runs a config in it.

Starting Ray costs ~5 s and each RL run starts 3-6 actors: sharing the session keeps the whole
RL suite within its few-minute budget. The session is private (``address="local"``, own temp
dir, token auth off) and shut down when the package's tests end, like the local target's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_config

LETTER_A = "strategies.ppo.rewards:letter_a_fraction"


@pytest.fixture(scope="package")
def ray_session():
    from cluster.local import start_private_ray, stop_private_ray

    temp = start_private_ray(8)  # the local target's runtime, with room for every role's actor
    yield
    stop_private_ray(temp)


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
