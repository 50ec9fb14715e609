"""The HF engine of a rollout worker: sample responses with ``generate`` and take new weights.

The engine holds its own copy of the policy, built exactly as the trainer builds its starting
model (``launcher.models.load``; LoRA adapters from the same seeded init), so version 0 needs no
transfer. Sampling is fully specified here (a fresh ``GenerationConfig``: the checkpoint's own
defaults such as top_k=50 or a repetition penalty would make the sampling distribution differ
from the one whose log-probs the trainer computes). Each call is seeded by the controller, so a
chunk gives the same responses whichever worker (or replacement) samples it.
It runs everywhere; ``strategies.ppo.vllm_engine`` is the fast one (``rollout.engine: vllm``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

from launcher.data.batching import pad_rows
from strategies.ppo.batch import RolloutBatch, policy_forward, truncate_at_eos
from strategies.ppo.models import PolicyModel, load_synced, unpack


def eos_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every id generation stops on: the checkpoint's generation config's and the tokenizer's."""
    ids = generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class HFEngine:
    def __init__(self, cfg: Any):
        from transformers import GenerationConfig

        from launcher.models.load import load_model, load_tokenizer

        self.cfg = cfg
        opts = cfg.method_options().rollout
        self.tokenizer = load_tokenizer(cfg)
        self.device = torch.device("cuda") if opts.gpus_per_worker > 0 and torch.cuda.is_available() \
            else torch.device("cpu")
        self.model = load_model(cfg, PolicyModel(cfg, self.tokenizer)).to(self.device).eval()
        self.model.requires_grad_(False)
        self.eos_ids = eos_token_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        self.chunk = opts.generation_batch_size
        self.generation_config = GenerationConfig(
            do_sample=True, temperature=opts.temperature, top_p=opts.top_p, top_k=0,
            max_new_tokens=opts.max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        # generate() fills settings a passed config leaves at their defaults from the model's own
        # generation config (a repetition penalty, say): make ours the model's, so nothing is filled.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        base.generation_config = self.generation_config
        self.greedy_config = GenerationConfig(do_sample=False, max_new_tokens=opts.max_new_tokens,
                                              eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        self.version = 0

    def load_weights(self, buckets: Iterable[dict], version: int) -> int:
        for packed in buckets:  # one at a time: bounded memory for large models
            load_synced(self.model, unpack(packed))
        self.version = version
        return version

    @torch.no_grad()
    def probe(self, prompt: list[int], response: list[int]) -> list[float]:
        batch = RolloutBatch.single(prompt, response).to(self.device)
        return policy_forward(self.model, batch, 1.0)[0][0].float().cpu().tolist()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], seed: int, greedy: bool = False) -> dict[str, Any]:
        """Responses (token ids through the first EOS), their text, and what it cost."""
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        config = self.greedy_config if greedy else self.generation_config
        responses: list[list[int]] = []
        finished: list[bool] = []
        size = self.chunk or len(prompts)
        for start in range(0, len(prompts), size):
            part = prompts[start:start + size]
            ids, mask = pad_rows(part, self.pad_id, left=True)
            width = ids.shape[1]
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config)
            for row in out[:, width:].tolist():
                resp, done = truncate_at_eos(row, self.eos_ids)
                responses.append(resp)
                finished.append(done)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return {"responses": responses, "texts": texts, "finished": finished, "logprobs": None,
                "version": self.version,
                "seconds": time.perf_counter() - t0, "tokens": sum(len(r) for r in responses)}
