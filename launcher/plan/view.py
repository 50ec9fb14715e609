"""Render a plan as rich tables for ``ftl plan``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# Display order of memory terms; unknown terms (future roles) follow in their own order.
TERM_ORDER = ["parameters", "gradients", "optimizer_states", "gathered_layers", "comm_buffers",
               "autocast_weight_copies", "activations", "logits", "kv_cache"]


def render_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"plan: {plan['name']} ({plan['method']} on {plan['target']})",
                  show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("sharding", _sharding(plan["sharding"]))
    table.add_row("workers", str(plan["workers"]))
    bundle = plan["placement"]["bundles"][0]
    table.add_row("per-worker bundle", ", ".join(f"{k}={v:g}" for k, v in bundle.items()))
    b = plan["batch"]
    sp = b.get("sp_size", 1)
    ranks = f"{plan['workers']} workers" if sp == 1 else \
        f"{b['data_parallel']} data-parallel groups (of {sp} ranks sharing each sequence)"
    table.add_row("batch", f"{b['micro_batch_size']} micro x {b['grad_accumulation']} accum x "
                  f"{ranks} = {b['global_batch_size']} sequences/step")
    table.add_row("max tokens/step", f"{b['tokens_per_step_max']:,}")
    table.add_row("steps", str(plan["steps"]))
    params = plan.get("parameters")
    if params:
        table.add_row("architecture", params["architecture"])
        table.add_row("parameters", f"{params['total']:,}")
        share = 100 * params["trainable"] / params["total"]
        table.add_row("trainable", f"{params['trainable']:,} ({share:.2f}%)")
        ll = params["largest_layer"]
        table.add_row("largest layer", f"{ll['name']} ({ll['parameters']:,})")
    console.print(table)
    if "memory" in plan:
        render_memory(plan["memory"], console)


def _sharding(sharding: dict[str, Any]) -> str:
    text = sharding["backend"]
    if "chosen" in sharding:
        text += f" -> {sharding['chosen']}"
        misses = [t["label"] for t in sharding["tried"] if not t["fits"] and "switches" not in t]
        if misses:
            text += f" ({', '.join(misses)}: do not fit)"
    for field, value in sharding.get("memory_switches", {}).items():
        text += f" + {field}: {value}"
    resolved = sharding.get("resolved")
    if resolved and resolved["kind"] == "deepspeed":
        text += (f"  [ZeRO-{resolved['zero_stage']}, offload optimizer: {resolved['offload_optimizer']}, "
                 f"params: {resolved['offload_params']}]")
    return text


def size_text(n: int) -> str:
    """Bytes in the largest decimal unit that keeps a digit before the point (GB = 10^9)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n} B"


def render_memory(memory: dict[str, Any], console: Console) -> None:
    """One column per role, one row per term; then per-GPU and per-node totals and warnings."""
    roles = memory["roles"]
    lay = memory["layout"]
    on_gpu = memory["device"] == "gpu"
    per = "terms per GPU" if on_gpu else "terms per rank (held in host RAM on CPU runs)"
    console.print(f"memory: {lay['world_size']} ranks, {lay['ranks_per_node']} per node, {lay['nodes']} "
                  f"node(s); {per}, host terms per node")
    if "gpus_per_role" in memory:
        split = ", ".join(f"{k} {v:g}" for k, v in memory["gpus_per_role"].items())
        console.print(f"roles ({memory['placement']}): {memory['gpus_total']:g} GPUs: {split}")
    table = Table()
    table.add_column("term", style="bold")
    for name in roles:
        table.add_column(name, justify="right")
    terms = [t for t in TERM_ORDER if any(t in r["gpu"] for r in roles.values())]
    terms += [t for r in roles.values() for t in r["gpu"] if t not in terms]
    for term in terms:
        table.add_row(term, *(size_text(r["gpu"][term]) if term in r["gpu"] else "" for r in roles.values()))
    totals = (size_text(r["total_gpu_bytes"]) for r in roles.values())
    table.add_row(f"total per {'GPU' if on_gpu else 'rank'}", *totals, style="bold")
    cpu_terms = sorted({t for r in roles.values() for t in r["cpu"]})
    for term in cpu_terms:
        table.add_row(f"host: {term}", *(size_text(r["cpu"].get(term, 0)) for r in roles.values()))
    table.add_row("host RAM per node", *(size_text(r["cpu_bytes"]) for r in roles.values()), style="bold")
    console.print(table)
    if on_gpu:
        g = memory["per_gpu"]
        console.print(_verdict("per GPU", g["total_bytes"], g["limit_bytes"], g["fits"],
                               f" (incl. {size_text(g['reserve_bytes'])} CUDA/NCCL reserve)"))
    c = memory["per_node_cpu"]
    console.print(_verdict("host RAM per node", c["total_bytes"], c["limit_bytes"], c["fits"], ""))
    for warning in memory.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _verdict(what: str, total: int, limit: int, fits: bool, extra: str) -> str:
    mark = "[green]fits[/green]" if fits else "[red]does not fit[/red]"
    headroom = size_text(limit - total)
    return f"{what}: {size_text(total)} of {size_text(limit)}{extra}: {mark} (headroom {headroom})"
