"""Memory and GPUs of online RL's other roles, for the planner (``ppo`` and ``grpo`` register
this module as their ``role_plan``; ``launcher.plan.roles`` describes the protocol).

The policy is planned like any trained model. The others follow from the method's section:

- critic (PPO): trained like the policy (same sharding, its own ``critic.num_workers`` ranks),
  with a one-output head instead of the LM head;
- reference and reward model: frozen, weights in the compute dtype, sharded like ZeRO-3 when
  the backend shards parameters (``frozen_role_memory``); a rule reward costs no GPU;
- rollout worker: weights in the compute dtype split over its GPUs (tensor/pipeline parallel)
  plus the KV cache of its share of one step's sequences (prompt + response tokens); a vLLM
  engine takes ``gpu_memory_utilization`` of its GPUs whatever it needs, which the plan notes.

The reward model and critic are assumed to share the policy's architecture (the usual case
in RLHF; a different reward architecture is noted, not sized). Pure arithmetic: no torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from launcher.plan import memory_model as mm


def _world_layout(base: mm.Layout, world: int) -> mm.Layout:
    return replace(base, world=world, ranks_per_node=min(world, base.ranks_per_node))


def role_memory(cfg: Any, shape: mm.ModelShape, work: mm.Workload, lay: mm.Layout
                ) -> dict[str, tuple[mm.RoleMemory, float]]:
    """role -> (its memory per actor, GPUs it uses in total)."""
    opts = cfg.method_options()
    dtype_bytes = mm.DTYPE_BYTES[work.dtype]
    roles: dict[str, tuple[mm.RoleMemory, float]] = {}
    frozen = replace(shape, trainable=0)
    critic = getattr(opts, "critic", None)
    if critic is not None:
        critic_shape = replace(shape, vocab=1)  # value head: one output per token
        mem = mm.policy_memory(critic_shape, work, _world_layout(lay, critic.num_workers))
        roles["critic"] = (mem, critic.num_workers * critic.gpus_per_worker)
    if getattr(opts, "beta", None) != 0:  # grpo with beta 0 starts no reference
        ref = opts.reference
        roles["reference"] = (mm.frozen_role_memory(frozen, work, _world_layout(lay, ref.num_workers)),
                              ref.num_workers * ref.gpus_per_worker)
    reward = opts.reward
    if reward.model is not None:
        mem = mm.frozen_role_memory(replace(frozen, vocab=1), work, _world_layout(lay, reward.num_workers))
        mem.notes.append("sized with the policy's architecture")
        roles["reward"] = (mem, reward.num_workers * reward.gpus_per_worker)
    rollout = opts.rollout
    rows_per_worker = math.ceil(opts.rollout_rows() / rollout.num_workers)
    tokens = rows_per_worker * (cfg.data.max_length + rollout.max_new_tokens)
    split = max(1, math.ceil(rollout.gpus_per_worker))
    mem = mm.rollout_memory(shape, tokens, dtype_bytes, tensor_parallel=split)
    if split > 1:
        mem.notes.append(f"weights split over {split} GPUs per worker")
    if rollout.engine == "vllm":
        mem.notes.append(f"vLLM reserves gpu_memory_utilization={rollout.gpu_memory_utilization} of each "
                         "GPU it uses (weights + KV cache); the cache above is one step's need")
    roles["rollout"] = (mem, rollout.num_workers * rollout.gpus_per_worker)
    return roles


def role_gpus(cfg: Any) -> float:
    """GPUs the run asks for: the trainer's plus every other role's (placement: separate;
    colocated roles share the trainer's)."""
    opts = cfg.method_options()
    own = cfg.resources.num_workers * cfg.resources.gpus_per_worker
    if colocated(cfg):
        return own
    groups = [opts.rollout, opts.reference]
    if getattr(opts, "critic", None) is not None:
        groups.append(opts.critic)
    if opts.reward.model is not None:
        groups.append(opts.reward)
    if getattr(opts, "beta", None) == 0:
        groups.remove(opts.reference)
    return own + sum(g.num_workers * g.gpus_per_worker for g in groups)


def colocated(cfg: Any) -> bool:
    """placement: colocate: one GPU holds an actor of every role (else each role has its own)."""
    return cfg.method_options().placement == "colocate"
