"""The frozen roles: the reference policy (log-probs for the KL term) and the reward model.

Both are inference only, so they are plain models (no optimizer, no sharding backend). The
reward model has its own tokenizer and chat template: it re-renders each (prompt, response) the
way ``method: reward`` rendered its training pairs (``strategies.preference.tokenize_pair``:
prompt + assistant answer through the template, or prompt text + answer + EOS).
"""

from __future__ import annotations

from typing import Any

import torch

from launcher.data.batching import pad_rows
from launcher.models.chunked_ce import ce_options
from strategies.ppo.batch import RolloutBatch, policy_forward


def _device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


class ReferenceScorer:
    """``model.path`` as it was before training, frozen (under LoRA: the base without adapters)."""

    def __init__(self, cfg: Any):
        from transformers import AutoModelForCausalLM

        from launcher.models.tiny import resolve_model_path

        opts = cfg.method_options()
        self.device = _device(opts.reference.gpus_per_worker)
        kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": cfg.model.trust_remote_code}
        if cfg.model.gguf_file:
            kwargs["gguf_file"] = cfg.model.gguf_file
        self.model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.path), **kwargs)
        self.model.to(self.device).eval().requires_grad_(False)
        self.temperature = opts.rollout.temperature
        self.ce = ce_options(cfg)  # as the policy's: the planner's reference logits term assumes it
        self.micro = cfg.train.micro_batch_size
        self.packing = cfg.data.packing

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        outs = []
        if self.packing:  # padding-free forward passes, as the learners run them
            batch = batch.packed()
        for start in range(0, len(batch), self.micro):
            mb = batch.rows(range(start, min(start + self.micro, len(batch))))
            if self.device.type != "cpu":
                mb = mb.to(self.device)
            outs.append(policy_forward(self.model, mb, self.temperature, ce=self.ce)[0].float().cpu())
        return torch.cat(outs)


def reward_input_ids(tokenizer: Any, prompt: Any, completion: str, max_length: int) -> list[int]:
    """One scored sequence, rendered as the reward model saw its training pairs."""
    if isinstance(prompt, list):
        messages = list(prompt) + [{"role": "assistant", "content": completion}]
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        ids = ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids[:max_length]


class RewardModelScorer:
    """A ``method: reward`` run's final/ (one scalar per sequence, last non-pad token pooled)."""

    def __init__(self, cfg: Any):
        from strategies.ppo.models import load_reward_model

        opts = cfg.method_options().reward
        self.device = _device(opts.gpus_per_worker)
        self.model, self.tokenizer = load_reward_model(opts.model)
        self.model.to(self.device)
        self.batch_size = opts.batch_size
        self.max_length = cfg.data.max_length

    @torch.no_grad()
    def score(self, prompts: list[Any], completions: list[str]) -> list[float]:
        seqs = [reward_input_ids(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions)]
        pad = self.tokenizer.pad_token_id
        scores: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            part = seqs[start:start + self.batch_size]
            ids, mask = pad_rows(part, pad)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                use_cache=False).logits
            scores.extend(logits.squeeze(-1).float().cpu().tolist())
        return scores
