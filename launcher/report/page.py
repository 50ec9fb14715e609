"""The report page: one HTML file a person opens with no network and nothing else.

Everything is inside the file: PNGs as ``data:image/png;base64`` URIs, CSS in a ``<style>``
element, no script, no font or stylesheet fetched from anywhere, so it can be mailed, copied
off an air-gapped cluster or attached to an issue and still show everything. Text from the run
(config, names, JSON) is HTML-escaped."""

from __future__ import annotations

import base64
import json
import time
from html import escape
from pathlib import Path
from typing import Any

from launcher.report.series import RunData

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #1d1d1f; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #666; margin-bottom: 16px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 6px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; text-align: center; }
table { border-collapse: collapse; background: #fff; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
td.num { text-align: right; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; overflow: auto; max-height: 480px;
      font-size: 12px; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
          vertical-align: middle; }
.runs li { list-style: none; margin: 2px 0; }
"""


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def fmt(value: Any) -> str:
    """A metric as a person reads it: 4 decimals for losses and rates, thousands separated for
    throughput and counts, 4 significant digits for the very small or large (learning rates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if 1e3 <= abs(value) < 1e9:
        return f"{value:,.1f}"
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e3 or value == 0 else f"{value:.4g}"


def _figure(png: Path, caption: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(fmt(c))}</td>' if isinstance(c, (int, float))
                         and not isinstance(c, bool) else f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _json(data: Any) -> str:
    return f"<pre>{escape(json.dumps(data, indent=2, default=str))}</pre>"


def _css_color(rgba: Any) -> str:
    r, g, b = (round(255 * c) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def runs_overview(runs: list[RunData], colors: dict[str, Any]) -> str:
    """A legend of runs (the colour of each run's lines) and their metrics before and after."""
    items = "".join(f'<li><span class="swatch" style="background:{_css_color(colors[r.name])}"></span>'
                    f"{escape(r.name)} <small>({escape(str(r.path))})</small></li>" for r in runs)
    keys = sorted({k for r in runs for k in ((r.summary or {}).get("final") or {})})
    rows = []
    for r in runs:
        s = r.summary or {}
        final, initial = s.get("final") or {}, s.get("initial") or {}
        rows.append([r.name, str(r.config.get("method", "-")), r.status, s.get("steps", "-"),
                     s.get("tokens_per_s", "-"),
                     *(f"{fmt(initial[k])} → {fmt(final[k])}" if k in initial and k in final
                       else fmt(final[k]) if k in final else "-" for k in keys)])
    header = ["run", "method", "status", "steps", "tokens/s", *keys]
    return f'<ul class="runs">{items}</ul>{_table(header, rows)}'


def summary_section(run: RunData) -> str:
    s = run.summary
    if not s:
        return "<p>No summary.json: the run did not finish (or is still running).</p>"
    scalars = [[k, v] for k, v in s.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    final, initial = s.get("final") or {}, s.get("initial") or {}
    metrics = [[k, initial.get(k, "-"), final[k]] for k in sorted(final)]
    return (_table(["field", "value"], scalars)
            + (f"<h3>held-out metrics, before and after</h3>{_table(['metric', 'before', 'final'], metrics)}"
               if metrics else "")
            + f"<details><summary>summary.json</summary>{_json(s)}</details>")


def plan_section(run: RunData, plan_png: Path | None) -> str:
    p = run.plan
    if not p:
        return "<p>No plan.json in this run folder.</p>"
    rows = []
    sharding = p.get("sharding") or {}
    rows.append(["sharding", sharding.get("chosen") or sharding.get("backend", "-")])
    rows.append(["workers", p.get("workers", "-")])
    batch = p.get("batch") or {}
    if batch:
        keys = ("micro_batch_size", "grad_accumulation", "global_batch_size")
        micro, accum, total = (batch.get(k) for k in keys)
        rows.append(["batch", f"{micro} micro x {accum} accum x {p.get('workers')} workers "
                              f"= {total} sequences/step"])
    rows.append(["steps", p.get("steps", "-")])
    params = p.get("parameters") or {}
    if params:
        rows += [["architecture", params.get("architecture", "-")], ["parameters", params.get("total", "-")],
                 ["trainable", params.get("trainable", "-")]]
    chart = _figure(plan_png, "memory per rank by role (the planner's prediction)") if plan_png else ""
    raw = f"<details><summary>plan.json</summary>{_json(p)}</details>"
    return _table(["what", "value"], rows) + chart + raw


def render_page(runs: list[RunData], curves: list[tuple[str, Path]], colors: dict[str, Any],
                plan_pngs: dict[str, Path]) -> str:
    """The whole page. ``curves``: (caption, PNG) in display order; ``plan_pngs``: run name ->
    its memory chart."""
    names = ", ".join(r.name for r in runs)
    title = f"ftl report: {names}" if len(runs) == 1 else f"ftl report: {len(runs)} runs compared"
    figures = "".join(_figure(png, caption) for caption, png in curves) or "<p>No metrics logged.</p>"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="meta">written {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}</div>',
        "<h2>runs</h2>", runs_overview(runs, colors),
        "<h2>curves</h2>" + (" <small>(one line per run)</small>" if len(runs) > 1 else ""),
        f'<div class="grid">{figures}</div>',
    ]
    for run in runs:
        head = f"<h2>{escape(run.name)}</h2>" if len(runs) > 1 else ""
        parts += [head, "<h3>summary</h3>", summary_section(run),
                  "<h3>plan</h3>", plan_section(run, plan_pngs.get(run.name)),
                  f"<h3>config</h3><details open><summary>config.yaml (resolved)</summary>"
                  f"<pre>{escape(run.config_text)}</pre></details>"]
    parts.append("</body></html>")
    return "\n".join(parts)
