"""Online RL's other roles in the plan: sized by the method's ``role_plan`` hook
(``strategies.ppo.planning``), which the planner reaches through the strategy registry."""

from __future__ import annotations

from pathlib import Path

import yaml

from launcher.config.load import load_config, validate_config
from launcher.plan.planner import make_plan
from launcher.plan.roles import has_roles, rl_gpus
from strategies import STRATEGIES

PPO = Path(__file__).resolve().parents[2] / "configs" / "examples" / "rlhf" / "ppo.yaml"
GPUS = ("resources.gpus_per_worker=1", "ppo.rollout.gpus_per_worker=1", "ppo.critic.gpus_per_worker=1",
        "ppo.reference.gpus_per_worker=1", "ppo.reward.gpus_per_worker=1")


def test_rl_methods_name_their_role_planner_and_the_others_have_none():
    assert {name for name, spec in STRATEGIES.items() if spec.role_plan} == {"ppo", "grpo"}
    assert STRATEGIES.get("ppo").role_plan == "strategies.ppo.planning"


def test_a_ppo_plan_sizes_every_role_on_its_own_gpus():
    cfg = load_config(PPO, GPUS)
    assert has_roles(cfg)
    memory = make_plan(cfg)["memory"]
    assert set(memory["roles"]) == {"policy", "critic", "reference", "reward", "rollout"}
    # separate placement: policy 1 + critic 1 + reference 1 + reward 1 + 2 rollout workers
    assert memory["placement"] == "separate" and memory["gpus_total"] == rl_gpus(cfg) == 6
    assert memory["gpus_per_role"] == {"policy": 1, "critic": 1, "reference": 1, "reward": 1, "rollout": 2}
    # the fullest role decides a GPU's need when each role has its own GPUs
    fullest = max(role["total_gpu_bytes"] for role in memory["roles"].values())
    assert memory["per_gpu"]["roles_bytes"] == fullest


def test_colocated_roles_share_the_trainers_gpus_and_add_up_on_them():
    cfg = load_config(PPO, (*GPUS, "ppo.placement=colocate"))
    memory = make_plan(cfg)["memory"]
    assert memory["placement"] == "colocate" and memory["gpus_total"] == 1
    assert memory["per_gpu"]["roles_bytes"] == sum(r["total_gpu_bytes"] for r in memory["roles"].values())


def test_grpo_without_kl_starts_no_reference():
    data = yaml.safe_load(PPO.read_text())
    del data["ppo"]
    data.update(method="grpo", grpo={"reward": {"function": "strategies.rl.verifiers:numeric_answer"},
                                     "beta": 0})
    cfg = validate_config(data)
    memory = make_plan(cfg)["memory"]
    assert set(memory["roles"]) == {"policy", "rollout"}
