"""Pure PPO / GRPO math on response tokens, shared by the ``ppo`` and ``grpo`` strategies.

Conventions used throughout (so that every caller agrees on them):

* Tensors are ``[batch, T]`` over *response* tokens only (the prompt is cut off before these calls),
  unless a docstring says otherwise.
* ``mask`` is 1 for real response tokens up to and including EOS and 0 for the right padding after
  it. It may be bool, int or float; only ``mask != 0`` matters. Rows are expected to be a
  contiguous run of ones followed by zeros (right padding), which is what generation produces.
* Masked-out positions never influence a result: they are removed with ``torch.where`` rather
  than multiplied by 0, so padding that holds garbage (even NaN or inf, e.g. ``exp`` of a padded
  log-ratio) cannot leak into a loss or a metric. Outputs are 0 on masked-out positions.
* Quantities that are *targets* for the update (rewards, advantages, returns) are computed under
  ``torch.no_grad()``: they must never carry gradient back into the critic or the policy.
* Metrics (clip fractions, approximate KLs) are returned detached; losses keep their graph.

No other project module is imported here, so the math can be tested and reused in isolation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` is set, 0 elsewhere (NaN/inf in padding do not survive, unlike ``x * mask``)."""
    return torch.where(_as_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set.

    With ``dim=None`` this is the token-level mean over the whole batch (every real token weighs the
    same, so long responses weigh more than short ones); with ``dim=-1`` it is one mean per
    sequence. A slice with no masked entry gives 0 rather than NaN, so an empty row cannot poison a
    batch-level average built on top of it.
    """
    m = _as_bool(mask)
    total = _zero_outside(x, m)
    count = m.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum().clamp(min=1)
    return total.sum(dim) / count.sum(dim).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit variance over its masked entries (whole batch).

    Used on PPO advantages. Statistics are over *all* masked tokens of the batch, with the
    unbiased variance (``n - 1`` denominator) as TRL's ``masked_whiten`` / OpenRLHF do. With
    ``shift_mean=False`` only the scale changes and the original mean is kept (TRL's meaning), which
    is what one wants for rewards whose sign matters. Masked-out entries are returned as 0.

    Raises ``ValueError`` when fewer than 2 entries are masked: the unbiased variance is undefined.
    """
    m = _as_bool(mask)
    n = int(m.sum().item())
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked entries to estimate a variance, got {n}")
    mean = masked_mean(x, m)
    centered = _zero_outside(x - mean, m)
    var = (centered**2).sum() / (n - 1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_outside(whitened, m)


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probabilities of tokens sampled from pi.

    Schulman's estimators ("Approximating KL divergence", 2020), with ``d = logp - ref``:

    * ``k1 = d``: unbiased but can be negative per token; the usual reward penalty in PPO-RLHF.
    * ``k2 = d**2 / 2``: biased, low variance, always >= 0.
    * ``k3 = exp(-d) - (-d) - 1``: unbiased and always >= 0; the GRPO loss term.

    Not masked: callers mask (``shaped_rewards``, ``grpo_loss``).
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        neg = -log_ratio  # ref - logp
        return torch.exp(neg) - neg - 1
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of 'k1', 'k2', 'k3'")


@torch.no_grad()
def shaped_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    kind: KLKind = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: a KL penalty on every real token plus the sequence score at its end.

    ``rewards[b, t] = -kl_coef * kl[b, t]`` on masked tokens, and ``scores[b]`` is added at the
    last masked token of row ``b`` (its EOS, or the last token when generation was truncated): the
    reward model judges the whole response, so its score arrives when the episode ends. A row with
    no masked token gets no score. Returns ``(rewards, kl)``, both 0 where ``mask`` is 0; ``kl`` is
    the per-token estimate (for logging its masked mean).
    """
    m = _as_bool(mask)
    kl = _zero_outside(kl_per_token(logprobs, ref_logprobs, kind), m)
    rewards = -kl_coef * kl
    T = m.shape[-1]
    positions = torch.arange(T, device=m.device).expand_as(m)
    # index of the last masked token; rows with none get -1 and are skipped below
    last = torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=-1)
    has_tokens = last >= 0
    rows = torch.arange(m.shape[0], device=m.device)[has_tokens]
    rewards[rows, last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards, kl


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards in time over each row.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where
    the value after the last real token is 0: the response has ended (EOS or length limit), so
    the episode is treated as terminal and nothing is bootstrapped. Padding is zeroed before the
    recursion, so it contributes neither reward nor value. Returns ``(advantages, returns)`` with
    ``returns = advantages + values`` (the critic's target), both 0 on masked-out positions.
    Expects right padding (a contiguous run of ones per row). Advantages are not whitened here;
    see ``masked_whiten``.
    """
    m = _as_bool(mask)
    r = _zero_outside(rewards, m)
    v = _zero_outside(values, m)
    T = r.shape[-1]
    last_gae = torch.zeros_like(r[:, 0])
    next_value = torch.zeros_like(v[:, 0])
    reversed_adv = []
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        last_gae = delta + gamma * lam * last_gae
        reversed_adv.append(last_gae)
        next_value = v[:, t]
    advantages = _zero_outside(torch.stack(reversed_adv[::-1], dim=-1), m)
    returns = _zero_outside(advantages + v, m)
    return advantages, returns


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
) -> dict[str, Tensor]:
    """PPO clipped surrogate loss with per-token advantages.

    Per token, with ``ratio = exp(logp - old)``: ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``
    (the negated ``min`` of the paper, since we minimise). The loss is the token-level masked mean
    over the whole batch (TRL's PPO trainer / OpenRLHF's default), not a per-sequence mean.

    Metrics: ``clip_fraction`` is the fraction of masked tokens where the clipped term is the larger
    one, i.e. where clipping removes the gradient; ``approx_kl`` is ``0.5 * mean((logp - old)**2)``
    over masked tokens (the k2 estimator of KL(old || new), as TRL and OpenRLHF log it).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return {"loss": loss, "clip_fraction": clip_fraction, "approx_kl": approx_kl}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_value: float,
) -> dict[str, Tensor]:
    """Clipped value loss of PPO's critic.

    The new prediction is also clipped to ``old_values +- clip_value`` and the larger (pessimistic)
    of the two squared errors is kept, so one update cannot move the value too far from the rollout's
    estimate. ``loss = 0.5 * masked_mean(max(err_unclipped, err_clipped))``, token-level over the
    whole batch like ``policy_loss``. ``clip_fraction`` is the fraction of masked tokens where the
    clipped error is the larger one (TRL's ``vf_clipfrac``).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return {"loss": loss, "clip_fraction": clip_fraction}


def _upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 logits are reduced in float32; float32/float64 keep their precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution at each position: ``[B, T, V] -> [B, T]``.

    Uses ``H = logsumexp(z) - sum(softmax(z) * z)``, which needs no log of small probabilities.
    Half-precision logits are reduced in float32, one row at a time so the float32 copy of the
    vocabulary dimension never exists for the whole batch at once.
    """
    dtype = _upcast_dtype(logits.dtype)

    def one(z: Tensor) -> Tensor:
        z = z.to(dtype)
        return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)

    if dtype == logits.dtype:
        return one(logits)
    return torch.stack([one(row) for row in logits])


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``: ``[B, T, V], [B, T] -> [B, T]``.

    Computed as ``z[label] - logsumexp(z)`` (log_softmax gathered, without materialising the whole
    log_softmax) in at least float32: bf16 log-probabilities are too coarse for PPO ratios, where a
    difference of 1e-2 in ``logp - old`` is already a 1% ratio change. Half-precision logits are
    processed one row at a time to bound the float32 copy. Negative labels (``-100`` ignore index
    on padding) are read at id 0; such positions must be masked by the caller.
    """
    dtype = _upcast_dtype(logits.dtype)
    index = labels.clamp(min=0).unsqueeze(-1)

    def one(z: Tensor, idx: Tensor) -> Tensor:
        z = z.to(dtype)
        return torch.gather(z, -1, idx).squeeze(-1) - torch.logsumexp(z, dim=-1)

    if dtype == logits.dtype:
        return one(logits, index)
    return torch.stack([one(z, idx) for z, idx in zip(logits, index)])


@torch.no_grad()
def group_advantages(scores: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO advantages: each completion's score relative to the other completions of its prompt.

    ``scores`` is ``[B * G]`` laid out prompt-major: entries ``i*G .. i*G + G-1`` are the ``G``
    completions of prompt ``i`` (``repeat_interleave`` order, as TRL generates them). The result is
    ``(r - group_mean) / (group_std + eps)`` with the unbiased standard deviation (TRL's ``nanstd``,
    ``eps=1e-4`` as in TRL). ``scale=False`` skips the division (Dr. GRPO, Liu et al. 2025: dividing
    by the std over-weights prompts that are nearly always solved or nearly always failed). With
    ``group_size == 1`` every advantage is 0 (nothing to compare with).
    """
    if group_size < 1 or scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"scores must be 1-D with a length divisible by group_size; got shape {tuple(scores.shape)} "
            f"and group_size={group_size}"
        )
    if not scores.is_floating_point():
        scores = scores.float()
    grouped = scores.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        centered = centered / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centered.reshape(-1)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    beta: float,
) -> dict[str, Tensor]:
    """GRPO loss (Shao et al. 2024): clipped surrogate with one advantage per sequence, plus a KL term.

    Per token: ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) + beta * k3`` with
    ``advantages[b]`` broadcast over the tokens of row ``b`` and ``k3`` the per-token KL estimate
    to the reference policy (``kl_per_token(..., "k3")``). Normalisation is the original GRPO one
    (TRL's ``loss_type="grpo"``): mean over each sequence's masked tokens, then mean over sequences,
    so every response weighs the same whatever its length. ``ref_logprobs`` may be ``None`` when
    ``beta == 0`` (no reference model).

    Metrics (detached, token-level masked means over the batch as TRL logs them): ``kl`` (the mean
    k3; 0 when ``beta == 0`` and no reference is given) and ``clip_fraction`` (tokens where clipping
    removes the gradient: ratio above ``1 + eps`` with ``A > 0`` or below ``1 - eps`` with ``A < 0``).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.to(ratio.dtype).unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if ref_logprobs is not None:
        kl = kl_per_token(logprobs, ref_logprobs, "k3")
        if beta != 0.0:
            per_token = per_token + beta * kl
    elif beta != 0.0:
        raise ValueError("grpo_loss needs ref_logprobs when beta != 0")
    else:
        kl = torch.zeros_like(per_token)
    loss = masked_mean(per_token, mask, dim=-1).mean()
    with torch.no_grad():
        kl_mean = masked_mean(kl, mask)
        clip_fraction = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
    return {"loss": loss, "kl": kl_mean, "clip_fraction": clip_fraction}
