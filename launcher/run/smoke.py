"""``ftl run CONFIG --smoke``: the same config, shrunk to run on this machine in a minute.

A 70B config should be exercised end to end before any cluster time is spent: method, data
format, sharding backend, PEFT, checkpointing and export. The smoke config keeps all of that
and changes only what cannot run here:

- the model becomes a random model of the same architecture family (same model_type, rope,
  grouped-query ratio, tied or untied embeddings) with 2 layers and hidden size 128, and
  ftl's builtin byte-level BPE tokenizer with a ChatML template (the real tokenizer is not
  available offline);
- data that this machine cannot read is replaced by the builtin synthetic task of the same
  format (chats, preference pairs, labelled text, pairs, prompts);
- a few steps, 2 CPU workers on the embedded Ray, fp32 without a GPU, qlora -> lora (4-bit
  needs CUDA), checkpoints every step into ./runs, W&B offline.

Every substitution is listed in the run's ``smoke.json`` so nothing is silently different.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from launcher.core.paths import ftl_home
from launcher.core.registry import BUILTIN_PREFIX

SMOKE_LAYERS = 2
SMOKE_HIDDEN = 128
SMOKE_INTERMEDIATE = 256
SMOKE_VOCAB = 384
#: data format -> builtin task of that format
SMOKE_TASKS = {"messages": "reverse", "prompt_completion": "reverse", "text": "letters-text",
               "preference": "prefs-reverse", "feedback": "feedback-reverse", "classification": "topics",
               "pairs": "pairs-reverse", "prompt": "prompts-letters"}


def shrunk_config(config: Any) -> Any:
    """The architecture at toy size, keeping what distinguishes the family."""
    heads = getattr(config, "num_attention_heads", 4) or 4
    kv = getattr(config, "num_key_value_heads", None) or heads
    group = max(1, heads // kv)
    new_kv = 1 if group >= 4 else 2
    new_heads = new_kv * group
    updates = {"num_hidden_layers": SMOKE_LAYERS, "hidden_size": SMOKE_HIDDEN,
               "intermediate_size": SMOKE_INTERMEDIATE, "num_attention_heads": new_heads,
               "num_key_value_heads": new_kv, "head_dim": SMOKE_HIDDEN // new_heads}
    for key, value in updates.items():
        if hasattr(config, key) or key != "head_dim":
            setattr(config, key, value)
    for key in ("layer_types", "quantization_config"):
        if hasattr(config, key):
            delattr(config, key)
    return config


def smoke_model(arch_path: str) -> str:
    """A saved random model of ``arch_path``'s family at toy size (made once, deterministic)."""
    from transformers import AutoConfig

    from launcher.models.tiny import build_tokenizer, save_random_model
    from launcher.plan.facts import planning_model_path

    config = shrunk_config(AutoConfig.from_pretrained(planning_model_path(arch_path)))
    tokenizer = build_tokenizer(SMOKE_VOCAB)
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = (
        tokenizer.pad_token_id, tokenizer.eos_token_id, None)
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:10]
    folder = ftl_home() / "models" / f"smoke-{config.model_type}-{digest}"
    if not (folder / "config.json").exists():
        save_random_model(config, tokenizer, folder)
    return str(folder)


def _readable_here(path: str | None) -> bool:
    if not path or path.startswith(BUILTIN_PREFIX):
        return True
    return Path(path).expanduser().exists()


def smoke_data(cfg: Any, changes: list[str]) -> dict[str, Any]:
    from strategies import STRATEGIES

    fmt = STRATEGIES.get(cfg.method).formats[0]
    task = SMOKE_TASKS.get(fmt, "reverse")
    data = cfg.data.model_dump(mode="json")
    for section, rows in (("train", 256), ("eval", 16)):
        for i, source in enumerate(data[section]):
            if not _readable_here(source["path"]):
                changes.append(f"data.{section}.{i}.path: {source['path']} -> builtin:{task}")
                name = source.get("name") or Path(source["path"]).stem
                data[section][i] = {"path": f"builtin:{task}", "num_rows": rows, "name": name,
                                    "weight": source["weight"], "seed": i}
    data["max_length"] = min(data["max_length"], 64)
    return data


