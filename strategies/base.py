"""The strategy contracts: what a method trains, independent of sharding and launch.

Three layers, each an ABC, so a plugin says which part it provides:

- ``ModelSpec``: which model to build and how to load it (the Auto class, a checkpoint or a bare
  config, the peft task type). The sharding backends need only this (``Backend.load_model``);
  PPO's policy and critic (``strategies.ppo.models``) are ModelSpecs, trained by their own loop.
- ``DataSpec(ModelSpec)``: + how dataset rows become token examples (preflight and the data
  pipeline); the registered ``impl`` of a controller-driven method (ppo, grpo) is one.
- ``Strategy(DataSpec)``: + batches, the loss and the loop's hooks; the ``impl`` of every other
  method.

A strategy never sees DeepSpeed, FSDP or Ray: the per-rank loop and the sharding backend do
that. Losses are returned as a *sum* with the number of items it covers, so the loop can
normalise exactly over the whole global batch (every micro-batch and rank), which keeps
gradient accumulation and world size from changing the math.

Options are typed: ``ModelSpec[SFTOptions]`` says ``self.options`` is the method's pydantic
section from ``strategies.catalog`` (``options_type()`` reads it back; the contract test checks
it against the registry).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_args, get_origin

import torch
from torch import nn

from launcher.core.capabilities import Capability, Capable
from strategies.registry import StrategySpec

if TYPE_CHECKING:
    from launcher.config.schema import Section

OptionsT = TypeVar("OptionsT", bound="Section")


class StrategyCapability(Capability):
    #: ``evaluate_set(backend, eval_set, cfg)`` replaces the held-out loss pass (contrastive:
    #: retrieval metrics over the whole set)
    EVALUATE_SET = "evaluate_set"


@dataclass
class LossOutput:
    loss_sum: torch.Tensor          # differentiable sum of per-item losses
    count: torch.Tensor             # items the sum covers (tokens, pairs, ...)
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # summed like loss_sum


@dataclass
class GenerationExample:
    """A held-out prompt and its reference answer, scored by exact match."""

    prompt_ids: list[int]
    reference: str


class ModelSpec(Capable, ABC, Generic[OptionsT]):
    """Which model a method trains and how to build it; a causal LM unless overridden."""

    #: the registry entry, attached by ``build_strategy``
    spec: StrategySpec
    #: peft task type: decides which new head LoRA trains in full (SEQ_CLS: the score head).
    peft_task_type = "CAUSAL_LM"

    def __init__(self, cfg: Any, tokenizer: Any):
        self.cfg = cfg
        self.options: OptionsT = cfg.method_options()
        self.tokenizer = tokenizer

    @classmethod
    def options_type(cls) -> type | None:
        """The options section this class declares (``Strategy[SFTOptions]`` -> SFTOptions)."""
        for klass in cls.__mro__:
            for base in vars(klass).get("__orig_bases__", ()):
                origin = get_origin(base)
                if isinstance(origin, type) and issubclass(origin, ModelSpec):
                    args = [a for a in get_args(base) if isinstance(a, type)]
                    if args:
                        return args[0]
        return None

    def model_class(self) -> Any:
        """The transformers Auto class this method trains (a causal LM by default)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def load_model(self, path: str, **kwargs: Any) -> nn.Module:
        return self.model_class().from_pretrained(path, **kwargs)

    def model_from_config(self, config: Any, **kwargs: Any) -> nn.Module:
        """Build without weights (meta device / sharded loading)."""
        return self.model_class().from_config(config, **kwargs)

    @property
    def ce(self) -> dict[str, Any]:
        """``model.cross_entropy`` and its chunk size, as keyword arguments of the log-prob helpers
        (``launcher.models.chunked_ce``)."""
        from launcher.models.chunked_ce import ce_options

        return ce_options(self.cfg)


class DataSpec(ModelSpec[OptionsT]):
    """A ModelSpec that also turns dataset rows into token examples."""

    @abstractmethod
    def tokenize(self, row: dict, fmt: str) -> dict:
        """One dataset row (in format ``fmt``) as a token example."""

    def prepare_features(self, features: list[dict]) -> list[dict]:
        """Work across a whole split's examples once they are tokenized, before packing (KTO
        pairs each example with a neighbour's completion here)."""
        return features

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        """Rows of several examples each (``data.packing``), attention kept per example."""
        from launcher.data.batching import pack_examples

        return pack_examples(features, self.cfg.data.max_length)

    def token_counts(self, feature: dict) -> tuple[int, int] | None:
        """(tokens in the example, tokens its loss trains on): preflight compares them with and
        without ``data.max_length`` to find rows that would train on nothing. None where the
        notion does not apply (prompts for online RL, embedding pairs)."""
        labels = feature.get("labels")
        if isinstance(labels, list):  # causal LM: a label predicts from the previous position
            return len(feature["input_ids"]), sum(1 for t in labels[1:] if t != -100)
        if "input_ids" in feature:  # one label per sequence (classification): every token feeds it
            return len(feature["input_ids"]), len(feature["input_ids"])
        return None


class Strategy(DataSpec[OptionsT]):
    """A method the per-rank loop trains: data, batches, loss. Optional parts are declared in
    ``capabilities`` (``StrategyCapability``)."""

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        from launcher.data.batching import collate

        pad = self.tokenizer.pad_token_id
        return collate(features, pad if pad is not None else 0)

    def generation_example(self, row: dict, fmt: str) -> GenerationExample | None:
        return None

    def count_items(self, batch: dict[str, torch.Tensor]) -> float:
        """What ``LossOutput.count`` counts for this batch, known before the forward pass so
        the loop can normalise by the global batch: labelled tokens by default."""
        if "labels" in batch and batch["labels"].dim() == 2:
            return float((batch["labels"][:, 1:] != -100).sum())
        return float(len(batch["input_ids"]))

    # -- lifecycle
    def on_setup(self, backend: Any, data: Any) -> None:
        """Called once the model is built and wrapped, before any checkpoint is restored
        (so the model still holds its starting weights: DPO computes reference log-probs here)."""

    def eval_summary(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Held-out metrics from summed ``metric_sums``; names starting with '_' are raw sums
        (e.g. confusion counts) that only this hook reads."""
        return {k: v / max(count, 1.0) for k, v in sums.items() if not k.startswith("_")}

    # -- loss
    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Summed loss of ``batch`` and the item count it covers (``count_items``)."""


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], mode: str = "plain",
                   chunk_tokens: int = 1024) -> LossOutput:
    """Summed next-token cross-entropy over labelled tokens (labels == -100 are skipped);
    ``mode``/``chunk_tokens``: ``model.cross_entropy`` (``Strategy.ce``).

    ``shift_labels`` instead of ``labels``: already shifted (transformers' name for it), as a
    sequence-parallel shard needs (``launcher.train.sequence_parallel``: shifted before slicing)."""
    from launcher.models.chunked_ce import aligned_nll_sum, labelled_nll_sum

    inputs = {k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}
    if "shift_labels" in batch:
        labels = batch["shift_labels"]
        loss_sum = aligned_nll_sum(model, inputs, labels, mode=mode, chunk_tokens=chunk_tokens)
    else:
        labels = batch["labels"][:, 1:]
        loss_sum = labelled_nll_sum(model, inputs, batch["labels"], mode=mode, chunk_tokens=chunk_tokens)
    count = (labels != -100).sum()
    return LossOutput(loss_sum, count)
