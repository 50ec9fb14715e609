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

The reference is the base model with adapters disabled (LoRA), log-probs of the starting
model computed once before the first step (works with every sharding backend, costs one
forward pass over the data and no memory), or a frozen copy of ``dpo.ref_model``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from strategies.base import LossOutput, Strategy
from strategies.preference import PreferenceDataMixin, sequence_logps


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


class DPOStrategy(PreferenceDataMixin, Strategy):
    def __init__(self, cfg: Any, tokenizer: Any):
        super().__init__(cfg, tokenizer)
        self.reference = self._reference_mode()
        self._peft_model: nn.Module | None = None
        self._ref_model: nn.Module | None = None

    def _reference_mode(self) -> str:
        mode = self.options.reference
        if mode == "auto":
            return "adapters" if self.cfg.peft is not None else "precomputed"
        return mode

    # -- reference
    def on_setup(self, backend: Any, data: Any) -> None:
        if self.reference == "adapters":
            self._peft_model = backend.module
        elif self.reference == "model":
            self._ref_model = self._load_reference(backend)
        else:
            self._precompute(backend, [data.train] + [es.features for es in data.eval_sets])

    def _load_reference(self, backend: Any) -> nn.Module:
        from launcher.models.load import _model_kwargs
        from launcher.models.tiny import resolve_model_path

        path = resolve_model_path(self.options.ref_model or self.cfg.model.path)
        model = self.load_model(path, **_model_kwargs(self.cfg)).to(backend.ctx.device).eval()
        model.requires_grad_(False)
        return model

    def _precompute(self, backend: Any, feature_lists: list[list[dict]]) -> None:
        """Reference log-probs of the model as built (before any step or restored checkpoint)."""
        from launcher.evaluate import sharded_map

        model = backend.model
        was_training = model.training
        model.eval()

        def score(rows: list[dict]) -> list[tuple[float, float]]:
            batch = {k: v.to(backend.ctx.device) for k, v in self.collate(rows).items()}
            with backend.autocast():
                logps, _ = sequence_logps(model, batch)
            chosen, rejected = logps.double().chunk(2)
            return list(zip(chosen.tolist(), rejected.tolist()))

        for features in feature_lists:
            for f, (c, r) in zip(features, sharded_map(backend, features, self.cfg.eval.batch_size, score)):
                f["ref_chosen_logp"], f["ref_rejected_logp"] = c, r
        model.train(was_training)

    @torch.no_grad()
    def reference_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logp" in batch:
            return batch["ref_chosen_logp"], batch["ref_rejected_logp"]
        if self._ref_model is not None:
            logps, _ = sequence_logps(self._ref_model, batch)
        elif self._peft_model is not None:
            with self._peft_model.disable_adapter():
                logps, _ = sequence_logps(model, batch)
        else:
            raise RuntimeError("DPO reference not set up (on_setup was not called)")
        return logps.double().chunk(2)

    # -- loss
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        opts = self.options
        logps, lengths = sequence_logps(model, batch)
        chosen, rejected = logps.chunk(2)
        chosen_len, rejected_len = lengths.chunk(2)
        ref_chosen, ref_rejected = self.reference_logps(model, batch)
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
