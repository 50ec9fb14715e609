"""The plan for a run: workers, placement, batch arithmetic, exact parameter counts
(``launcher.plan.facts``) and the predicted memory of every rank (``launcher.plan.sizing``);
with ``sharding.backend: auto``, the sharding ``launcher.plan.auto_sharding`` chose and what
every candidate needed.
"""

from __future__ import annotations

from typing import Any

from launcher.backends.registry import AUTO, resolve_sharding
from launcher.plan.auto_sharding import advice, choose_sharding, record_choice
from launcher.plan.facts import count_on_meta
from launcher.plan.sizing import memory_section


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
    counts = counts or count_on_meta(cfg)
    if cfg.sharding.backend == AUTO:
        choice = choose_sharding(cfg, counts=counts)
        return record_choice(make_plan(choice.config, counts=counts), choice)
    plan["parameters"] = counts
    resolved = resolve_sharding(cfg.sharding)
    plan["sharding"]["resolved"] = _resolved_dict(resolved)
    memory = memory_section(cfg, counts, resolved)
    memory["warnings"] = advice(cfg, counts, memory, label=cfg.sharding.backend)
    plan["memory"] = memory
    return plan


def _resolved_dict(resolved: Any) -> dict[str, Any]:
    return {"kind": resolved.kind, "zero_stage": resolved.zero_stage,
            "offload_optimizer": resolved.offload_optimizer, "offload_params": resolved.offload_params}
