"""Reference-free preference losses: ``cpo`` (and SimPO through it) and ``orpo``, as TRL defines them.

No reference model is loaded, stored or precomputed: these losses compare the policy's own
log-probabilities of the chosen and rejected answers. With ``c``/``r`` the chosen/rejected
log-probs (summed over completion tokens; averaged per token for ipo, simpo and orpo):

- cpo sigmoid: ``-(1-ls) log sigmoid(beta (c - r)) - ls log sigmoid(-beta (c - r))``; hinge
  ``relu(1 - beta (c - r))``; ipo ``((c - r) - 1/(2 beta))^2`` (TRL's CPOTrainer);
- simpo: sigmoid with the target margin: ``c - r - simpo_gamma / beta`` in place of ``c - r``
  (Meng et al. 2024);
- cpo adds ``cpo_alpha * NLL(chosen)``; orpo (Hong et al. 2024) is
  ``NLL(chosen) - beta * log sigmoid(log odds(c) - log odds(r))`` with
  ``log odds(p) = p - log(1 - exp(p))`` on per-token-averaged log-probs.

``NLL(chosen)`` is TRL's: the mean cross-entropy over the chosen rows' answer tokens of the
micro-batch for cpo; for orpo over every token of the chosen rows, prompt included, as TRL's
ORPOTrainer computes it (``orpo.nll_on: completion`` restricts it to the answer). Every other
term is a mean over pairs, which the loop takes over the whole global batch; the NLL's token
mean is taken per micro-batch (weighted by its pairs), as TRL does, so with one micro-batch
per step the two agree exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from strategies.base import LossOutput, Strategy
from strategies.catalog import CPOOptions, ORPOOptions
from strategies.preference import PreferenceDataMixin, labelled_sums, next_token_logps


def cpo_losses(loss_type: str, beta: float, label_smoothing: float, simpo_gamma: float,
               chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair preference loss of TRL's CPOTrainer (``alpha`` 0)."""
    logits = chosen - rejected
    if loss_type == "simpo":
        logits = logits - simpo_gamma / beta
    if loss_type in ("sigmoid", "simpo"):
        ls = label_smoothing
        return -(1 - ls) * F.logsigmoid(beta * logits) - ls * F.logsigmoid(-beta * logits)
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown CPO loss type {loss_type!r}")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """log odds(chosen) - log odds(rejected) of per-token-averaged log-probs."""
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


class _PairScores:
    """The policy's chosen/rejected scores and the NLL of the chosen rows for one batch, over
    their answer tokens, or over every token (prompt included) with ``nll_on_all``."""

    def __init__(self, model: nn.Module, batch: dict[str, torch.Tensor], average: bool,
                 nll_on_all: bool = False, ce: dict | None = None):
        token_logps = next_token_logps(model, batch, **(ce or {}))
        logps, lengths = labelled_sums(token_logps, batch)
        self.summed_chosen, self.summed_rejected = logps.chunk(2)
        scores = logps / lengths.clamp(min=1) if average else logps
        self.chosen, self.rejected = scores.chunk(2)
        self.pairs = float(len(self.chosen))
        if nll_on_all:
            if "seq_index" in batch:  # packed: every target token of a chosen segment after its first
                index = batch["seq_index"]
                mask = ((index[:, 1:] == index[:, :-1]) & (index[:, 1:] >= 0)
                        & (index[:, 1:] < len(self.chosen))).to(token_logps)
                chosen_tokens = token_logps
            else:
                chosen_tokens = token_logps.chunk(2)[0]
                mask = batch["attention_mask"].chunk(2)[0][:, 1:].to(chosen_tokens)
            self.chosen_nll = -(chosen_tokens * mask).sum() / mask.sum().clamp(min=1)
        else:
            self.chosen_nll = -self.summed_chosen.sum() / lengths.chunk(2)[0].sum().clamp(min=1)

    def metrics(self, beta: float) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            rc, rr = beta * self.chosen, beta * self.rejected
            return {
                "rewards/chosen": rc.sum(), "rewards/rejected": rr.sum(),
                "rewards/accuracy": (rc > rr).float().sum(), "rewards/margin": (rc - rr).sum(),
                # As in dpo: the policy's own preference by summed log-probs.
                "pair_accuracy": (self.summed_chosen > self.summed_rejected).float().sum(),
                "logps/chosen": self.summed_chosen.sum(), "logps/rejected": self.summed_rejected.sum(),
                "nll_loss": self.chosen_nll * self.pairs,
            }


class CPOStrategy(PreferenceDataMixin, Strategy[CPOOptions]):
    """``cpo`` and ``simpo``."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        opts = self.options
        s = _PairScores(model, batch, average=opts.loss_type in ("ipo", "simpo"), ce=self.ce)
        losses = cpo_losses(opts.loss_type, opts.beta, opts.label_smoothing, opts.simpo_gamma,
                            s.chosen, s.rejected)
        loss_sum = losses.sum()
        if opts.cpo_alpha:
            loss_sum = loss_sum + opts.cpo_alpha * s.pairs * s.chosen_nll
        return LossOutput(loss_sum, torch.tensor(s.pairs), s.metrics(opts.beta))


class ORPOStrategy(PreferenceDataMixin, Strategy[ORPOOptions]):
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        beta = self.options.beta
        s = _PairScores(model, batch, average=True, nll_on_all=self.options.nll_on == "all",
                        ce=self.ce)
        log_odds = orpo_log_odds(s.chosen.float(), s.rejected.float())
        ratio = F.logsigmoid(log_odds)
        loss_sum = s.pairs * s.chosen_nll - beta * ratio.sum()
        metrics = s.metrics(beta)
        # TRL's names: log_odds_ratio is log sigmoid(log odds), log_odds_chosen the log odds.
        metrics.update({"log_odds_ratio": ratio.detach().sum(), "log_odds_chosen": log_odds.detach().sum()})
        return LossOutput(loss_sum, torch.tensor(s.pairs), metrics)
