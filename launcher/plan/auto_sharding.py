"""``sharding.backend: auto``: the least communicating sharding whose predicted memory fits.

Why this order: each step trades communication (and CPU time) for memory. ``ddp`` all-reduces
the gradients once; ``zero1`` and ``zero2`` move about the same volume but shard optimizer states,
then gradients; ``zero3`` adds an all-gather of the weights in forward and again in backward
(1.5x DDP's volume); offloading the optimizer moves gradients and weights over PCIe each step
and runs Adam on the CPU; offloading the parameters too streams every weight over PCIe twice a
step. The first that fits is the fastest that runs. The choice is a pure function of the config
(model architecture, batch, ``resources``), so every rank and every later ``ftl plan`` makes the
same one; the plan records it with what each candidate needed.

When no candidate fits, ``auto`` may also turn on the memory switches the user left at their
defaults, cheapest first: ``model.cross_entropy: chunked`` (recomputes the LM head per chunk
in backward, a few percent of a step) and then ``model.activation_offload`` (PCIe traffic
every step). The plan says so (``sharding.memory_switches``).

``ftl run`` chooses once, when it prepares the run (``prepared_config``): the run's
``config.yaml`` holds the chosen sharding and switches, ``plan.json`` that ``auto`` chose them
and what every candidate needed. Every rank, a resume and ``ftl export`` read the chosen
backend's name from the config; none chooses again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from launcher.backends.registry import AUTO, resolve_sharding
from launcher.core.errors import Problem, UserError
from launcher.core.lazy import load_object
from launcher.plan import memory_model as mm
from launcher.plan.facts import count_on_meta
from launcher.plan.sizing import (
    LOW_HEADROOM,
    full_node_ranks,
    memory_section,
    need_label,
    run_label,
    uses_gpus,
    where_label,
)

log = logging.getLogger(__name__)

#: (label, sharding settings), least communication first.
CANDIDATES: tuple[tuple[str, dict[str, str]], ...] = (
    ("ddp", {"backend": "ddp"}),
    ("zero1", {"backend": "zero1"}),
    ("zero2", {"backend": "zero2"}),
    ("zero3", {"backend": "zero3"}),
    ("zero3+offload_optimizer", {"backend": "zero3", "offload_optimizer": "cpu"}),
    ("zero3_offload", {"backend": "zero3_offload"}),
)
#: The largest cluster the no-fit message searches (nodes of resources.gpus_per_node GPUs).
MAX_NODES = 1024


@dataclass(frozen=True)
class Choice:
    """What ``auto`` chose for a config: the candidate, the memory switches it turned on, the
    config with both in place (what the run is prepared with) and every candidate it tried."""

    label: str
    settings: dict[str, str]
    switches: dict[str, Any]
    config: Any
    tried: list[dict[str, Any]]


def candidate_section(cfg: Any, settings: dict[str, str]) -> Any:
    """``cfg.sharding`` with a candidate's settings in place of everything auto decides."""
    return cfg.sharding.model_copy(update={"zero_stage": None, "offload_optimizer": None,
                                           "offload_params": None, "deepspeed_config": None, **settings})


def evaluate(cfg: Any, counts: dict[str, Any], settings: dict[str, str], world: int | None = None) -> dict:
    """The plan's memory section for one candidate (optionally at another world size)."""
    return memory_section(cfg, counts, resolve_sharding(candidate_section(cfg, settings)), world)


def switch_levels(cfg: Any) -> list[dict[str, Any]]:
    """``model`` settings auto may turn on, cheapest first (only those left at their defaults)."""
    levels: list[dict[str, Any]] = [{}]
    if cfg.model.cross_entropy == "plain":
        levels.append({"cross_entropy": "chunked"})
    if not cfg.model.activation_offload:
        levels.append({**levels[-1], "activation_offload": True})
    return levels


def with_switches(cfg: Any, switches: dict[str, Any]) -> Any:
    """``cfg`` with ``model`` memory switches set (itself when there are none)."""
    if not switches:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=switches)})