def smoke_config(cfg: Any, steps: int = 3) -> tuple[Any, list[str]]:
    """(validated smoke config, the list of substitutions made)."""
    import torch

    from launcher.config.load import config_to_dict, validate_config

    changes: list[str] = []
    data = config_to_dict(cfg)
    data["name"] = f"{cfg.name}-smoke"[:100]
    model = dict(data["model"])
    model["path"] = smoke_model(cfg.model.path)
    changes.append(f"model.path: {cfg.model.path} -> a random 2-layer, 128-wide model of the same "
                   f"architecture ({model['path']})")
    model["tokenizer"] = model["gguf_file"] = None
    if not torch.cuda.is_available() and model["dtype"] != "fp32":
        changes.append(f"model.dtype: {model['dtype']} -> fp32 (no GPU here)")
        model["dtype"] = "fp32"
    if model.get("cross_entropy") == "liger":  # smoke runs on CPU workers: Liger needs CUDA
        changes.append("model.cross_entropy: liger -> chunked (Liger's kernels need CUDA)")
        model["cross_entropy"] = "chunked"
    if model["attn_implementation"] == "flash_attention_2":
        changes.append("model.attn_implementation: flash_attention_2 -> sdpa")
        model["attn_implementation"] = "sdpa"
    data["model"] = model
    if data.get("peft") and data["peft"]["type"] == "qlora" and not torch.cuda.is_available():
        changes.append("peft.type: qlora -> lora (4-bit weights need CUDA)")
        data["peft"] = {**data["peft"], "type": "lora"}
    data["data"] = smoke_data(cfg, changes)
    if cfg.method == "classify" and any(c.startswith("data.") for c in changes):
        data["classify"] = {**data["classify"], "labels": ["low", "mid", "high"]}
        changes.append("classify.labels -> [low, mid, high] (the builtin task's labels)")
    data["train"] = {**data["train"], "max_steps": steps, "micro_batch_size": 2,
                     "global_batch_size": None, "warmup_steps": 0, "max_failures": 0}
    data["resources"] = {**data["resources"], "num_workers": 2, "gpus_per_worker": 0,
                         "cpus_per_worker": 1, "threads_per_worker": None}
    data["cluster"] = {"target": "local"}
    if cfg.sharding.sp_size > 2:
        data["sharding"] = {**data.get("sharding", {}), "sp_size": 2}
        changes.append(f"sharding.sp_size: {cfg.sharding.sp_size} -> 2 (the smoke run's 2 workers)")
    data["checkpoint"] = {**data["checkpoint"], "dir": "runs", "every_steps": 1, "keep": 1,
                          "save_final": True}
    data["logging"] = {**data["logging"], "every_steps": 1,
                       "wandb": {**data["logging"]["wandb"], "mode": "offline"}}
    data["eval"] = {**data["eval"], "every_steps": None, "max_batches": 2, "max_generate": 8,
                    "max_new_tokens": 8, "batch_size": 8}
    changes.append(f"train: {steps} steps x micro batch 2 on 2 CPU workers (local), checkpoint every "
                   "step into ./runs, W&B offline")
    from launcher.core.lazy import load_object

    adjust = SMOKE_ADJUST.get(cfg.method)
    if adjust is not None:
        load_object(adjust)(data, changes)
    return validate_config(data, f"{cfg.name} (smoke)"), changes


#: method -> "module:function(data, changes)" for method-specific substitutions (e.g. PPO roles)
SMOKE_ADJUST: dict[str, str] = {"ppo": "strategies.ppo.smoke:adjust", "grpo": "strategies.ppo.smoke:adjust"}
