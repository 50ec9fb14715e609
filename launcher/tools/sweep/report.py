"""The sweep's results as a table on the terminal (``ftl sweep``'s last output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fmt(value: Any) -> str:
    """A value as a table cell or progress line shows it (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _status(trial: dict[str, Any], scheduler: str) -> str:
    if trial["error"]:
        return f"error: {trial['error']} (log: {trial['log']})"
    return f"stopped by {scheduler}" if trial["status"] == "stopped" else trial["status"]


def render_results(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = results["metric"]
    best_id = (results.get("best") or {}).get("trial_id")
    table = Table(title=f"sweep: {len(results['trials'])} trials, {metric} ({results['mode']})")
    table.add_column("trial")
    paths = [p.partition("=")[0] for p in results["params"]]
    for p in paths:
        table.add_column(p, justify="right")
    for col in (metric, "step"):
        table.add_column(col, justify="right")
    table.add_column("status")
    table.add_column("run folder", overflow="fold")
    for t in results["trials"]:
        mark = " *" if t["trial_id"] == best_id else ""
        table.add_row(t["trial_id"] + mark, *(fmt(t["params"].get(p)) for p in paths),
                      fmt(t["metric"]) if t["metric"] is not None else "-", str(t["step"] or "-"),
                      _status(t, results["scheduler"]),
                      Path(t["run_dir"]).name if t["run_dir"] else "-")
    console = Console()
    console.print(table)
    if results.get("best_config"):
        console.print(f"best: trial {best_id} ({metric} {fmt(results['best']['metric'])}); "
                      f"config: {results['best_config']}", soft_wrap=True, highlight=False)
    console.print(f"sweep folder: {results['sweep_dir']} (results.json)", soft_wrap=True, highlight=False)
