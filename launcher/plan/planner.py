"""The plan for a run: workers, placement, batch arithmetic, exact parameter counts and the
predicted memory of every rank.

Parameter counts come from instantiating the architecture on the meta device (no weights are
read or allocated), so they are exact for any size, 70B included. The architecture is read
from ``model.path``; a hub id whose config ftl bundles (``launcher/plan/archs``) is planned from
that file, so planning needs neither weights nor network. Memory comes from
``launcher.plan.memory_model`` (pure arithmetic); the plan's ``memory`` section is keyed by role
(``policy`` today; ``reference``, ``reward``, ``critic``, ``rollout`` slot in beside it) and
totals what each GPU and each node's host RAM must hold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.plan import memory_model as mm
from launcher.plan.roles import has_roles, resident_reference, rl_gpus, rl_roles

#: CUDA context, NCCL buffers and allocator fragmentation: a flat allowance per GPU.
GPU_RESERVE_BYTES = 2 * mm.GB
#: Below this share of free GPU memory the plan warns that the prediction leaves little margin.
LOW_HEADROOM = 0.05


def planning_model_path(path: str) -> str:
    """Where the architecture is read from: a builtin or local folder as is; else a bundled
    config.json when the hub id is known; else the hub id (HF cache or hub)."""
    from launcher.models.tiny import is_builtin, resolve_model_path
    from launcher.plan.archs import bundled_config_dir

    if is_builtin(path):
        return resolve_model_path(path)
    if Path(path).expanduser().exists():
        return path
    bundled = bundled_config_dir(path)
    return str(bundled) if bundled else path


def _read_config(cfg: Any) -> tuple[Any, str]:
    from transformers import AutoConfig

    from launcher.plan.archs import bundled_names

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

    from launcher.backends.fsdp2 import decoder_layers

    config, source = _read_config(cfg)
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
        "shape": _dims(config),
    }


def _persistence_thresholds(cfg: Any) -> tuple[int, int]:
    """ZeRO-3's ``stage3_param_persistence_threshold`` / ``stage3_model_persistence_threshold``
    (DeepSpeed's defaults: 1e5 elements, unlimited), as an expert ``deepspeed_config`` may set them."""
    import sys

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


def _dims(config: Any) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------- memory


def model_shape(counts: dict[str, Any]) -> mm.ModelShape:
    d = counts["shape"]
    missing = [k for k in ("hidden_size", "num_attention_heads", "head_dim", "vocab_size") if not d.get(k)]
    if missing:
        raise UserError(Problem("model.path", f"the model's config has no {', '.join(missing)}: ftl cannot "
                                "size its activations", "plan a Llama-style causal LM (hidden_size, "
                                "num_attention_heads, vocab_size in config.json)"))
    layers = counts["decoder_layers"]
    return mm.ModelShape(
        params=counts["total"], trainable=counts["trainable"],
        layers=layers["count"] or d["num_hidden_layers"] or 0, hidden=d["hidden_size"],
        intermediate=d["intermediate_size"], heads=d["num_attention_heads"],
        kv_heads=d["num_key_value_heads"], head_dim=d["head_dim"], vocab=d["vocab_size"],
        largest_module=counts["largest_module"]["parameters"], largest_block=layers["largest"],
        outside_blocks=layers["outside"], tied_embeddings=d["tie_word_embeddings"],
        zero3_persistent=counts.get("zero3_persistent", {}).get("parameters", 0),
    )


def workload(cfg: Any) -> mm.Workload:
    return mm.Workload(micro_batch=cfg.train.micro_batch_size, seq_len=cfg.data.max_length,
                       dtype=cfg.model.dtype, gradient_checkpointing=cfg.model.gradient_checkpointing,
                       attention=cfg.model.attn_implementation, grad_accum=cfg.grad_accum,
                       cross_entropy=cfg.model.cross_entropy, ce_chunk_tokens=cfg.model.ce_chunk_tokens,
                       activation_offload=cfg.model.activation_offload,
                       sp_size=getattr(cfg.sharding, "sp_size", 1) or 1)


def uses_gpus(cfg: Any) -> bool:
    return cfg.resources.gpus_per_worker > 0


def gpus_per_node(cfg: Any) -> int:
    slurm = cfg.cluster.slurm.gpus_per_node if cfg.cluster.target == "slurm" else 0
    return cfg.resources.gpus_per_node or slurm or 8


def full_node_ranks(cfg: Any) -> int:
    """Ranks a full node holds: GPUs per node / GPUs per rank; CPU runs: all ranks on
    ``cluster.slurm.nodes`` nodes (or one machine)."""
    res = cfg.resources
    if uses_gpus(cfg):
        return max(1, int(gpus_per_node(cfg) // max(res.gpus_per_worker, 1)))
    nodes = cfg.cluster.slurm.nodes if cfg.cluster.target == "slurm" else 1
    return max(1, math.ceil(res.num_workers / nodes))


def layout(cfg: Any, resolved: Any, world: int | None = None) -> mm.Layout:
    world = world or cfg.resources.num_workers
    return mm.Layout(kind=resolved.kind, world=world, ranks_per_node=min(world, full_node_ranks(cfg)),
                     zero_stage=resolved.zero_stage if resolved.kind == "deepspeed" else 0,
                     offload_optimizer=resolved.offload_optimizer == "cpu",
                     offload_params=resolved.offload_params == "cpu",
                     reshard_after_forward=resolved.reshard_after_forward)


def memory_section(cfg: Any, counts: dict[str, Any], resolved: Any,
                   world: int | None = None) -> dict[str, Any]:
    """Per-role terms, per-GPU and per-node totals and whether they fit (no warnings)."""
    lay = layout(cfg, resolved, world)
    shape, work = model_shape(counts), workload(cfg)
    roles = {"policy": mm.policy_memory(shape, work, lay)}
    reference = resident_reference(cfg, shape, work)
    if reference is not None:
        roles["reference"] = reference
    gpw = cfg.resources.gpus_per_worker
    ranks_per_gpu = max(1, int(1 / gpw)) if 0 < gpw < 1 else 1  # fractional GPUs: ranks share one
    rank_bytes = sum(r.gpu_bytes for r in roles.values())
    extra: dict[str, Any] = {}
    if has_roles(cfg):
        others = rl_roles(cfg, shape, work, lay)
        roles.update({name: mem for name, (mem, _) in others.items()})
        colocate = cfg.method_options().placement == "colocate"
        # separate: each role on its own GPUs, so the fullest one decides; colocate: one GPU
        # holds an actor of every role.
        rank_bytes = sum(r.gpu_bytes for r in roles.values()) if colocate \
            else max(r.gpu_bytes for r in roles.values())
        extra = {"placement": "colocate" if colocate else "separate",
                 "gpus_total": rl_gpus(cfg),
                 "gpus_per_role": {"policy": cfg.resources.num_workers * gpw,
                                   **{name: g for name, (_, g) in others.items()}}}
    cpu_bytes = sum(r.cpu_bytes for r in roles.values())
    out: dict[str, Any] = {
        "units": "bytes; gpu terms per rank, cpu terms per node (GB = 10^9 bytes)",
        "layout": {"kind": lay.kind, "zero_stage": lay.zero_stage, "offload_optimizer": lay.offload_optimizer,
                   "offload_params": lay.offload_params, "world_size": lay.world,
                   "ranks_per_node": lay.ranks_per_node, "nodes": lay.nodes},
        "roles": {name: role.as_dict() for name, role in roles.items()},
        **extra,
    }
    cpu_limit = int(cfg.resources.cpu_memory_gb * mm.GB)
    if uses_gpus(cfg):
        total = ranks_per_gpu * rank_bytes + GPU_RESERVE_BYTES
        limit = int(cfg.resources.gpu_memory_gb * mm.GB)
        out["device"] = "gpu"
        out["per_gpu"] = {"roles_bytes": ranks_per_gpu * rank_bytes, "reserve_bytes": GPU_RESERVE_BYTES,
                          "total_bytes": total, "limit_bytes": limit, "headroom_bytes": limit - total,
                          "fits": total <= limit}
        node_total = cpu_bytes
    else:  # the "device" is the host: every rank's bytes land in the node's RAM
        out["device"] = "cpu"
        out["per_rank_bytes"] = rank_bytes
        node_total = lay.ranks_per_node * rank_bytes + cpu_bytes
    out["per_node_cpu"] = {"total_bytes": node_total, "limit_bytes": cpu_limit,
                           "headroom_bytes": cpu_limit - node_total, "fits": node_total <= cpu_limit}
    out["fits"] = out["per_node_cpu"]["fits"] and out.get("per_gpu", {}).get("fits", True)
    return out


def run_label(cfg: Any, counts: dict[str, Any]) -> str:
    """e.g. '70.6B-parameter full sft' / '8.0B-parameter LoRA dpo'."""
    return f"{counts['total'] / 1e9:.1f}B-parameter {'LoRA' if cfg.peft else 'full'} {cfg.method}"


def where_label(cfg: Any, world: int | None = None) -> str:
    world = world or cfg.resources.num_workers
    if uses_gpus(cfg):
        return f"{world} x {cfg.resources.gpu_memory_gb:g} GB GPUs"
    return f"{world} CPU workers ({cfg.resources.cpu_memory_gb:g} GB host RAM per node)"


def need_label(memory: dict[str, Any]) -> str:
    if "per_gpu" in memory and not memory["per_gpu"]["fits"]:
        return f"needs {mm.gb(memory['per_gpu']['total_bytes'])} per GPU"
    return f"needs {mm.gb(memory['per_node_cpu']['total_bytes'])} host RAM per node"


# ---------------------------------------------------------------------------- the plan


def make_plan(cfg: Any, *, with_params: bool = True, counts: dict[str, Any] | None = None) -> dict[str, Any]:
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
            "sp_size": cfg.sharding.sp_size,
            "data_parallel": cfg.data_parallel_size,
            "global_batch_size": cfg.global_batch,
            "max_length": cfg.data.max_length,
            "tokens_per_step_max": cfg.global_batch * cfg.data.max_length,
        },
        "steps": cfg.train.max_steps,
    }
    if not with_params:
        return plan
    from launcher.backends.registry import AUTO, resolve_sharding

    counts = counts or count_on_meta(cfg)
    if cfg.sharding.backend == AUTO:
        from launcher.plan.auto_sharding import choose_sharding

        return choose_sharding(cfg, counts=counts)[1]
    plan["parameters"] = counts
    resolved = resolve_sharding(cfg.sharding)
    plan["sharding"]["resolved"] = _resolved_dict(resolved)
    memory = memory_section(cfg, counts, resolved)
    from launcher.plan.auto_sharding import advice

    memory["warnings"] = advice(cfg, counts, memory, label=cfg.sharding.backend)
    plan["memory"] = memory
    return plan


def _resolved_dict(resolved: Any) -> dict[str, Any]:
    return {"kind": resolved.kind, "zero_stage": resolved.zero_stage,
            "offload_optimizer": resolved.offload_optimizer, "offload_params": resolved.offload_params}
