"""Config sections shared by the ``ppo`` and ``grpo`` methods (pydantic only: no torch, no Ray).

``strategies.catalog`` registers ``PPOOptions`` and ``GRPOOptions`` built from these parts, so the
schema lists them and ``ftl validate`` checks them without importing the heavy roles.
The policy itself is described by the ordinary sections: ``model``/``peft`` (what is trained),
``train`` (optimizer: lr, schedule, ``max_steps`` = RL iterations, ``micro_batch_size`` = rows per
forward), ``sharding`` (any backend) and ``resources`` (the policy trainer group).
"""

from __future__ import annotations

import importlib
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from launcher.config.schema import Section
from launcher.errors import HintedValueError


class RoleResources(Section):
    """Where one role runs: how many actors and what each asks Ray for."""

    num_workers: int = Field(1, gt=0, description="Actors in this role (batches are split between them).")
    cpus_per_worker: float = Field(1, gt=0, description="Ray CPUs per actor.")
    gpus_per_worker: float = Field(0, ge=0, description="Ray GPUs per actor (fractions share a GPU).")
    threads_per_worker: int | None = Field(
        None, gt=0, description="torch intra-op threads per actor; default: cpus_per_worker.")

    def threads(self) -> int:
        return self.threads_per_worker or max(1, int(self.cpus_per_worker))


class RolloutOptions(RoleResources):
    """Rollout workers: separate actors that sample responses with HF ``generate``."""

    num_workers: int = Field(2, gt=0, description="Rollout actors; each holds a copy of the policy and "
                             "generates its share of every batch.")
    batch_size: int = Field(16, gt=0, description="Prompts per RL step (grpo: each gets "
                            "grpo.num_generations responses).")
    max_new_tokens: int = Field(32, gt=0, description="Response length limit; longer responses are cut "
                                "and scored as they are.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer scales logits by "
                               "it too, so log-probs are those of the sampling distribution.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    generation_batch_size: int | None = Field(
        None, gt=0, description="Rows per generate call on a worker; default: its whole share.")


def _check_import(spec: str) -> str:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise HintedValueError(f"{spec!r} is not 'module:function'",
                               "e.g. strategies.ppo.rewards:letter_a_fraction")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise HintedValueError(f"cannot import {spec!r}: {exc}",
                               "the module must be importable where the run starts (PYTHONPATH)") from None
    if not callable(obj):
        raise HintedValueError(f"{spec!r} is not callable")
    return spec


class RewardRole(RoleResources):
    """Scores each (prompt, response): a trained reward model, or a Python rule."""

    model: str | None = Field(None, description="Reward model folder: the final/ folder of a `method: "
                              "reward` run (a sequence classifier with one output; adapter-only folders "
                              "are merged into their base).")
    function: str | None = Field(None, description="Rule reward 'module:function', called as "
                                 "function(prompts: list[str], completions: list[str]) -> list[float]; "
                                 "runs in the controller (no actor).")
    batch_size: int = Field(32, gt=0, description="Rows per reward-model forward.")

    @field_validator("function")
    @classmethod
    def _importable(cls, v: str | None) -> str | None:
        return None if v is None else _check_import(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> RewardRole:
        if (self.model is None) == (self.function is None):
            raise HintedValueError("set exactly one of reward.model and reward.function",
                                   "model: <reward run>/final, or function: strategies.ppo.rewards:"
                                   "letter_a_fraction")
        return self


class CriticRole(RoleResources):
    """The value model: a per-token value head (token classifier with one output), trained."""

    init: Literal["auto", "reward", "policy"] = Field(
        "auto", description="Initial weights: reward = the reward model (its head becomes the value "
        "head), policy = model.path with a new head; auto = reward when reward.model is set.")
    lr: float | None = Field(None, gt=0, description="Critic learning rate; default: train.lr.")


class OnlineRLOptions(Section):
    """What ``ppo`` and ``grpo`` share: rollout, reward, reference, placement, update schedule."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    rollout: RolloutOptions = Field(default_factory=RolloutOptions)
    reward: RewardRole = Field(default_factory=RewardRole, description="Reward model or rule.")
    reference: RoleResources = Field(default_factory=RoleResources,
                                     description="Frozen copy of model.path for the KL term.")
    placement: Literal["colocate", "separate"] = Field(
        "separate", description="separate: one Ray placement group per role, each with its own "
        "resources. colocate: one group of resources.num_workers bundles (the trainer's "
        "resources) that every role shares, each actor taking a fraction of its bundle.")
    async_: bool = Field(False, alias="async", description="One-step off-policy: rollout workers "
                         "generate batch k+1 (with the weights of step k-1) while the trainer trains "
                         "on batch k. With --set write <method>.async_ (async is a Python keyword).")
    ppo_epochs: int = Field(1, gt=0, description="Passes over each rollout batch.")
    minibatches: int = Field(1, gt=0, description="Optimizer steps per pass (the batch is split).")
    clip_eps: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight (0: none).")

    @model_validator(mode="before")
    @classmethod
    def _set_spelling_wins(cls, data: object) -> object:
        """``--set ppo.async_=...`` (a Python name: ``async`` is a keyword) overrides the file's
        ``async:`` rather than clashing with it."""
        if isinstance(data, dict) and "async_" in data:
            data = {k: v for k, v in data.items() if k != "async"}
            data["async"] = data.pop("async_")
        return data

    def rollout_rows(self) -> int:
        """Sequences per RL step."""
        return self.rollout.batch_size * self.samples_per_prompt()

    def samples_per_prompt(self) -> int:
        return 1

    @model_validator(mode="after")
    def _minibatches_divide(self) -> OnlineRLOptions:
        rows = self.rollout_rows()
        if rows % self.minibatches:
            raise HintedValueError(f"minibatches ({self.minibatches}) must divide the {rows} sequences of "
                                   "one step (rollout.batch_size x samples per prompt)",
                                   f"use a divisor of {rows}")
        return self
