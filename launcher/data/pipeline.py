"""From config to tokenized training and eval examples, the same way on every rank."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from launcher.data.sources import eval_split, load_source, resolve_format, source_label

if TYPE_CHECKING:
    from strategies.base import GenerationExample, Strategy


@dataclass
class EvalSet:
    name: str
    features: list[dict]
    generation: list[GenerationExample] = field(default_factory=list)


@dataclass
class PreparedData:
    train: list[dict]
    source_sizes: list[int]
    weights: list[float]
    eval_sets: list[EvalSet]


def _tokenize_all(ds: Any, strategy: Strategy, fmt: str) -> list[dict]:
    return strategy.prepare_features([strategy.tokenize(row, fmt) for row in ds])


def prepare_data(cfg: Any, strategy: Strategy, *, with_eval: bool = True) -> PreparedData:
    spec = strategy.spec
    train: list[dict] = []
    sizes: list[int] = []
    for i, source in enumerate(cfg.data.train):
        where = f"data.train.{i}"
        ds = load_source(source, where)
        fmt = resolve_format(ds, source, spec.formats, where, cfg.method)
        features = _tokenize_all(ds, strategy, fmt)
        if cfg.data.packing:
            features = strategy.pack_dataset(features)
        train.extend(features)
        sizes.append(len(features))
    eval_sets: list[EvalSet] = []
    if with_eval:
        for i, source in enumerate(cfg.data.eval):
            where = f"data.eval.{i}"
            ds = load_source(source, where, split=eval_split(source))
            fmt = resolve_format(ds, source, spec.formats, where, cfg.method)
            features = _tokenize_all(ds, strategy, fmt)
            generation = []
            if _wants_exact_match(cfg, spec):
                for row in ds.select(range(min(len(ds), cfg.eval.max_generate))):
                    example = strategy.generation_example(row, fmt)
                    if example is not None:
                        generation.append(example)
            eval_sets.append(EvalSet(source_label(source), features, generation))
    return PreparedData(train, sizes, [s.weight for s in cfg.data.train], eval_sets)


def _wants_exact_match(cfg: Any, spec: Any) -> bool:
    if cfg.eval.exact_match == "auto":
        return spec.generative and spec.name != "full"
    return bool(cfg.eval.exact_match)
