"""Render a plan as rich tables for ``ftl plan``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_plan(plan: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"plan: {plan['name']} ({plan['method']} on {plan['target']})",
                  show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("sharding", plan["sharding"]["backend"])
    table.add_row("workers", str(plan["workers"]))
    bundle = plan["placement"]["bundles"][0]
    table.add_row("per-worker bundle", ", ".join(f"{k}={v:g}" for k, v in bundle.items()))
    b = plan["batch"]
    table.add_row("batch", f"{b['micro_batch_size']} micro x {b['grad_accumulation']} accum x "
                  f"{plan['workers']} workers = {b['global_batch_size']} sequences/step")
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
