"""Contrastive retrieval eval: one forward pass per eval batch, and the scores it reports are
those of embeddings computed directly (a regression once ran each batch once per row)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from launcher.config.load import validate_config
from launcher.data.pipeline import EvalSet
from tests.helpers.ftl import tiny_config


def test_eval_embeds_each_batch_once_and_scores_them():
    from launcher.data.sources import eval_split, load_source
    from launcher.models.load import load_model, load_tokenizer
    from strategies import build_strategy

    raw = tiny_config(method="contrastive", contrastive={"pooling": "last"}, eval={"batch_size": 8})
    raw["data"] = {"train": {"path": "builtin:pairs-reverse", "num_rows": 64},
                   "eval": {"path": "builtin:pairs-reverse", "num_rows": 20}, "max_length": 48}
    cfg = validate_config(raw)
    strategy = build_strategy(cfg, load_tokenizer(cfg))
    rows = load_source(cfg.data.eval[0], "data.eval.0", split=eval_split(cfg.data.eval[0]))
    features = [strategy.tokenize(r, "pairs") for r in rows]
    model = load_model(cfg, strategy)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    backend = SimpleNamespace(model=model, autocast=contextlib.nullcontext,
                              ctx=SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu")))
    metrics = strategy.evaluate_set(backend, EvalSet("pairs", features), cfg)
    assert len(calls) == -(-len(features) // 8)  # ceil(20 / 8) = 3 forwards, not one per row

    with torch.no_grad():
        emb = strategy.embed(model.eval(), strategy.collate(features)).chunk(3)
    scores = emb[0] @ torch.cat([emb[1], emb[2]]).T
    recall = float((scores.argmax(-1) == torch.arange(len(features))).float().mean())
    assert abs(metrics["recall@1"] - recall) < 1e-6 and metrics["_count"] == len(features)