def choose_sharding(cfg: Any, counts: dict[str, Any] | None = None) -> Choice:
    """The first candidate that fits (with the fewest memory switches). Raises a UserError on
    ``sharding.backend`` naming the smallest cluster that would fit when none does."""
    counts = counts or count_on_meta(cfg)
    tried = []
    for switches in switch_levels(cfg):
        switched = with_switches(cfg, switches)
        for label, settings in CANDIDATES:
            memory = evaluate(switched, counts, settings)
            tried.append({**_summary(label, memory), **({"switches": switches} if switches else {})})
            if memory["fits"]:
                concrete = switched.model_copy(update={"sharding": candidate_section(cfg, settings)})
                return Choice(label, settings, switches, concrete, tried)
    raise UserError(_no_fit(cfg, counts, tried))


def record_choice(plan: dict[str, Any], choice: Choice) -> dict[str, Any]:
    """``plan`` (made for ``choice.config``) as the plan of the ``auto`` config: its sharding
    section says what auto chose, which switches it turned on and what each candidate needed."""
    plan["sharding"] = {"backend": AUTO, "chosen": choice.label, "settings": choice.settings,
                        "resolved": plan["sharding"]["resolved"], "tried": choice.tried}
    if choice.switches:
        plan["sharding"]["memory_switches"] = {f"model.{k}": v for k, v in choice.switches.items()}
        turned = ", ".join(f"model.{k}: {v}" for k, v in choice.switches.items())
        plan["memory"]["warnings"].insert(0, f"no sharding fits as configured: auto turned on "
                                          f"{turned} (written to the run's config.yaml)")
    return plan


def apply_chosen_switches(cfg: Any, plan: dict[str, Any]) -> Any:
    """The config a run is prepared with: ``cfg`` plus the memory switches ``auto`` turned on."""
    switches = plan.get("sharding", {}).get("memory_switches") or {}
    return with_switches(cfg, {k.split(".", 1)[1]: v for k, v in switches.items()})


def prepared_config(cfg: Any, plan: dict[str, Any]) -> Any:
    """The config ``ftl run`` writes into the run folder: with ``backend: auto``, the sharding
    and memory switches ``plan`` chose (so no rank, resume or export chooses again); any other
    config as it is."""
    if plan.get("sharding", {}).get("backend") != AUTO or cfg.sharding.backend != AUTO:
        return cfg
    prepared = apply_chosen_switches(cfg, plan)
    return prepared.model_copy(update={"sharding": candidate_section(cfg, plan["sharding"]["settings"])})


def chosen_section(cfg: Any) -> Any:
    """The sharding section ``auto`` stands for in ``cfg``."""
    choice = choose_sharding(cfg)
    log.info("sharding.backend auto: chose %s", choice.label)
    return candidate_section(cfg, choice.settings)


def concrete_config(cfg: Any) -> Any:
    """``cfg`` with ``auto`` replaced by the sharding it chose (unchanged otherwise): what
    DeepSpeed-config validation and the export of an older run folder read."""
    if cfg.sharding.backend != AUTO:
        return cfg
    return cfg.model_copy(update={"sharding": chosen_section(cfg)})


def auto_backend(cfg: Any, ctx: Any) -> Any:
    """The registry's impl for ``auto``: the chosen backend, built with the chosen settings.
    Configs ``ftl run`` prepared never reach it (their config names the chosen backend); it
    serves code that builds a backend straight from a config with ``auto`` (tests, benchmarks)."""
    concrete = concrete_config(cfg)
    return load_object(resolve_sharding(concrete.sharding).impl)(concrete, ctx)


# ---------------------------------------------------------------------------- advice


def smallest_cluster(cfg: Any, counts: dict[str, Any]) -> tuple[int, str, dict] | None:
    """(world size, label, memory) of the smallest GPU cluster on which a candidate fits."""
    if not uses_gpus(cfg):
        return None
    per_node = full_node_ranks(cfg)
    current = cfg.resources.num_workers
    viable = [(label, s) for label, s in CANDIDATES if evaluate(cfg, counts, s, per_node * MAX_NODES)["fits"]]
    worlds = [w for w in range(current + 1, per_node + 1)]
    worlds += [per_node * n for n in range(2, MAX_NODES + 1) if per_node * n > current]
    for world in worlds:
        for label, settings in viable:
            memory = evaluate(cfg, counts, settings, world)
            if memory["fits"]:
                return world, label, memory
    return None


def cluster_label(cfg: Any, world: int) -> str:
    nodes = math.ceil(world / full_node_ranks(cfg))
    return f"{world} GPUs on one node" if nodes == 1 else f"{nodes} nodes ({world} GPUs)"


