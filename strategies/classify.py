"""``classify``: sequence classification with a task-specific head (``num_labels`` outputs).

Rows are ``text`` + ``label`` (a name from ``classify.labels`` or its index). Held-out
metrics: accuracy and macro-F1 (per-class F1 from confusion counts summed over ranks, then
averaged over classes, so it is exact however the eval set was sharded).
"""

from __future__ import annotations

import torch
from torch import nn

from launcher.core.errors import HintedValueError
from launcher.data.batching import IGNORE_INDEX, collate_units, is_packed, pack_unit_rows, pad_rows, units_of
from strategies.base import LossOutput, Strategy
from strategies.catalog import ClassifyOptions
from strategies.heads import SequenceHeadMixin


class ClassifyStrategy(SequenceHeadMixin, Strategy[ClassifyOptions]):
    def num_labels(self) -> int:
        return len(self.options.labels)

    def label_index(self, label: object) -> int:
        labels = self.options.labels
        if isinstance(label, str) and label in labels:
            return labels.index(label)
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
            return label
        raise HintedValueError(f"label {label!r} is not one of classify.labels",
                               f"labels: {', '.join(labels)} (or their index 0-{len(labels) - 1})")

    def tokenize(self, row: dict, fmt: str) -> dict:
        ids = self.tokenizer(row["text"], add_special_tokens=True)["input_ids"][: self.cfg.data.max_length]
        return {"input_ids": ids, "label": self.label_index(row["label"])}

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        """Texts into rows of ``max_length`` tokens; each is scored at its own last token."""
        units = [{"text": (f["input_ids"], [IGNORE_INDEX] * len(f["input_ids"]))} for f in features]
        return pack_unit_rows(units, [{"label": f["label"]} for f in features], self.cfg.data.max_length)

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if is_packed(features):
            batch = collate_units(features, self.tokenizer.pad_token_id, ("text",))
            batch["label"] = torch.tensor([u["label"] for f in features for u in units_of(f)])
            return batch
        ids, mask = pad_rows([f["input_ids"] for f in features], self.tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask,
                "label": torch.tensor([f["label"] for f in features])}

    def count_items(self, batch: dict[str, torch.Tensor]) -> float:
        return float(len(batch["label"]))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = self.sequence_logits(model, batch)
        labels = batch["label"]
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        with torch.no_grad():
            pred = logits.argmax(-1)
            metrics = {"accuracy": (pred == labels).float().sum()}
            for c in range(self.num_labels()):
                metrics[f"_tp/{c}"] = ((pred == c) & (labels == c)).float().sum()
                metrics[f"_fp/{c}"] = ((pred == c) & (labels != c)).float().sum()
                metrics[f"_fn/{c}"] = ((pred != c) & (labels == c)).float().sum()
        return LossOutput(loss, torch.tensor(float(len(labels))), metrics)

    def eval_summary(self, sums: dict[str, float], count: float) -> dict[str, float]:
        out = super().eval_summary(sums, count)
        f1 = []
        for c in range(self.num_labels()):
            tp, fp, fn = (sums.get(f"_{k}/{c}", 0.0) for k in ("tp", "fp", "fn"))
            f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        out["macro_f1"] = sum(f1) / len(f1)
        return out
