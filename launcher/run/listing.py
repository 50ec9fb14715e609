"""``ftl list``: what runs exist locally, how far they got, how they scored, and the shape of
their training loss as a sparkline (from the metrics file ``describe_runs`` reads anyway)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from launcher.metrics.jsonl import read_metrics
from launcher.report.sparkline import loss_values, sparkline
from launcher.run.rundir import list_runs


def describe_runs(runs_dir: str) -> list[dict[str, Any]]:
    rows = []
    for run in list_runs(runs_dir):
        cfg = run.raw_config() or {}
        summary = run.summary()
        metrics = read_metrics(run.metrics)
        last_step = max((m.get("step", 0) for m in metrics), default=0)
        if summary:
            status = "done"
        elif run.failures():
            status = "failed"
        else:
            status = "incomplete"
        rows.append({
            "run": str(run.path),
            "method": cfg.get("method"),
            "status": status,
            "step": summary["steps"] if summary else last_step,
            "max_steps": (cfg.get("train") or {}).get("max_steps"),
            "final": (summary or {}).get("final", {}),
            "loss_curve": sparkline(loss_values(metrics)),
        })
    return rows


def render_runs(rows: list[dict[str, Any]]) -> None:
    table = Table(title="runs")
    for col in ("run", "method", "status", "step", "train loss", "eval/loss", "eval/exact_match"):
        table.add_column(col, no_wrap=col == "train loss")
    for r in rows:
        f = r["final"]
        table.add_row(r["run"], str(r["method"]), r["status"], f"{r['step']}/{r['max_steps']}",
                      r["loss_curve"] or "-",
                      f"{f['eval/loss']:.4f}" if "eval/loss" in f else "-",
                      f"{f['eval/exact_match']:.3f}" if "eval/exact_match" in f else "-")
    Console().print(table)
