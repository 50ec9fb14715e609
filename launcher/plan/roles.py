"""The roles a run holds besides the policy, as the planner sees them.

Two kinds: a frozen reference resident on every policy rank (DPO/KTO with ``reference: model``:
the method's options say so through ``keeps_reference_model()``), and roles that run in actor
groups of their own (online RL: critic, reference, reward, rollout). The second are sized by the
method itself: its ``StrategySpec.role_plan`` names a module that defines

    role_memory(cfg, shape, work, layout) -> {role: (RoleMemory per actor, GPUs in total)}
    role_gpus(cfg) -> float     GPUs the whole run asks for, the trainer's included
    colocated(cfg) -> bool      every role shares the trainer's GPUs

(``strategies.ppo.planning``). The planner reaches it through the strategy registry, so
``launcher.plan`` knows no method by name.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType
from typing import Any

from launcher.core.lazy import load_object
from launcher.plan import memory_model as mm
from strategies import STRATEGIES


def _role_plan(cfg: Any) -> ModuleType | None:
    hook = STRATEGIES.get(cfg.method).role_plan
    return load_object(hook) if hook else None


def has_roles(cfg: Any) -> bool:
    """A method run by a controller over several actor groups (online RL), not one SPMD group."""
    return STRATEGIES.get(cfg.method).role_plan is not None


def role_memory(cfg: Any, shape: mm.ModelShape, work: mm.Workload, lay: mm.Layout
                ) -> dict[str, tuple[mm.RoleMemory, float]]:
    """role -> (its memory per actor, GPUs it uses in total), for a method with roles."""
    return _role_plan(cfg).role_memory(cfg, shape, work, lay)


def rl_gpus(cfg: Any) -> float:
    """GPUs the run asks for: the trainer's plus every other role's (placement: separate;
    colocated roles share the trainer's)."""
    return _role_plan(cfg).role_gpus(cfg)


def colocated(cfg: Any) -> bool:
    return _role_plan(cfg).colocated(cfg)


def resident_reference(cfg: Any, shape: mm.ModelShape, work: mm.Workload) -> mm.RoleMemory | None:
    """DPO/KTO with ``reference: model``: a frozen fp32 copy, whole on every rank, beside the
    policy (adapters and precomputed references cost no memory; cpo/orpo/simpo have none)."""
    if not cfg.method_options().keeps_reference_model():
        return None
    replicated = mm.Layout(kind="ddp")
    mem = mm.frozen_role_memory(replace(shape, trainable=0), replace(work, dtype="fp32"), replicated)
    mem.notes.append("a frozen fp32 copy on every rank; reference: precomputed needs no memory")
    return mem
