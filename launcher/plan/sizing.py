"""The predicted memory of every rank, from model facts, the config and a resolved sharding.

Memory comes from ``launcher.plan.memory_model`` (pure arithmetic); the plan's ``memory``
section is keyed by role (``policy``; a resident ``reference``; online RL's ``critic``,
``reward``, ``rollout``... from the method's role planner, see ``launcher.plan.roles``) and
totals what each GPU and each node's host RAM must hold.
"""

from __future__ import annotations

import math
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.plan import memory_model as mm
from launcher.plan.roles import colocated, has_roles, resident_reference, rl_gpus, role_memory

#: CUDA context, NCCL buffers and allocator fragmentation: a flat allowance per GPU.
GPU_RESERVE_BYTES = 2 * mm.GB
#: Below this share of free GPU memory the plan warns that the prediction leaves little margin.
LOW_HEADROOM = 0.05


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
        others = role_memory(cfg, shape, work, lay)
        roles.update({name: mem for name, (mem, _) in others.items()})
        colocate = colocated(cfg)
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
