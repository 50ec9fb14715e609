"""Model facts the plan is made of: exact parameter counts, the largest blocks, the dimensions
activation memory depends on.

Parameter counts come from instantiating the architecture on the meta device (no weights are
read or allocated), so they are exact for any size, 70B included. The architecture is read
from ``model.path``; a hub id whose config ftl bundles (``launcher/plan/archs``) is planned from
that file, so planning needs neither weights nor network. torch and transformers are imported
inside the functions that build the meta model: importing this module stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.models.tiny import is_builtin, resolve_model_path
from launcher.plan.archs import bundled_config_dir, bundled_names


def planning_model_path(path: str) -> str:
    """Where the architecture is read from: a builtin or local folder as is; else a bundled
    config.json when the hub id is known; else the hub id (HF cache or hub)."""
    if is_builtin(path):
        return resolve_model_path(path)
    if Path(path).expanduser().exists():
        return path
    bundled = bundled_config_dir(path)
    return str(bundled) if bundled else path


def read_model_config(cfg: Any) -> tuple[Any, str]:
    from transformers import AutoConfig

    path = planning_model_path(cfg.model.path)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.gguf_file and path == cfg.model.path:
        kwargs["gguf_file"] = cfg.model.gguf_file
    try:
        return AutoConfig.from_pretrained(path, **kwargs), path
    except (OSError, ValueError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise UserError(Problem("model.path", f"cannot read the model's config from {path!r}: {text}",
                                "use a local HF folder, builtin:<name>, or a hub id whose architecture "
                                f"ftl bundles ({', '.join(bundled_names())})")) from None


def count_on_meta(cfg: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from launcher.models.layers import decoder_layers  # imports torch

    config, source = read_model_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    largest_name, largest = _largest_unit(model)
    trainable = total
    if cfg.peft is not None:
        from launcher.models.load import apply_lora

        model = apply_lora(model, cfg.peft)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    module_name, module_params = _largest_module(model)
    blocks = [sum(p.numel() for p in b.parameters()) for b in decoder_layers(model)]
    param_threshold, model_threshold = _persistence_thresholds(cfg)
    return {
        "architecture": type(model).__name__,
        "config_source": source,
        "total": total,
        "trainable": trainable,
        "largest_layer": {"name": largest_name, "parameters": largest},
        "largest_module": {"name": module_name, "parameters": module_params},
        "decoder_layers": {"count": len(blocks), "largest": max(blocks, default=0),
                           "outside": total - sum(blocks)},
        "num_layers": getattr(config, "num_hidden_layers", None),
        "zero3_persistent": {"threshold": param_threshold,
                             "parameters": _persistent(model, param_threshold, model_threshold)},
        "shape": model_dims(config),
    }


def _persistence_thresholds(cfg: Any) -> tuple[int, int]:
    """ZeRO-3's ``stage3_param_persistence_threshold`` / ``stage3_model_persistence_threshold``
    (DeepSpeed's defaults: 1e5 elements, unlimited), as an expert ``deepspeed_config`` may set them."""
    zero = ((cfg.sharding.deepspeed_config or {}).get("zero_optimization") or {})

    def pick(*names: str, default: int) -> int:
        for name in names:
            if isinstance(zero.get(name), (int, float)):
                return int(zero[name])
        return default

    return (pick("stage3_param_persistence_threshold", "param_persistence_threshold", default=100_000),
            pick("stage3_model_persistence_threshold", "model_persistence_threshold", default=sys.maxsize))


def _persistent(model: Any, param_threshold: int, model_threshold: int) -> int:
    """Parameters ZeRO-3 keeps whole on every rank once trained (DeepSpeed 0.19's
    ``mark_persistent_parameters``, same order and caps): for a 70B Llama its norms, a few MB;
    for a tiny test model most of its tensors."""
    total = 0
    for _, p in model.named_parameters():
        if p.numel() + total > model_threshold:
            continue
        if p.numel() <= param_threshold:
            total += p.numel()
    return total


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


def _largest_module(model: Any) -> tuple[str, int]:
    """DeepSpeed's "largest layer": the module with the most parameters of its own."""
    best = ("", 0)
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n > best[1]:
            best = (name, n)
    return best


def model_dims(config: Any) -> dict[str, Any]:
    """The hyper-parameters activation memory depends on (Llama-style names, GPT-2 fallbacks)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def first(*names: str, default: Any = None) -> Any:
        for n in names:
            value = getattr(text, n, None)
            if value is not None:
                return value
        return default

    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head", default=1)
    head_dim = first("head_dim", default=hidden // heads if hidden else None)
    return {
        "hidden_size": hidden,
        "intermediate_size": first("intermediate_size", "n_inner", "ffn_dim", default=4 * (hidden or 0)),
        "num_attention_heads": heads,
        "num_key_value_heads": first("num_key_value_heads", default=heads),
        "head_dim": head_dim,
        "vocab_size": first("vocab_size"),
        "num_hidden_layers": first("num_hidden_layers", "n_layer"),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
