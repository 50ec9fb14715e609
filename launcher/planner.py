"""The plan for a run: workers, placement, batch arithmetic and exact parameter counts.

Parameter counts come from instantiating the architecture on the meta device (no weights are
read or allocated), so they are exact for any size, 70B included.
"""

from __future__ import annotations

from typing import Any


def count_on_meta(cfg: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.models.tiny import resolve_model_path

    path = resolve_model_path(cfg.model.path)
    kwargs = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.gguf_file:
        kwargs["gguf_file"] = cfg.model.gguf_file
    config = AutoConfig.from_pretrained(path, **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    largest_name, largest = _largest_unit(model)
    trainable = total
    if cfg.peft is not None:
        from launcher.models.load import apply_lora

        peft_model = apply_lora(model, cfg.peft)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in peft_model.parameters())
    return {
        "architecture": type(model).__name__,
        "total": total,
        "trainable": trainable,
        "largest_layer": {"name": largest_name, "parameters": largest},
        "num_layers": getattr(config, "num_hidden_layers", None),
    }


def _largest_unit(model: Any) -> tuple[str, int]:
    """The biggest block a sharded backend gathers at once: one element of a ModuleList
    (a decoder layer) or a leaf module with parameters (embeddings, LM head)."""
    import torch

    best = ("", 0)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            units = [(f"{name}.{i}", m) for i, m in enumerate(module)]
        elif not list(module.children()):
            units = [(name, module)]
        else:
            continue
        for unit_name, unit in units:
            n = sum(p.numel() for p in unit.parameters())
            if n > best[1]:
                best = (unit_name, n)
    return best


def make_plan(cfg: Any, *, with_params: bool = True) -> dict[str, Any]:
    res = cfg.resources
    bundle = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        bundle["GPU"] = res.gpus_per_worker
    plan: dict[str, Any] = {
        "name": cfg.name,
        "method": cfg.method,
        "target": cfg.cluster.target,
        "sharding": {"backend": cfg.sharding.backend},
        "workers": res.num_workers,
        "placement": {"strategy": "PACK", "bundles": [bundle] * res.num_workers},
        "batch": {
            "micro_batch_size": cfg.train.micro_batch_size,
            "grad_accumulation": cfg.grad_accum,
            "global_batch_size": cfg.global_batch,
            "max_length": cfg.data.max_length,
            "tokens_per_step_max": cfg.global_batch * cfg.data.max_length,
        },
        "steps": cfg.train.max_steps,
    }
    if with_params:
        plan["parameters"] = count_on_meta(cfg)
    return plan
