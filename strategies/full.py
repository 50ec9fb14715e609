"""``full``: causal LM on raw text, every token trained (continued pretraining)."""

from __future__ import annotations

import torch
from torch import nn

from strategies.base import LossOutput, Strategy, causal_lm_loss
from strategies.catalog import FullOptions


class FullStrategy(Strategy[FullOptions]):
    def tokenize(self, row: dict, fmt: str) -> dict:
        ids = self.tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        if self.options.add_eos and self.tokenizer.eos_token_id is not None:
            ids = ids + [self.tokenizer.eos_token_id]
        if not self.cfg.data.packing:
            ids = ids[: self.cfg.data.max_length]
        return {"input_ids": ids, "labels": list(ids)}

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        """Concatenate all documents and cut fixed blocks (classic run_clm packing)."""
        from launcher.data.batching import group_texts

        blocks = group_texts([f["input_ids"] for f in features], self.cfg.data.max_length)
        return [{"input_ids": b, "labels": list(b)} for b in blocks]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        return causal_lm_loss(model, batch, **self.ce)
