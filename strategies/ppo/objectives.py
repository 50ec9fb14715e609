"""The losses the trained roles minimise on one micro-batch of experience.

Each returns a *sum* over the items it covers (tokens for PPO and the critic, sequences for
GRPO, whose loss averages per sequence first) plus that item count, so a learner can divide by
the item count of the whole minibatch across micro-batches and ranks: accumulation and world
size then leave the update unchanged, as in ``launcher.loop``. The means themselves come from
``strategies.rl.math``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from strategies.ppo.batch import RolloutBatch, policy_forward, value_forward
from strategies.rl.math import grpo_loss, masked_mean, policy_loss, value_loss


@dataclass
class Experience:
    """A rollout batch with what the update needs; optional fields depend on the method."""

    batch: RolloutBatch
    old_logprobs: Tensor                 # [B, R] policy before this update (trainer's forward)
    advantages: Tensor                   # [B, R] (ppo) or [B] (grpo)
    ref_logprobs: Tensor | None = None   # [B, R] (grpo with beta > 0)
    returns: Tensor | None = None        # [B, R] (ppo critic target)
    old_values: Tensor | None = None     # [B, R] (ppo critic, for the value clip)

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


def ppo_policy_loss(model: nn.Module, exp: Experience, opts: Any, temperature: float) -> MicroLoss:
    """Clipped surrogate on per-token advantages, minus the entropy bonus (token-level means)."""
    mask = exp.batch.response_mask
    logprobs, entropy = policy_forward(model, exp.batch, temperature, with_entropy=True)
    out = policy_loss(logprobs, exp.old_logprobs, exp.advantages, mask, opts.clip_eps)
    ent = masked_mean(entropy, mask)
    loss = out["loss"] - opts.entropy_coef * ent if opts.entropy_coef else out["loss"]
    items = float(mask.sum())
    metrics = {"policy/loss": out["loss"], "policy/clip_fraction": out["clip_fraction"],
               "policy/approx_kl": out["approx_kl"], "policy/entropy": ent}
    return MicroLoss(loss * items, items, _sums(metrics, items))


def grpo_policy_loss(model: nn.Module, exp: Experience, opts: Any, temperature: float) -> MicroLoss:
    """GRPO's loss (per-sequence means, then the mean over sequences), minus the entropy bonus."""
    mask = exp.batch.response_mask
    logprobs, entropy = policy_forward(model, exp.batch, temperature, with_entropy=True)
    ref = exp.ref_logprobs if opts.beta > 0 else None
    out = grpo_loss(logprobs, exp.old_logprobs, ref, exp.advantages, mask, opts.clip_eps, opts.beta)
    ent = masked_mean(entropy, mask, dim=-1).mean()
    loss = out["loss"] - opts.entropy_coef * ent if opts.entropy_coef else out["loss"]
    with torch.no_grad():
        approx_kl = 0.5 * masked_mean((logprobs - exp.old_logprobs) ** 2, mask)
    items = float(len(exp))
    metrics = {"policy/loss": out["loss"], "policy/clip_fraction": out["clip_fraction"],
               "policy/approx_kl": approx_kl, "policy/entropy": ent, "kl/ref_in_loss": out["kl"]}
    return MicroLoss(loss * items, items, _sums(metrics, items))


def critic_loss(critic: nn.Module, exp: Experience, opts: Any) -> MicroLoss:
    """Clipped value loss against the GAE returns (token-level mean)."""
    mask = exp.batch.response_mask
    values = value_forward(critic, exp.batch)
    out = value_loss(values, exp.old_values, exp.returns, mask, opts.value_clip)
    items = float(mask.sum())
    metrics = {"critic/value_loss": out["loss"], "critic/clip_fraction": out["clip_fraction"],
               "critic/value_mean": masked_mean(values.detach(), mask)}
    return MicroLoss(out["loss"] * items, items, _sums(metrics, items))
