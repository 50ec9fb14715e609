"""Optimizer and learning-rate schedule from the ``train`` section.

AdamW without weight decay on biases and norms (the usual LLM recipe); schedules come from
``transformers.get_scheduler`` so they match what HF/TRL users know.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def make_optimizer(model: nn.Module, train: Any) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=train.lr, betas=tuple(train.betas), eps=train.eps
    )


def make_scheduler(optimizer: torch.optim.Optimizer, train: Any) -> Any:
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[train.schedule]
    kwargs: dict[str, Any] = {}
    if train.schedule == "cosine" and train.min_lr_ratio > 0:
        name, kwargs = "cosine_with_min_lr", {"min_lr_rate": train.min_lr_ratio}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=train.warmup_steps,
        num_training_steps=train.max_steps,
        scheduler_specific_kwargs=kwargs,
    )
