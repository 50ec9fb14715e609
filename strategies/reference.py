"""A frozen reference policy for the losses that compare against one (DPO, KTO).

Three ways to have one, chosen by the method's ``reference`` option:

- ``adapters`` (auto under LoRA): the trained model with its adapters disabled, no extra memory;
- ``precomputed`` (auto otherwise): the starting model's scores of every example, computed once
  before step 1 (before a checkpoint is restored, so a resumed run gets the same numbers); it
  works on every sharding backend and costs one forward pass over the data and no memory;
- ``model``: a frozen copy of ``ref_model`` (default: ``model.path``) on every rank.

A strategy says what it scores (``reference_scores``: named per-item tensors); the mixin stores
precomputed values on each example (each unit of a packed row) as ``ref_<name>`` and hands them
back from batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from launcher.data.batching import units_of
from launcher.models.load import model_kwargs
from launcher.models.tiny import resolve_model_path
from launcher.train.evaluate import sharded_map


class ReferenceMixin:
    """Needs ``options.reference`` / ``options.ref_model``, ``collate`` and ``load_model``."""

    cfg: Any
    options: Any
    _peft_model: nn.Module | None = None
    _ref_model: nn.Module | None = None

    def reference_scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-row values of ``model`` on ``batch`` that the loss compares with the reference's."""
        raise NotImplementedError

    def reference_mode(self) -> str:
        mode = self.options.reference
        if mode == "auto":
            return "adapters" if self.cfg.peft is not None else "precomputed"
        return mode

    def use_reference_model(self, model: nn.Module) -> None:
        """Score the reference with ``model`` (frozen by the caller)."""
        self._ref_model = model

    def setup_reference(self, backend: Any, data: Any) -> None:
        mode = self.reference_mode()
        if mode == "adapters":
            self._peft_model = backend.module
        elif mode == "model":
            self._ref_model = self._load_reference(backend)
        else:
            self._precompute(backend, [data.train] + [es.features for es in data.eval_sets])

    def _load_reference(self, backend: Any) -> nn.Module:
        path = resolve_model_path(self.options.ref_model or self.cfg.model.path)
        model = self.load_model(path, **model_kwargs(self.cfg)).to(backend.ctx.device).eval()
        model.requires_grad_(False)
        return model

    def _precompute(self, backend: Any, feature_lists: list[list[dict]]) -> None:
        """Reference scores of the model as built (before any step or restored checkpoint)."""
        model = backend.model
        was_training = model.training
        model.eval()

        def score(rows: list[dict]) -> list[list[dict[str, float]]]:
            """Per row, its items' scores (a packed row holds several items, in order)."""
            batch = {k: v.to(backend.ctx.device) for k, v in self.collate(rows).items()}
            with backend.autocast():
                scores = self.reference_scores(model, batch)
            columns = {name: values.double().tolist() for name, values in scores.items()}
            out, i = [], 0
            for row in rows:
                n = len(units_of(row))
                out.append([{f"ref_{k}": col[j] for k, col in columns.items()} for j in range(i, i + n)])
                i += n
            return out

        for features in feature_lists:
            for f, values in zip(features, sharded_map(backend, features, self.cfg.eval.batch_size, score)):
                for unit, unit_values in zip(units_of(f), values):
                    unit.update(unit_values)
        model.train(was_training)

    @torch.no_grad()
    def reference_values(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's ``reference_scores`` for this batch (name -> per-row tensor)."""
        stored = {k[len("ref_"):]: v for k, v in batch.items() if k.startswith("ref_")}
        if stored:
            return stored
        if self._ref_model is not None:
            scores = self.reference_scores(self._ref_model, batch)
        elif self._peft_model is not None:
            with self._peft_model.disable_adapter():
                scores = self.reference_scores(model, batch)
        else:
            raise RuntimeError("reference not set up (on_setup was not called)")
        return {k: v.double() for k, v in scores.items()}


def stack_reference(features: list[dict]) -> dict[str, torch.Tensor]:
    """The precomputed ``ref_*`` values of a batch's examples, as float64 tensors."""
    keys = [k for k in features[0] if k.startswith("ref_")]
    return {k: torch.tensor([f[k] for f in features], dtype=torch.float64) for k in keys}
