"""The GRPO family's policy objective, its advantages and DAPO's batch shaping (pure torch).

One function, ``policy_objective``, covers the variants people pick today; they differ in three
choices, mirrored from TRL 1.16's ``GRPOTrainer._compute_loss`` (``tests/unit/test_grpo_family.py``
checks loss and gradients against it):

============  ========================  ===================================  ==========================
loss_type     ratio                     clip                                 normaliser (of the sum)
============  ========================  ===================================  ==========================
grpo          per token                 [1 - eps_low, 1 + eps_high]          per-sequence token mean,
                                                                             then number of sequences
bnpo          per token                 same                                 tokens in the batch
dr_grpo       per token                 same                                 sequences x max length
dapo          per token                 same (clip-higher: eps_high > low)   tokens in the global batch
gspo          per sequence: exp(mean    same, at sequence level              as grpo
              of the token log-ratios)
============  ========================  ===================================  ==========================

The objective returns a *sum* and its *normaliser* instead of a mean, so a learner that
accumulates micro-batches (and ranks) divides the summed loss by the normaliser of the whole
optimizer batch: accumulation and world size then leave the update unchanged, which is what
"global-batch token normalisation" (DAPO) means. Per-token terms follow ``strategies.rl.math``'s
conventions ([B, T] over response tokens, ``mask`` 1 on real tokens, masked positions removed
with ``torch.where``).

``is_weights`` is the truncated importance-sampling correction of the train/inference mismatch
(``truncated_is_weights``): the inference engine (vLLM) samples with slightly different numerics
than the trainer computes, so each token's loss is weighted by min(p_trainer / p_engine, cap)
(TRL's ``vllm_importance_sampling_correction``, veRL's rollout correction).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from strategies.rl.math import _as_bool, _zero_outside, group_advantages, kl_per_token, masked_mean

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "gspo"]
ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def policy_objective(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                     loss_type: LossType, clip_low: float, clip_high: float,
                     ref_logprobs: Tensor | None = None, beta: float = 0.0, is_weights: Tensor | None = None,
                     max_completion_length: int | None = None, kl_ratio: bool = False) -> dict[str, Tensor]:
    """Clipped surrogate (plus ``beta`` x k3 KL to the reference) of one micro-batch.

    Returns ``loss_sum`` (differentiable), ``normalizer`` (a float tensor: what the sum is divided
    by for this batch alone, see the table above), ``per_token`` (masked, for tests) and detached
    metrics: ``kl`` (mean k3 over tokens), ``clip_low``/``clip_high`` (fractions of tokens where the
    lower/upper clip removes the gradient), ``ratio_mean``. ``kl_ratio``: multiply the KL term by
    the (differentiable) policy ratio, which makes its gradient the unbiased reverse-KL gradient
    off-policy (DeepSeek-V3.2; TRL's ``use_bias_correction_kl``).
    """
    m = _as_bool(mask)
    mf = m.to(logprobs.dtype)
    lengths = mf.sum(-1).clamp(min=1)
    log_ratio = _zero_outside(logprobs - old_logprobs, m)
    if loss_type == "gspo":
        log_ratio = (log_ratio.sum(-1) / lengths).unsqueeze(-1)  # one ratio per sequence, [B, 1]
    ratio = torch.exp(log_ratio)
    adv = advantages.to(ratio.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv).expand_as(logprobs)
    if is_weights is not None:
        per_token = per_token * is_weights
    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("policy_objective needs ref_logprobs when beta != 0")
        kl = kl_per_token(logprobs, ref_logprobs, "k3")
        per_token = per_token + beta * (kl * ratio if kl_ratio else kl)
    per_token = _zero_outside(per_token, m)
    rows = logprobs.shape[0]
    if loss_type in ("grpo", "gspo"):
        loss_sum, normalizer = (per_token.sum(-1) / lengths).sum(), float(rows)
    elif loss_type in ("bnpo", "dapo"):
        loss_sum, normalizer = per_token.sum(), float(mf.sum().clamp(min=1))
    elif loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("dr_grpo needs max_completion_length (the constant normaliser)")
        loss_sum, normalizer = per_token.sum(), float(rows * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    with torch.no_grad():
        full = ratio.expand_as(logprobs)
        a = adv.expand_as(logprobs)
        metrics = {
            "kl": masked_mean(kl, m) if kl is not None else torch.zeros((), dtype=logprobs.dtype),
            "clip_low": masked_mean(((full < 1.0 - clip_low) & (a < 0)).to(logprobs.dtype), m),
            "clip_high": masked_mean(((full > 1.0 + clip_high) & (a > 0)).to(logprobs.dtype), m),
            "ratio_mean": masked_mean(full, m),
        }
    return {"loss_sum": loss_sum, "normalizer": torch.tensor(normalizer), "per_token": per_token, **metrics}


# ----------------------------------------------------------------------------- advantages


@torch.no_grad()
def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): each reward minus the mean of the OTHER G-1 rewards of its
    prompt's group (prompt-major layout, as ``group_advantages``)."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    grouped = scores.float().view(-1, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


@torch.no_grad()
def reinforce_pp_advantages(scores: Tensor, group_size: int | None = None, eps: float = 1e-8) -> Tensor:
    """REINFORCE++ (Hu 2025): normalised over the whole batch, ``(r - mean) / std``. With
    ``group_size`` (the "baseline" variant) each prompt's group mean is removed first and the
    result divided by the batch's std of the centred rewards."""
    r = scores.float()
    if group_size is not None:
        grouped = r.view(-1, group_size)
        r = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    centred = r - r.mean()
    std = r.std(unbiased=True) if r.numel() > 1 else torch.zeros(())
    return centred / (std + eps)


@torch.no_grad()
def advantages_for(kind: str, scores: Tensor, group_size: int, scale: bool) -> Tensor:
    """``grpo.advantage``: group | rloo | reinforce++ | reinforce++_baseline."""
    if kind == "group":
        return group_advantages(scores, group_size, scale=scale)
    if kind == "rloo":
        return rloo_advantages(scores, group_size)
    if kind == "reinforce++":
        return reinforce_pp_advantages(scores)
    if kind == "reinforce++_baseline":
        return reinforce_pp_advantages(scores, group_size)
    raise ValueError(f"unknown advantage {kind!r}")


# ----------------------------------------------------------------------------- DAPO's batch shaping


@torch.no_grad()
def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to ``max_length - buffer``
    tokens, then linearly down to ``-factor`` at ``max_length``, ``-factor`` beyond."""
    start = max_length - buffer
    over = (lengths.float() - start).clamp(min=0)
    return -factor * (over / buffer).clamp(max=1.0)


@torch.no_grad()
def groups_with_signal(scores: Tensor, group_size: int) -> Tensor:
    """DAPO's dynamic sampling filter: True for each prompt group whose rewards are not all equal
    (a group of equal rewards has zero advantage everywhere: no gradient, only dilution)."""
    grouped = scores.float().view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > 0


# ----------------------------------------------------------------------------- train/inference mismatch


@torch.no_grad()
def truncated_is_weights(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, *,
                         mode: ISMode = "token_truncate", cap: float = 2.0) -> Tensor:
    """Importance weights ``p_trainer / p_engine`` of the sampled tokens (per token, or per
    sequence from the summed log-ratio), truncated at ``cap`` or, with ``*_mask``, zero where they
    exceed it (TRL's four ``vllm_importance_sampling_mode``s). ``[B, T]``, 0 on masked-out tokens."""
    m = _as_bool(mask)
    diff = _zero_outside(old_logprobs - engine_logprobs, m)
    diff = torch.nan_to_num(diff, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        ratio = ratio.clamp(max=cap)
    elif mode.endswith("mask"):
        ratio = torch.where(ratio > cap, torch.zeros_like(ratio), ratio)
    else:
        raise ValueError(f"unknown importance-sampling mode {mode!r}")
    return _zero_outside(ratio.expand_as(old_logprobs), m)


@torch.no_grad()
def mismatch_metrics(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the engine's sampling log-probs are from the trainer's: mean |difference| and the
    k3 estimate of KL(engine || trainer) over the sampled tokens."""
    m = _as_bool(mask)
    return {"rollout/logprob_diff": float(masked_mean((old_logprobs - engine_logprobs).abs(), m)),
            "rollout/mismatch_kl": float(masked_mean(kl_per_token(engine_logprobs, old_logprobs, "k3"), m))}
