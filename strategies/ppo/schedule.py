"""Batch arithmetic of an RL run, and the per-role configs the learners are built from.

One RL step generates ``rollout.batch_size x samples_per_prompt`` sequences, then makes
``ppo_epochs x minibatches`` optimizer steps on them. The sharding backends know only ftl's
supervised vocabulary (``train.micro_batch_size``, ``global_batch_size``, ``max_steps``), so each
learner gets a config copy that says the same thing in those words: a DeepSpeed engine then
accumulates exactly the micro-batches of one minibatch, and the LR schedule counts optimizer steps.
Problems are ``UserError``s naming the fields to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.core.errors import Problem, UserError


@dataclass(frozen=True)
class UpdateSchedule:
    rows: int             # sequences per RL step
    per_rank: int         # sequences of one minibatch on one rank
    micro: int            # sequences per forward
    accum: int            # micro-batches per optimizer step
    steps_per_rl_step: int  # optimizer steps (ppo_epochs x minibatches)


def update_schedule(cfg: Any, world_size: int) -> UpdateSchedule:
    """How a step's sequences split into minibatches, ranks and micro-batches (exact division)."""
    opts = cfg.method_options()
    rows = opts.rollout_rows()
    minibatch = rows // opts.minibatches
    if minibatch % world_size:
        raise UserError(Problem(f"{cfg.method}.minibatches",
                                f"a minibatch of {minibatch} sequences ({rows} per step / {opts.minibatches} "
                                f"minibatches) does not split over {world_size} trainer ranks",
                                "make rollout.batch_size x samples per prompt / minibatches a multiple of "
                                "resources.num_workers"))
    per_rank = minibatch // world_size
    micro = max(d for d in range(1, min(per_rank, cfg.train.micro_batch_size) + 1) if per_rank % d == 0)
    return UpdateSchedule(rows, per_rank, micro, per_rank // micro, opts.ppo_epochs * opts.minibatches)


def check_lengths(cfg: Any) -> None:
    opts = cfg.method_options()
    if cfg.data.max_length <= opts.rollout.max_new_tokens:
        raise UserError(Problem("data.max_length", f"{cfg.data.max_length} leaves no room for a prompt "
                                f"before {opts.rollout.max_new_tokens} new tokens",
                                f"raise data.max_length above {cfg.method}.rollout.max_new_tokens"))


def learner_config(cfg: Any, role: str, world_size: int, model_path: str | None = None) -> Any:
    """The run config as one learner's backend must read it (policy or critic)."""
    sched = update_schedule(cfg, world_size)
    opts = cfg.method_options()
    train = {"micro_batch_size": sched.micro,
             "global_batch_size": sched.micro * sched.accum * world_size,
             "max_steps": cfg.train.max_steps * sched.steps_per_rl_step,
             "warmup_steps": cfg.train.warmup_steps * sched.steps_per_rl_step}
    resources = {"num_workers": world_size}
    update: dict[str, Any] = {}
    if role == "critic":
        critic = opts.critic
        train["lr"] = critic.lr or cfg.train.lr
        resources.update(cpus_per_worker=critic.cpus_per_worker, gpus_per_worker=critic.gpus_per_worker,
                         threads_per_worker=critic.threads())
        update["model"] = cfg.model.model_copy(update={"path": model_path or cfg.model.path,
                                                       "tokenizer": cfg.model.tokenizer or cfg.model.path})
    update["train"] = cfg.train.model_copy(update=train)
    update["resources"] = cfg.resources.model_copy(update=resources)
    return cfg.model_copy(update=update)
