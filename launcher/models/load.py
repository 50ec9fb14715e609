"""Load the tokenizer and the strategy's model from ``model.*``; add adapters, freeze.

Adapters are initialised from a generator seeded by the run seed and the parameter name, not
from the global RNG: every backend (and every way of building the model) then starts from
the same LoRA weights, which makes backends comparable step by step.
"""

from __future__ import annotations

import fnmatch
import math
import re
import zlib
from typing import Any

import torch
from torch import nn

from launcher.core.seeds import mix_seed
from launcher.models.tensor_layout import WHOLE, TensorLayout
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


def model_kwargs(cfg: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments every copy of the model is built with (the trained model,
    a DPO/KTO reference): fp32 master weights, the configured attention (with
    ``sharding.sp_size > 1``: sdpa between Ulysses all-to-alls, ``launcher.train.sequence_parallel``)."""
    attention = cfg.model.attn_implementation
    if cfg.sharding.sp_size > 1:
        from launcher.train.sequence_parallel import register_attention

        attention = register_attention()
    return {"dtype": torch.float32, "attn_implementation": attention,
            "trust_remote_code": cfg.model.trust_remote_code}


def load_model(cfg: Any, strategy: Any) -> nn.Module:
    """Master weights are fp32; ``model.dtype`` bf16/fp16 means autocast (or FSDP2's
    mixed-precision policy) in forward."""
    path = resolve_model_path(cfg.model.path)
    kwargs = model_kwargs(cfg)
    if cfg.model.gguf_file:
        kwargs["gguf_file"] = cfg.model.gguf_file
    if cfg.peft is not None and cfg.peft.type == "qlora":
        return _load_qlora(cfg, strategy, path, kwargs)
    return finish_model(strategy.load_model(path, **kwargs), cfg, task_type=strategy.peft_task_type)


def _load_qlora(cfg: Any, strategy: Any, path: str, kwargs: dict[str, Any]) -> nn.Module:
    """4-bit NF4 base (bitsandbytes, CUDA only) + LoRA adapters, as in the QLoRA paper.
    Preflight refuses this without CUDA and bitsandbytes; it is not exercised on CPU CI."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    kwargs = {**kwargs, "quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)}
    model = strategy.load_model(path, **kwargs)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)
    lora_cfg = cfg.peft.model_copy(update={"type": "lora"})
    model = apply_lora(model, lora_cfg, strategy.peft_task_type)
    init_adapters_deterministic(model, cfg.train.seed)
    return model


def build_model_skeleton(cfg: Any, strategy: Any) -> nn.Module:
    """The architecture without reading weights (call under a meta-device context)."""
    from transformers import AutoConfig

    path = resolve_model_path(cfg.model.path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    return strategy.model_from_config(config, **model_kwargs(cfg))


def finish_model(model: nn.Module, cfg: Any, *, init_adapters: bool = True,
                 task_type: str = "CAUSAL_LM") -> nn.Module:
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.freeze is not None:
        freeze_parameters(model, cfg.train.freeze)
    if cfg.peft is not None:
        model = apply_lora(model, cfg.peft, task_type)
        if init_adapters:
            init_adapters_deterministic(model, cfg.train.seed)
    return model


def apply_lora(model: nn.Module, peft_cfg: Any, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap with LoRA adapters. ``task_type`` tells peft which head to train in full
    (SEQ_CLS: the score/classifier head is new, so it is trained, not adapted)."""
    from peft import LoraConfig, get_peft_model

    if peft_cfg.type == "qlora":
        raise RuntimeError("qlora must be loaded 4-bit; see launcher.run.preflight")
    # peft leaves a sequence classifier's head out of 'all-linear' but not a token classifier's
    # (PPO's value head): a head both adapted and trained in full is an error, so leave it out.
    exclude = ["score", "classifier"] if task_type == "TOKEN_CLS" and peft_cfg.target_modules == \
        "all-linear" else None
    lora = LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules=peft_cfg.target_modules,
        exclude_modules=exclude,
        task_type=task_type,
    )
    model = get_peft_model(model, lora)
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"  # renamed in transformers 5 (the old name warns)
    if getattr(model, flag, False):
        model.enable_input_require_grads()
    return model


def canonical_name(name: str) -> str:
    """A parameter's name with PEFT's wrapping removed, the same before and after LoRA."""
    for part in ("base_model.model.", "modules_to_save.default.", "original_module.", "base_layer."):
        name = name.replace(part, "")
    return name


def _seeded(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, zlib.crc32(canonical_name(name).encode())))


@torch.no_grad()
def init_adapters_deterministic(model: nn.Module, seed: int, skip: set[str] | None = None, *,
                                layout: TensorLayout = WHOLE) -> None:
    """LoRA A ~ kaiming-uniform (as peft), B = 0, from a per-name seeded generator.

    With ``skip`` (the names a sharded backend loaded from the checkpoint), every other
    parameter is new too (a classification or reward head): it gets N(0, initializer_range)
    weights and zero biases from the same per-name generator. Every backend, and every way
    of building the model, then starts from identical weights. ``layout``: the backend whose
    sharded parameters these are (each value is drawn whole, then the backend keeps its part).
    """
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    for name, param in model.named_parameters():
        if skip is not None and name in skip:
            continue
        is_lora = "lora_" in name
        if not is_lora and skip is None:
            continue
        shape = layout.param_shape(param)
        full = torch.empty(shape, dtype=torch.float32)
        if "lora_A" in name or "lora_embedding_A" in name:
            bound = 1.0 / math.sqrt(shape[1]) if len(shape) > 1 else 0.0  # kaiming_uniform(a=sqrt(5))
            full.uniform_(-bound, bound, generator=_seeded(seed, name))
        elif is_lora or len(shape) < 2:
            full.zero_()
        else:
            full.normal_(0.0, std, generator=_seeded(seed, name))
        layout.write_full(param, full)
        param._ftl_init = True  # type: ignore[attr-defined]


@torch.no_grad()
def init_new_weights(model: nn.Module, seed: int, names: list[str]) -> None:
    """Re-initialise weights ``from_pretrained`` reported missing (new heads) the way the
    sharded backends do, so a replicated and a sharded run start identical."""
    wanted = {canonical_name(n) for n in names}
    loaded = {n for n, _ in model.named_parameters() if canonical_name(n) not in wanted}
    init_adapters_deterministic(model, seed, loaded)


def freeze_parameters(model: nn.Module, freeze: Any) -> list[str]:
    """Freeze by fnmatch pattern, decoder-layer range and/or input embeddings."""
    frozen = []
    lo = hi = None
    if freeze.layers:
        lo_s, _, hi_s = freeze.layers.partition("-")
        lo, hi = int(lo_s), int(hi_s or lo_s)
    embed = model.get_input_embeddings() if freeze.embeddings else None
    embed_ids = {id(p) for p in embed.parameters()} if embed is not None else set()
    for name, p in model.named_parameters():
        hit = any(fnmatch.fnmatch(name, pat) for pat in freeze.patterns) or id(p) in embed_ids
        if lo is not None:
            m = re.search(r"\.layers\.(\d+)\.", name)
            hit = hit or bool(m and lo <= int(m.group(1)) <= hi)
        if hit:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def count_parameters(model: nn.Module, layout: TensorLayout = WHOLE) -> tuple[int, int]:
    """(all, trainable) parameter counts at full size, however ``layout`` shards them."""
    total = sum(layout.param_numel(p) for p in model.parameters())
    trainable = sum(layout.param_numel(p) for p in model.parameters() if p.requires_grad)
    return total, trainable
