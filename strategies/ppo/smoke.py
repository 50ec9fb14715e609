"""``ftl run --smoke`` for PPO/GRPO: every role runs here, on CPU, as small as it goes.

A reward model this machine cannot read becomes the builtin rule reward (the critic then
starts from the policy); every role gets one CPU actor except the rollout workers, which stay
two so the weight sync to several separate actors is exercised; the embedded Ray is told it
has 8 CPUs (oversubscribed on purpose: the actors take turns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RULE = "strategies.ppo.rewards:letter_a_fraction"


def adjust(data: dict[str, Any], changes: list[str]) -> None:
    method = data["method"]
    opts = data[method]
    reward = opts.get("reward", {})
    model = reward.get("model")
    if model and not Path(model).expanduser().exists():
        opts["reward"] = {**reward, "model": None, "function": RULE}
        changes.append(f"{method}.reward.model: {model} -> the rule {RULE}")
        if "critic" in opts:
            opts["critic"] = {**opts["critic"], "init": "policy"}
            changes.append(f"{method}.critic.init -> policy (no reward model here)")
    one = {"num_workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "threads_per_worker": 1}
    for role in ("reward", "reference", "critic"):
        if role in opts:
            opts[role] = {**opts[role], **one}
    rows = 4 if method == "grpo" else 8
    rollout = opts.get("rollout", {})
    opts["rollout"] = {**rollout, **one, "num_workers": 2, "batch_size": rows,
                       "max_new_tokens": 8, "generation_batch_size": None}
    if rollout.get("engine", "auto") == "auto":
        # vLLM's CPU attention has no kernel for the smoke model's 16-wide heads; auto means
        # "whatever runs", so the smoke run samples with HF generate (engine: vllm stays vllm).
        opts["rollout"]["engine"] = "hf"
        changes.append(f"{method}.rollout.engine: auto -> hf (the smoke model's heads are too narrow for "
                       "vLLM's CPU kernels)")
    opts.update({"ppo_epochs": 1, "minibatches": 1})
    data["cluster"] = {"target": "local", "local": {"num_cpus": 8}}
    changes.append(f"{method}: every role one CPU actor (2 rollout workers), {rows} prompts per step, "
                   "8 new tokens; the local Ray is oversubscribed (8 CPUs)")
