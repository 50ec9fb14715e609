"""The repeated blocks of a causal LM: what FSDP2 shards one by one and what the planner sizes
as the largest unit a sharded backend gathers."""

from __future__ import annotations

from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: elements of the largest ModuleList (Llama: model.layers)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return []
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))
