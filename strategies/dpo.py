"""``dpo``: direct preference optimisation, with TRL's loss definitions.

With policy log-ratios ``c = log pi(chosen) - log ref(chosen)`` and ``r`` likewise, and
``delta = c - r`` (log-probs summed over completion tokens):

- sigmoid (DPO): ``-(1-ls) log sigmoid(beta delta) - ls log sigmoid(-beta delta)``; with
  ``label_smoothing`` 0 (the default) this is TRL's ``sigmoid`` exactly (TRL 1.16 no longer
  smooths ``sigmoid``; ls > 0 gives conservative DPO).
- hinge (SLiC): ``relu(1 - beta delta)``.
- ipo: ``(c/|chosen| - r/|rejected| - 1/(2 beta))^2``, log-ratios averaged per completion
  token as TRL does (confirmed with the IPO authors, per TRL's comment).
- robust: ``(-(1-ls) log sigmoid(beta delta) + ls log sigmoid(-beta delta)) / (1 - 2 ls)``.

The reference (strategies/reference.py) is the base model with adapters disabled (LoRA),
log-probs of the starting model computed once before the first step, or a frozen copy of
``dpo.ref_model``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from strategies.base import LossOutput, Strategy
from strategies.catalog import DPOOptions
from strategies.preference import PreferenceDataMixin, sequence_logps
from strategies.reference import ReferenceMixin


def dpo_losses(loss_type: str, beta: float, label_smoothing: float, chosen_logratios: torch.Tensor,
               rejected_logratios: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor
               ) -> torch.Tensor:
    """Per-pair loss for each variant (see the module docstring)."""
    delta = chosen_logratios - rejected_logratios
    ls = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - ls) * F.logsigmoid(beta * delta) - ls * F.logsigmoid(-beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        avg = chosen_logratios / chosen_len.clamp(min=1) - rejected_logratios / rejected_len.clamp(min=1)
        return (avg - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        return (-(1 - ls) * F.logsigmoid(beta * delta) + ls * F.logsigmoid(-beta * delta)) / (1 - 2 * ls)
    raise ValueError(f"unknown DPO loss type {loss_type!r}")


class DPOStrategy(ReferenceMixin, PreferenceDataMixin, Strategy[DPOOptions]):
    def on_setup(self, backend: Any, data: Any) -> None:
        self.setup_reference(backend, data)

    def reference_scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logps, _ = sequence_logps(model, batch, **self.ce)
        chosen, rejected = logps.chunk(2)
        return {"chosen_logp": chosen, "rejected_logp": rejected}

    # -- loss
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        opts = self.options
        logps, lengths = sequence_logps(model, batch, **self.ce)
        chosen, rejected = logps.chunk(2)
        chosen_len, rejected_len = lengths.chunk(2)
        ref = self.reference_values(model, batch)
        ref_chosen, ref_rejected = ref["chosen_logp"], ref["rejected_logp"]
        chosen_lr = chosen - ref_chosen.to(chosen)
        rejected_lr = rejected - ref_rejected.to(rejected)
        losses = dpo_losses(opts.loss_type, opts.beta, opts.label_smoothing, chosen_lr, rejected_lr,
                            chosen_len, rejected_len)
        with torch.no_grad():
            rc, rr = opts.beta * chosen_lr, opts.beta * rejected_lr
            metrics = {
                "rewards/chosen": rc.sum(), "rewards/rejected": rr.sum(),
                "rewards/accuracy": (rc > rr).float().sum(), "rewards/margin": (rc - rr).sum(),
                # The policy's own preference (no reference): about 0.5 for an untrained model.
                "pair_accuracy": (chosen > rejected).float().sum(),
                "logps/chosen": chosen.sum(), "logps/rejected": rejected.sum(),
            }
        return LossOutput(losses.sum(), torch.tensor(float(len(chosen))), metrics)
