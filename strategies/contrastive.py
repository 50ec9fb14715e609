"""``contrastive``: sentence embeddings trained with InfoNCE over in-batch negatives.

Rows are ``anchor`` + ``positive`` (+ an optional hard ``negative``). Each anchor must pick
its own positive among every positive and negative in the batch; with
``gather_across_ranks`` the candidates are the whole global micro-batch, gathered with an
autograd-aware all-gather so gradients flow back to the rank that embedded them (as in
sentence-transformers' ``gather_across_devices``). Held-out recall@1 ranks each anchor
against every positive and negative of the eval set, not just a batch.

With ``data.packing`` an example's anchor, positive and negative are segments of one packed row.
Decoders isolate them by restarting position ids (transformers builds the block-diagonal causal
mask); encoders attend both ways, so they get an explicit 4D block-diagonal mask, which only
architectures in ``PACKABLE_ENCODERS`` are known to apply unchanged: others are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import nn

from launcher.core.errors import HintedValueError
from launcher.data.batching import (
    IGNORE_INDEX,
    block_diagonal_mask,
    collate_units,
    is_packed,
    pack_unit_rows,
    pad_rows,
    segment_sums,
    units_of,
)
from strategies.base import LossOutput, Strategy, StrategyCapability
from strategies.catalog import ContrastiveOptions

FIELDS = ("anchor", "positive", "negative")
#: Encoders whose packed forward (restarting position ids + a 4D block-diagonal mask, passed
#: through as it is) was checked equal to separate forwards (tests/unit/test_packing_methods.py).
PACKABLE_ENCODERS = ("bert",)


class ContrastiveStrategy(Strategy[ContrastiveOptions]):
    peft_task_type = "FEATURE_EXTRACTION"
    capabilities = frozenset({StrategyCapability.EVALUATE_SET})  # recall@1 over the whole set

    def model_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def load_model(self, path: str, **kwargs: Any) -> nn.Module:
        return self._check_packing(_drop_pooler(super().load_model(path, **kwargs)))

    def model_from_config(self, config: Any, **kwargs: Any) -> nn.Module:
        return self._check_packing(_drop_pooler(super().model_from_config(config, **kwargs)))

    def _check_packing(self, model: nn.Module) -> nn.Module:
        if self.cfg.data.packing:
            packed_mask_kind(model)
        return model

    # -- data
    def tokenize(self, row: dict, fmt: str) -> dict:
        n = self.cfg.data.max_length
        return {f: self.tokenizer(row[f], add_special_tokens=True)["input_ids"][:n]
                for f in FIELDS if row.get(f)}

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        """Whole examples (anchor, positive, negative as segments) into rows of ``fields x
        max_length`` tokens: a row holds at least one example."""
        units = [{f: (x[f], [IGNORE_INDEX] * len(x[f])) for f in FIELDS if f in x} for x in features]
        meta = [{"fields": [f for f in FIELDS if f in x]} for x in features]
        capacity = max(len(u) for u in units) * self.cfg.data.max_length
        return pack_unit_rows(units, meta, capacity)

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Rows [anchors; positives; negatives?] padded together: one forward embeds all."""
        if is_packed(features):
            units = [u for f in features for u in units_of(f)]
            groups = [f for f in FIELDS if all(f in u["fields"] for u in units)]
            batch = collate_units(features, self.tokenizer.pad_token_id or 0, groups)
            batch["groups"] = torch.tensor(len(groups))
            return batch
        groups = [f for f in FIELDS if all(f in x for x in features)]
        seqs = [x[f] for f in groups for x in features]
        ids, mask = pad_rows(seqs, self.tokenizer.pad_token_id or 0)
        return {"input_ids": ids, "attention_mask": mask, "groups": torch.tensor(len(groups))}

    def count_items(self, batch: dict[str, torch.Tensor]) -> float:
        if "seq_last" in batch:
            return float(len(batch["seq_last"]) // int(batch["groups"]))
        return float(batch["input_ids"].shape[0] // int(batch["groups"]))

    # -- model
    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "seq_last" in batch:
            return F.normalize(self._packed_pool(model, batch), dim=-1)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state.float()
        mask = batch["attention_mask"]
        if self.options.pooling == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:  # last real token (right padding)
            last = mask.sum(1) - 1
            pooled = hidden[torch.arange(len(hidden), device=hidden.device), last]
        return F.normalize(pooled, dim=-1)

    def _packed_pool(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled embedding of every segment of packed rows, in the collated order."""
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        kind = packed_mask_kind(model)
        if kind == "causal":  # a KV cache would stop transformers from reading the position ids
            inputs["use_cache"] = False
        else:
            dtype = torch.bool if kind == "bool" else model_dtype(model)
            inputs["attention_mask"] = block_diagonal_mask(batch["segment_ids"], dtype)
        hidden = model(**inputs).last_hidden_state.float()
        flat, index = hidden.reshape(-1, hidden.shape[-1]), batch["seq_index"].reshape(-1)
        n = len(batch["seq_last"])
        if self.options.pooling == "mean":
            counts = segment_sums(torch.ones_like(index, dtype=flat.dtype), index, n)
            return segment_sums(flat, index, n) / counts.clamp(min=1).unsqueeze(-1)
        return flat[batch["seq_last"]]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        emb = self.embed(model, batch)
        groups = emb.chunk(int(batch["groups"]))
        anchors, candidates = groups[0], list(groups[1:])
        offset = 0
        if self.options.gather_across_ranks and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [gather_rows(c) for c in candidates]
            candidates = [g for g, _ in gathered]
            offset = sum(gathered[0][1][: dist.get_rank()])
        scores = anchors @ torch.cat(candidates).T / self.options.temperature
        target = torch.arange(len(anchors), device=scores.device) + offset
        loss = F.cross_entropy(scores, target, reduction="sum")
        with torch.no_grad():
            metrics = {"accuracy": (scores.argmax(-1) == target).float().sum()}
        return LossOutput(loss, torch.tensor(float(len(anchors))), metrics)

    # -- eval: retrieval over the whole held-out set
    def evaluate_set(self, backend: Any, eval_set: Any, cfg: Any) -> dict[str, float]:
        from launcher.train.evaluate import sharded_map

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


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Every rank's ``rows`` in rank order (autograd-aware: gradients go back to the rank that
    made them) and each rank's row count. Counts may differ between ranks: packed micro-batches
    hold as many examples as fit in their rows, so each rank's block is padded to the largest
    for the collective and cut back after it."""
    import torch.distributed.nn.functional as dist_fn

    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = F.pad(rows, (0, 0, 0, max(sizes) - len(rows)))
    parts = dist_fn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes


def _drop_pooler(model: nn.Module) -> nn.Module:
    """BERT's pooler is unused by mean/last pooling; untrained unused parameters would stall
    DDP's gradient reduction, so it is removed (its checkpoint tensors are then skipped)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _config(model: nn.Module) -> Any:
    """The HF config of a model, under DDP/DeepSpeed (``.module``) and peft wrappers."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def packed_mask_kind(model: nn.Module) -> str:
    """How a packed row keeps its segments apart in this model: ``causal`` (a decoder: restarting
    position ids, no mask), ``bool`` / ``additive`` (an encoder in PACKABLE_ENCODERS: a 4D
    block-diagonal mask in the form its attention implementation expects). Others: refused."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = _config(model)
    kind = config.model_type
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    if kind in PACKABLE_ENCODERS:
        return "bool" if config._attn_implementation in ("sdpa", "flash_attention_2") else "additive"
    raise HintedValueError(
        f"data.packing: packing is not known to be exact for {kind!r} encoders (their attention may "
        "not take a 4D block-diagonal mask as it is); packable encoders: " + ", ".join(PACKABLE_ENCODERS),
        "set data.packing: false for this model")
