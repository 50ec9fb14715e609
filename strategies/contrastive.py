"""``contrastive``: sentence embeddings trained with InfoNCE over in-batch negatives.

Rows are ``anchor`` + ``positive`` (+ an optional hard ``negative``). Each anchor must pick
its own positive among every positive and negative in the batch; with
``gather_across_ranks`` the candidates are the whole global micro-batch, gathered with an
autograd-aware all-gather so gradients flow back to the rank that embedded them (as in
sentence-transformers' ``gather_across_devices``). Held-out recall@1 ranks each anchor
against every positive and negative of the eval set, not just a batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import nn

from strategies.base import LossOutput, Strategy

FIELDS = ("anchor", "positive", "negative")


class ContrastiveStrategy(Strategy):
    peft_task_type = "FEATURE_EXTRACTION"

    def model_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def load_model(self, path: str, **kwargs: Any) -> nn.Module:
        return _drop_pooler(super().load_model(path, **kwargs))

    def model_from_config(self, config: Any, **kwargs: Any) -> nn.Module:
        return _drop_pooler(super().model_from_config(config, **kwargs))

    # -- data
    def tokenize(self, row: dict, fmt: str) -> dict:
        n = self.cfg.data.max_length
        return {f: self.tokenizer(row[f], add_special_tokens=True)["input_ids"][:n]
                for f in FIELDS if row.get(f)}

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Rows [anchors; positives; negatives?] padded together: one forward embeds all."""
        groups = [f for f in FIELDS if all(f in x for x in features)]
        seqs = [x[f] for f in groups for x in features]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask, "groups": torch.tensor(len(groups))}

    def count_items(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["input_ids"].shape[0] // int(batch["groups"]))

    # -- model
    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state.float()
        mask = batch["attention_mask"]
        if self.options.pooling == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:  # last real token (right padding)
            last = mask.sum(1) - 1
            pooled = hidden[torch.arange(len(hidden), device=hidden.device), last]
        return F.normalize(pooled, dim=-1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        emb = self.embed(model, batch)
        groups = emb.chunk(int(batch["groups"]))
        anchors, candidates = groups[0], list(groups[1:])
        offset = 0
        if self.options.gather_across_ranks and dist.is_initialized() and dist.get_world_size() > 1:
            import torch.distributed.nn.functional as dist_fn

            candidates = [torch.cat(dist_fn.all_gather(c)) for c in candidates]
            offset = dist.get_rank() * len(anchors)
        scores = anchors @ torch.cat(candidates).T / self.options.temperature
        target = torch.arange(len(anchors), device=scores.device) + offset
        loss = F.cross_entropy(scores, target, reduction="sum")
        with torch.no_grad():
            metrics = {"accuracy": (scores.argmax(-1) == target).float().sum()}
        return LossOutput(loss, torch.tensor(float(len(anchors))), metrics)

    # -- eval: retrieval over the whole held-out set
    def evaluate_set(self, backend: Any, eval_set: Any, cfg: Any) -> dict[str, float]:
        from launcher.evaluate import sharded_map

        model = backend.model
        was_training = model.training
        model.eval()
        features = eval_set.features

        def embed_rows(rows: list[dict]) -> list[tuple[torch.Tensor, ...]]:
            """One forward pass per batch: (anchor, positive, negatives...) embeddings per row."""
            batch = {k: v.to(backend.ctx.device) for k, v in self.collate(rows).items()}
            with backend.autocast():
                groups = self.embed(model, batch).cpu().chunk(int(batch["groups"]))
            return [tuple(g[i] for g in groups) for i in range(len(rows))]

        parts = sharded_map(backend, features, cfg.eval.batch_size, embed_rows)
        model.train(was_training)
        anchors = torch.stack([p[0] for p in parts])
        candidates = torch.cat([torch.stack([p[g] for p in parts]) for g in range(1, len(parts[0]))])
        scores = anchors @ candidates.T
        target = torch.arange(len(anchors))
        loss = F.cross_entropy(scores / self.options.temperature, target, reduction="sum")
        recall = float((scores.argmax(-1) == target).float().sum())
        n = float(len(anchors))
        return {"loss": float(loss) / n, "recall@1": recall / n, "_loss_sum": float(loss), "_count": n}


def _drop_pooler(model: nn.Module) -> nn.Module:
    """BERT's pooler is unused by mean/last pooling; untrained unused parameters would stall
    DDP's gradient reduction, so it is removed (its checkpoint tensors are then skipped)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model
