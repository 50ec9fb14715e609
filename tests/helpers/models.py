"""Model helpers shared by test modules."""

from __future__ import annotations

import torch


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Weights moved away from where they started (in place), so a policy differs from its
    reference and DPO/KTO log-ratios are not all 0 (any formula would pass at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model
