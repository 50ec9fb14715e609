"""From a scored rollout batch to PPO's training targets, in the controller (GRPO's advantages
are ``strategies.rl.policy.advantages_for``).

This is where the roles' outputs meet: sequence scores (reward role), log-probs of the policy
that is about to be updated (trainer group), of the reference (reference role) and values
(critic group). Everything here is ``strategies.rl.math``; this module only decides which
function gets which tensor, so the choice is visible in one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from strategies.rl.math import gae, masked_mean, masked_whiten, shaped_rewards


def ppo_targets(scores: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, values: Tensor,
                mask: Tensor, opts: Any) -> dict[str, Tensor]:
    """Per-token rewards (score at the last real token, ``-kl_coef * KL`` on every token), GAE
    advantages (whitened over the batch's tokens when ``whiten_advantages``) and returns.

    The KL is measured between the policy that generated/was about to be trained (``old``) and
    the frozen reference: it keeps the policy close to where it started, and enters the reward
    (not the loss), as in Ziegler et al. / InstructGPT.
    """
    rewards, kl = shaped_rewards(scores, old_logprobs, ref_logprobs, mask, opts.kl_coef, opts.kl_estimator)
    advantages, returns = gae(rewards, values, mask, opts.gamma, opts.lam)
    if opts.whiten_advantages and int(mask.sum()) >= 2:
        advantages = masked_whiten(advantages, mask)
    return {"advantages": advantages, "returns": returns, "kl": kl, "rewards": rewards}


@torch.no_grad()
def batch_stats(scores: Tensor, mask: Tensor, kl: Tensor | None) -> dict[str, float]:
    """Reward and response-length figures of one rollout batch (logged every step)."""
    lengths = mask.sum(-1).float()
    stats = {"reward/mean": float(scores.mean()),
             "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
             "reward/min": float(scores.min()), "reward/max": float(scores.max()),
             "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max())}
    if kl is not None:
        stats["kl/ref_per_token"] = float(masked_mean(kl, mask))
        stats["kl/ref_per_sequence"] = float((kl * mask).sum(-1).mean())
    return stats
