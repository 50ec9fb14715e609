"""Held-out loss and exact match by greedy generation, sharded over ranks.

Every rank runs the same number of batches (short shards repeat a batch with zero weight):
sharded backends gather parameters inside forward, so unequal counts would deadlock.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from launcher.data.batching import pad_rows
from launcher.train.dist import RankContext, all_gather_objects, all_reduce_sum
from strategies.base import StrategyCapability

if TYPE_CHECKING:
    from launcher.backends.base import Backend
    from launcher.data.pipeline import EvalSet
    from strategies.base import GenerationExample, Strategy


def _shard(items: list, ctx: RankContext) -> list:
    return items[ctx.rank :: ctx.world_size]


def _batches(items: list, size: int, ctx: RankContext, total: int) -> list[tuple[list, bool]]:
    """This rank's batches, padded to the count every rank runs; flag = real batch."""
    per_rank = math.ceil(total / ctx.world_size)
    count = math.ceil(per_rank / size) if per_rank else 0
    out = []
    for b in range(count):
        chunk = items[b * size : (b + 1) * size]
        out.append((chunk, True) if chunk else (None, False))
    return out


def eval_batches(eval_set: EvalSet, cfg: Any, ctx: RankContext) -> tuple[list[dict], list]:
    """(all features, this rank's padded batch list) for one held-out set."""
    features = eval_set.features
    if cfg.eval.max_batches:
        features = features[: cfg.eval.max_batches * cfg.eval.batch_size * ctx.world_size]
    return features, _batches(_shard(features, ctx), cfg.eval.batch_size, ctx, len(features))


@torch.no_grad()
def eval_loss(backend: Backend, strategy: Strategy, eval_set: EvalSet, cfg: Any) -> dict[str, float]:
    """Held-out loss plus the strategy's own metrics (summed over ranks, then summarised)."""
    ctx = backend.ctx
    model = backend.model  # the wrapped model: sharded backends gather params in its forward
    was_training = model.training
    model.eval()
    features, batches = eval_batches(eval_set, cfg, ctx)
    loss_sum, count = 0.0, 0.0
    sums: dict[str, float] = {}
    for chunk, real in batches:
        batch = strategy.collate(chunk if real else features[:1])
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        with backend.autocast():
            out = strategy.loss(model, batch)
        if real:
            loss_sum += float(out.loss_sum)
            count += float(out.count)
            for k, v in out.metric_sums.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    # A rank with no real batch has no keys yet: agree on the names first.
    names = sorted({n for rank_names in all_gather_objects(sorted(sums)) for n in rank_names})
    totals = all_reduce_sum([loss_sum, count] + [sums.get(n, 0.0) for n in names], ctx.device)
    model.train(was_training)
    loss_sum, count = totals[0], totals[1]
    metrics = strategy.eval_summary(dict(zip(names, totals[2:])), count)
    return {"loss": loss_sum / max(count, 1.0), **metrics, "_loss_sum": loss_sum, "_count": count}


@torch.no_grad()
def exact_match(backend: Backend, strategy: Strategy, examples: list[GenerationExample],
                cfg: Any) -> dict[str, float]:
    ctx = backend.ctx
    tok = strategy.tokenizer
    model = backend.module
    was_training = model.training
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    mine = _shard(examples, ctx)
    correct = 0.0
    for chunk, real in _batches(mine, cfg.eval.batch_size, ctx, len(examples)):
        rows = chunk if real else examples[:1]
        ids, mask = pad_rows([e.prompt_ids for e in rows], pad, left=True)
        longest = ids.shape[1]
        with backend.autocast():
            out = model.generate(
                input_ids=ids.to(ctx.device),
                attention_mask=mask.to(ctx.device),
                max_new_tokens=cfg.eval.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
                synced_gpus=backend.needs_synced_generation,
            )
        if not real:
            continue
        for e, gen in zip(rows, out[:, longest:]):
            text = tok.decode(gen, skip_special_tokens=True).strip()
            correct += float(text == e.reference.strip())
    correct, total = all_reduce_sum([correct, float(len(mine))], ctx.device)
    model.train(was_training)
    return {"exact_match": correct / max(total, 1.0), "_em_total": total}


def evaluate(backend: Backend, strategy: Strategy, eval_sets: list[EvalSet], cfg: Any
             ) -> dict[str, float]:
    """``eval/<set>/<metric>`` for every set, plus ``eval/loss`` (token-weighted) and
    ``eval/exact_match`` (example-weighted) and every other metric (weighted by the set's
    item count) over all sets: one name to select on (``ftl sweep --metric``) whatever the mix."""
    metrics: dict[str, float] = {}
    loss_sum = count = em_sum = em_total = 0.0
    weighted: dict[str, float] = {}
    for es in eval_sets:
        lm = strategy.evaluate_set(backend, es, cfg) if strategy.supports(StrategyCapability.EVALUATE_SET) \
            else eval_loss(backend, strategy, es, cfg)
        for k, v in lm.items():
            if not k.startswith("_"):
                metrics[f"eval/{es.name}/{k}"] = v
                if k != "loss":
                    weighted[k] = weighted.get(k, 0.0) + v * lm["_count"]
        loss_sum += lm["_loss_sum"]
        count += lm["_count"]
        if es.generation:
            em = exact_match(backend, strategy, es.generation, cfg)
            metrics[f"eval/{es.name}/exact_match"] = em["exact_match"]
            em_sum += em["exact_match"] * em["_em_total"]
            em_total += em["_em_total"]
    if eval_sets:
        metrics["eval/loss"] = loss_sum / max(count, 1.0)
        metrics.update({f"eval/{k}": v / max(count, 1.0) for k, v in weighted.items()})
    if em_total:
        metrics["eval/exact_match"] = em_sum / em_total
    return metrics


@torch.no_grad()
def sharded_map(backend: Backend, features: list[dict], batch_size: int, fn: Any) -> list[Any]:
    """``fn(batch_features) -> list of per-row results`` over ``features``, split across
    ranks (every rank runs the same number of forwards) and gathered back, in order, on
    every rank. Used for values computed once per example: DPO reference log-probs,
    embeddings for retrieval metrics."""
    ctx = backend.ctx
    mine = list(range(ctx.rank, len(features), ctx.world_size))
    results: dict[int, Any] = {}
    for chunk, real in _batches(mine, batch_size, ctx, len(features)):
        rows = fn([features[i] for i in (chunk if real else [0])])
        if real:
            results.update(zip(chunk, rows))
    for part in all_gather_objects(results):
        results.update(part)
    return [results[i] for i in range(len(features))]