def advice(cfg: Any, counts: dict[str, Any], memory: dict[str, Any], label: str) -> list[str]:
    """Plain-language warnings for a plan: what does not fit, and what would."""
    if memory["fits"]:
        gpu = memory.get("per_gpu")
        if gpu and gpu["headroom_bytes"] < LOW_HEADROOM * gpu["limit_bytes"]:
            return [f"only {mm.gb(gpu['headroom_bytes'])} of {mm.gb(gpu['limit_bytes'])} per GPU left: "
                    "the prediction is an estimate, so out-of-memory errors are possible"]
        return []
    text = f"{run_label(cfg, counts)} with {label} on {where_label(cfg)} does not fit ({need_label(memory)})"
    for other, settings in CANDIDATES:
        if other != label and evaluate(cfg, counts, settings)["fits"]:
            return [f"{text}; {other} fits on the same hardware (sharding.backend: auto picks it)"]
    found = smallest_cluster(cfg, counts)
    if found:
        world, other, _ = found
        return [f"{text}; {other} over {cluster_label(cfg, world)} fits"]
    return [f"{text}; {_floor(cfg, counts)}"]


def _summary(label: str, memory: dict[str, Any]) -> dict[str, Any]:
    out = {"label": label, "fits": memory["fits"],
           "cpu_bytes_per_node": memory["per_node_cpu"]["total_bytes"]}
    if "per_gpu" in memory:
        out["gpu_bytes"] = memory["per_gpu"]["total_bytes"]
    return out


def _need(tried: dict[str, Any]) -> str:
    """What held a candidate back: its GPU need, else its host-RAM need."""
    if "gpu_bytes" in tried and (tried["fits"] or tried["gpu_bytes"] > tried.get("gpu_limit", 0)):
        return f"{tried['label']} {mm.gb(tried['gpu_bytes'])}/GPU"
    return f"{tried['label']} {mm.gb(tried['cpu_bytes_per_node'])} host RAM/node"


def _remedies(cfg: Any) -> str:
    """The knobs that lower per-rank memory and are not turned yet."""
    out = []
    if cfg.peft is None:
        out.append("train LoRA adapters (peft:)")
    if not cfg.model.gradient_checkpointing:
        out.append("enable model.gradient_checkpointing")
    if cfg.model.cross_entropy == "plain":
        out.append("set model.cross_entropy: chunked")
    if not cfg.model.activation_offload:
        out.append("set model.activation_offload: true")
    out.append("lower train.micro_batch_size or data.max_length")
    return ", ".join(out)


def _floor(cfg: Any, counts: dict[str, Any]) -> str:
    """Why nothing fits at any size: per-rank memory that no sharding divides."""
    memory = evaluate(cfg, counts, CANDIDATES[-1][1], full_node_ranks(cfg) * MAX_NODES)
    gpu = memory["roles"]["policy"]["gpu"]
    unshardable = sum(gpu.get(k, 0) for k in ("activations", "logits", "autocast_weight_copies"))
    return (f"no cluster up to {MAX_NODES} nodes fits: activations and logits alone need "
            f"{mm.gb(unshardable)} per rank; {_remedies(cfg)}")


def _no_fit(cfg: Any, counts: dict[str, Any], tried: list[dict[str, Any]]) -> Problem:
    limit = int(cfg.resources.gpu_memory_gb * mm.GB)
    needs = ", ".join(_need({**t, "gpu_limit": limit}) for t in tried if "switches" not in t)
    switched = [t["switches"] for t in tried if "switches" in t]
    if switched:
        needs += "; also with " + ", ".join(f"model.{k}: {v}" for k, v in switched[-1].items())
    message = (f"auto found no sharding for a {run_label(cfg, counts)} that fits {where_label(cfg)} "
               f"(needs: {needs})")
    found = smallest_cluster(cfg, counts)
    if found:
        world, label, _ = found
        hint = (f"the smallest cluster that fits is {cluster_label(cfg, world)} with {label}: set "
                f"resources.num_workers: {world}; or {_remedies(cfg)}")
    elif "gpu_bytes" not in tried[0]:
        hint = f"raise resources.cpu_memory_gb if the hosts have more RAM; or {_remedies(cfg)}"
    else:
        hint = _floor(cfg, counts)
    return Problem("sharding.backend", message, hint)
