"""``kto``: Kahneman-Tversky optimisation on unpaired feedback, with TRL's loss definitions.

A row is a prompt, one completion and a ``label`` (true: desirable). With the log-ratio
``z = log pi(y|x) - log ref(y|x)`` (summed over completion tokens) and the reference point
``kl`` (below), TRL 1.16's KTOTrainer computes

- kto: ``1 - sigmoid(beta (z - kl))`` for desirable rows, ``1 - sigmoid(beta (kl - z))`` for
  undesirable ones (Ethayarajh et al. 2024, eq. 7);
- apo_zero_unpaired: ``1 - sigmoid(beta z)`` and ``sigmoid(beta z)`` (D'Oosterlinck et al. 2024),
  no reference point;

each weighted by ``desirable_weight`` / ``undesirable_weight`` and averaged over the rows.

The reference point estimates KL(pi || ref) from mismatched pairs: every example is also scored
with another example's completion, its neighbour in dataset order within chunks of
``train.micro_batch_size`` (TRL rotates completions by one inside each batch the same way), and
``kl = max(0, mean(log pi - log ref))`` over a micro-batch's mismatched pairs, detached. Fixing
each example's partner when the data is prepared (TRL needs a sequential sampler for that) lets
ftl shuffle, and lets the reference's scores of both sequences be precomputed. TRL averages
``kl`` over ranks too; ftl keeps each rank's micro-batch estimate (no collective inside the
loss, which evaluation could not call evenly on every rank). On one rank the two agree exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from launcher.core.errors import HintedValueError
from launcher.data.batching import collate_units, is_packed, pack_unit_rows, units_of
from strategies.base import LossOutput, Strategy
from strategies.catalog import KTOOptions
from strategies.preference import completion_unit, metadata, pad_completions, sequence_logps, tokenize_answers
from strategies.reference import ReferenceMixin, stack_reference

_TRUE = {True, "true", "True", "1", "yes"}  # True == 1 in a set
_FALSE = {False, "false", "False", "0", "no"}


def feedback_label(value: Any) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise HintedValueError(f"label {value!r} is neither true nor false",
                           "label: true for a desirable completion, false for an undesirable one")


def kto_losses(loss_type: str, beta: float, logratios: torch.Tensor, desirable: torch.Tensor,
               kl: torch.Tensor) -> torch.Tensor:
    """Per-row unweighted loss (see the module docstring)."""
    if loss_type == "kto":
        return torch.where(desirable, 1 - F.sigmoid(beta * (logratios - kl)),
                           1 - F.sigmoid(beta * (kl - logratios)))
    if loss_type == "apo_zero_unpaired":
        return torch.where(desirable, 1 - F.sigmoid(beta * logratios), F.sigmoid(beta * logratios))
    raise ValueError(f"unknown KTO loss type {loss_type!r}")


def _kl_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["kl_input_ids"], "attention_mask": batch["kl_attention_mask"],
            "labels": batch["kl_labels"]}


class KTOStrategy(ReferenceMixin, Strategy[KTOOptions]):
    def uses_kl(self) -> bool:
        return self.options.loss_type == "kto"

    # -- data
    def tokenize(self, row: dict, fmt: str) -> dict:
        prompt_ids, (completion_ids,) = tokenize_answers(
            self.tokenizer, row["prompt"], [row["completion"]], self.cfg.data.max_length)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
                "label": feedback_label(row["label"])}

    def prepare_features(self, features: list[dict]) -> list[dict]:
        """Pair each example with the completion of its predecessor inside its chunk of
        ``train.micro_batch_size`` (the first takes the chunk's last), as TRL does."""
        if not self.uses_kl():
            return features
        size = self.cfg.train.micro_batch_size
        for start in range(0, len(features), size):
            chunk = features[start : start + size]
            partners = [chunk[-1]] + chunk[:-1]
            for f, partner in zip(chunk, partners):
                room = self.cfg.data.max_length - len(f["prompt_ids"])
                f["kl_completion_ids"] = partner["completion_ids"][:room]
        return features

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        """Each example with its KL partner sequence (when the loss has one) as one unit: rows of
        ``slots x max_length`` tokens, the two as segments of the same row."""
        slots = 2 if self.uses_kl() else 1
        units = []
        for f in features:
            completions = {"main": f["completion_ids"]}
            if slots == 2:
                completions["kl"] = f["kl_completion_ids"]
            units.append(completion_unit(f["prompt_ids"], completions))
        return pack_unit_rows(units, [metadata(f) for f in features], slots * self.cfg.data.max_length)

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        if is_packed(features):  # one forward for both: [examples; their KL partners]
            batch = collate_units(features, pad, ("main", "kl") if self.uses_kl() else ("main",))
            units = [u for f in features for u in units_of(f)]
            batch["label"] = torch.tensor([u["label"] for u in units], dtype=torch.bool)
            batch.update(stack_reference(units))
            return batch
        prompts = [f["prompt_ids"] for f in features]
        batch = pad_completions(prompts, [f["completion_ids"] for f in features], pad)
        batch["label"] = torch.tensor([f["label"] for f in features], dtype=torch.bool)
        if "kl_completion_ids" in features[0]:
            kl = pad_completions(prompts, [f["kl_completion_ids"] for f in features], pad)
            batch.update({f"kl_{k}": v for k, v in kl.items()})
        batch.update(stack_reference(features))
        return batch

    def count_items(self, batch: dict[str, torch.Tensor]) -> float:
        return float(len(batch["label"]))

    def token_counts(self, feature: dict) -> tuple[int, int]:
        return len(feature["prompt_ids"]) + len(feature["completion_ids"]), len(feature["completion_ids"])

    # -- reference
    def on_setup(self, backend: Any, data: Any) -> None:
        self.setup_reference(backend, data)

    def _packed_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Packed batch: the examples' and (with the KL term) their partners' summed log-probs."""
        logps = sequence_logps(model, batch, **self.ce)[0]
        n = len(batch["label"])
        return logps[:n], (logps[n:] if len(logps) > n else None)

    def reference_scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "seq_last" in batch:
            logp, kl_logp = self._packed_logps(model, batch)
            return {"logp": logp} if kl_logp is None else {"logp": logp, "kl_logp": kl_logp}
        scores = {"logp": sequence_logps(model, batch, **self.ce)[0]}
        if "kl_input_ids" in batch:
            scores["kl_logp"] = sequence_logps(model, _kl_batch(batch), **self.ce)[0]
        return scores

    def reference_point(self, model: nn.Module, batch: dict[str, torch.Tensor],
                        ref: dict[str, torch.Tensor], kl_logps: torch.Tensor | None = None) -> torch.Tensor:
        """``kl`` of this micro-batch (0 for losses without a reference point); ``kl_logps``:
        the partners' log-probs when the same (packed) forward pass already gave them."""
        if kl_logps is None and "kl_input_ids" not in batch:
            return torch.zeros((), dtype=torch.float64, device=batch["input_ids"].device)
        with torch.no_grad():
            if kl_logps is None:
                kl_logps = sequence_logps(model, _kl_batch(batch), **self.ce)[0]
            kl_logps = kl_logps.detach().double()
        return (kl_logps - ref["kl_logp"].to(kl_logps)).mean().clamp(min=0)

    # -- loss
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        opts = self.options
        if "seq_last" in batch:
            logps, kl_logps = self._packed_logps(model, batch)
        else:
            (logps, _), kl_logps = sequence_logps(model, batch, **self.ce), None
        desirable = batch["label"]
        ref = self.reference_values(model, batch)
        kl = self.reference_point(model, batch, ref, kl_logps).to(logps)
        logratios = logps - ref["logp"].to(logps)
        weights = torch.where(desirable, opts.desirable_weight, opts.undesirable_weight).to(logps)
        losses = weights * kto_losses(opts.loss_type, opts.beta, logratios, desirable, kl)
        with torch.no_grad():
            rewards = opts.beta * logratios
            n = float(len(desirable))
            metrics = {
                "kl": kl * n,
                # The implied reward above the reference point predicts the label.
                "label_accuracy": ((logratios > kl) == desirable).float().sum(),
                "_rewards_desirable": rewards[desirable].sum(),
                "_n_desirable": desirable.float().sum(),
                "_rewards_undesirable": rewards[~desirable].sum(),
                "_n_undesirable": (~desirable).float().sum(),
            }
        return LossOutput(losses.sum(), torch.tensor(n), metrics)

    def eval_summary(self, sums: dict[str, float], count: float) -> dict[str, float]:
        out = super().eval_summary(sums, count)
        for side in ("desirable", "undesirable"):
            if sums.get(f"_n_{side}"):
                out[f"rewards/{side}"] = sums[f"_rewards_{side}"] / sums[f"_n_{side}"]
        if "rewards/desirable" in out and "rewards/undesirable" in out:
            out["rewards/margin"] = out["rewards/desirable"] - out["rewards/undesirable"]
        return out
