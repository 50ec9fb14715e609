"""The losses the trained roles minimise on one micro-batch of experience.

Each returns a *sum* over the items it covers plus that item count (``items``: tokens for PPO,
the critic and GRPO's token-level variants, sequences for grpo/gspo, sequences x max length for
dr_grpo), so a learner can divide by the item count of the whole minibatch across micro-batches
and ranks: accumulation and world size then leave the update unchanged, as in ``launcher.train.loop``.
The math itself is ``strategies.rl.math`` and ``strategies.rl.policy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from strategies.ppo.batch import RolloutBatch, policy_forward, value_forward
from strategies.rl.math import masked_mean, value_loss
from strategies.rl.policy import policy_objective


@dataclass
class Experience:
    """A rollout batch with what the update needs; optional fields depend on the method."""

    batch: RolloutBatch
    old_logprobs: Tensor                 # [B, R] policy before this update (trainer's forward)
    advantages: Tensor                   # [B, R] (ppo) or [B] (grpo)
    ref_logprobs: Tensor | None = None   # [B, R] (grpo with beta > 0)
    returns: Tensor | None = None        # [B, R] (ppo critic target)
    old_values: Tensor | None = None     # [B, R] (ppo critic, for the value clip)
    is_weights: Tensor | None = None     # [B, R] truncated importance weights trainer/engine (vllm)

    def rows(self, index: Tensor | Sequence[int]) -> Experience:
        index = torch.as_tensor(index, dtype=torch.long)
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.rows(index) if isinstance(value, RolloutBatch) else (
                None if value is None else value[index])
        return Experience(**out)

    def __len__(self) -> int:
        return len(self.batch)


@dataclass
class MicroLoss:
    loss_sum: Tensor                                      # differentiable
    items: float                                          # what the sum covers
    metric_sums: dict[str, Tensor] = field(default_factory=dict)


def _sums(metrics: dict[str, Tensor], items: float) -> dict[str, Tensor]:
    return {k: v.detach().double() * items for k, v in metrics.items()}


def loss_type(cfg_method: str, opts: Any) -> str:
    """PPO's surrogate is a token-level mean over the batch (bnpo's normalisation)."""
    return opts.loss_type if cfg_method == "grpo" else "bnpo"


def items(exp: Experience, kind: str, max_length: int) -> float:
    """What a micro-batch's loss sum is divided by, summed over the optimizer batch (see the
    table in ``strategies.rl.policy``): known before the forward pass, so every rank can agree on
    the global normaliser first."""
    if kind in ("grpo", "gspo"):
        return float(len(exp))
    if kind == "dr_grpo":
        return float(len(exp) * max_length)
    return float(exp.batch.response_mask.sum())


def policy_loss_of(model: nn.Module, exp: Experience, opts: Any, temperature: float, kind: str,
                   ce: dict | None = None) -> MicroLoss:
    """The policy's objective (``kind`` = loss type), minus the entropy bonus, with the
    importance weights of a vLLM rollout when there are any."""
    mask = exp.batch.response_mask
    logprobs, entropy = policy_forward(model, exp.batch, temperature, with_entropy=True, ce=ce)
    beta = getattr(opts, "beta", 0.0)
    high = getattr(opts, "clip_eps_high", None) or opts.clip_eps
    out = policy_objective(logprobs, exp.old_logprobs, exp.advantages, mask, loss_type=kind,
                           clip_low=opts.clip_eps, clip_high=high,
                           ref_logprobs=exp.ref_logprobs if beta > 0 else None, beta=beta,
                           is_weights=exp.is_weights, max_completion_length=opts.rollout.max_new_tokens,
                           kl_ratio=getattr(opts, "kl_ratio", False))
    n = items(exp, kind, opts.rollout.max_new_tokens)
    loss_sum = out["loss_sum"]
    if kind in ("grpo", "gspo"):
        ent = masked_mean(entropy, mask, dim=-1).mean()
    else:
        ent = masked_mean(entropy, mask)
    if opts.entropy_coef:
        loss_sum = loss_sum - opts.entropy_coef * ent * n
    with torch.no_grad():
        approx_kl = 0.5 * masked_mean((logprobs - exp.old_logprobs) ** 2, mask)
    metrics = {"policy/loss": out["loss_sum"] / out["normalizer"].clamp(min=1),
               "policy/clip_fraction": out["clip_low"] + out["clip_high"],
               "policy/clip_high_fraction": out["clip_high"],
               "policy/approx_kl": approx_kl, "policy/entropy": ent}
    if beta > 0:
        metrics["kl/ref_in_loss"] = out["kl"]
    return MicroLoss(loss_sum, n, _sums(metrics, n))


def critic_loss(critic: nn.Module, exp: Experience, opts: Any) -> MicroLoss:
    """Clipped value loss against the GAE returns (token-level mean)."""
    mask = exp.batch.response_mask
    values = value_forward(critic, exp.batch)
    out = value_loss(values, exp.old_values, exp.returns, mask, opts.value_clip)
    items = float(mask.sum())
    metrics = {"critic/value_loss": out["loss"], "critic/clip_fraction": out["clip_fraction"],
               "critic/value_mean": masked_mean(values.detach(), mask)}
    return MicroLoss(out["loss"] * items, items, _sums(metrics, items))
