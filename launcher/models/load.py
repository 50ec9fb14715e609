"""Load the tokenizer and the strategy's model from ``model.*`` (and wrap PEFT adapters)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from launcher.models.tiny import resolve_model_path


def load_tokenizer(cfg: Any) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.model.tokenizer or cfg.model.path)
    kwargs = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.gguf_file and not cfg.model.tokenizer:
        kwargs["gguf_file"] = cfg.model.gguf_file
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: Any, strategy: Any) -> nn.Module:
    """Master weights are fp32; ``model.dtype`` bf16/fp16 means autocast in forward."""
    path = resolve_model_path(cfg.model.path)
    kwargs: dict[str, Any] = {
        "dtype": torch.float32,
        "attn_implementation": cfg.model.attn_implementation,
        "trust_remote_code": cfg.model.trust_remote_code,
    }
    if cfg.model.gguf_file:
        kwargs["gguf_file"] = cfg.model.gguf_file
    model = strategy.load_model(path, **kwargs)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.peft is not None:
        model = apply_lora(model, cfg.peft)
    return model


def apply_lora(model: nn.Module, peft_cfg: Any) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules=peft_cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
