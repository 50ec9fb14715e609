"""PNG curves of metric series over steps: one figure per series, one line per run.

One small figure per series (not one big grid) so the HTML page can lay them out for any
screen, a PNG can be opened or pasted on its own, and a run with forty RL series stays
readable. Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, never
through ``pyplot``: no global figure state, no GUI backend, safe in a Ray worker or a thread.
matplotlib is imported here only, and this module only when a report is drawn."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.report.series import RunData, ordered_keys

# Titles of the series people know by name; any other series is titled by its key.
TITLES = {
    "train/loss": "Training loss",
    "policy/loss": "Policy loss",
    "train/lr": "Learning rate",
    "train/tokens_per_s": "Training throughput (tokens/s)",
    "train/grad_norm": "Gradient norm",
    "train/step_s": "Seconds per step",
    "eval/loss": "Held-out loss",
    "eval/exact_match": "Held-out exact match",
    "reward/mean": "Reward (mean)",
    "kl/ref_per_token": "KL to the reference (per token)",
    "response/length_mean": "Response length (mean tokens)",
}
FIGSIZE, DPI = (6.0, 3.4), 100
# Fixed margins, not a layout engine: "constrained" layout measures every text twice and made
# each figure ~40% slower to draw (0.6 s vs 0.35 s here), which the end of every run pays.
MARGINS = {"left": 0.14, "right": 0.97, "top": 0.9, "bottom": 0.15}
# PNGs carry no text chunk: matplotlib's default "Software" entry holds a URL, and the page
# promises to reference nothing outside itself.
PNG_METADATA = {"Software": None}


@dataclass
class Chart:
    """A drawn series: its key, title and PNG file."""

    key: str
    title: str
    path: Path


def require_matplotlib() -> None:
    """A clear error, not a traceback, where the plotting library is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from launcher.core.errors import Problem, UserError

        raise UserError(Problem("matplotlib", "not installed: reports and charts are drawn with it",
                                "pip install matplotlib (scripts/install.sh installs it)")) from None


def file_name(key: str) -> str:
    """A file name for a series key: ``train/loss`` -> ``train-loss.png``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", key).strip("-") + ".png"


def title_of(key: str) -> str:
    return TITLES.get(key, key)


def run_colors(runs: list[RunData]) -> dict[str, Any]:
    """One colour per run, the same in every figure of a page."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {run.name: cmap(i % 10) for i, run in enumerate(runs)}


def curve_figure(runs: list[RunData], key: str, colors: dict[str, Any] | None = None) -> Any:
    """A ``Figure`` of series ``key``: one line per run that logged it, a legend of run names
    when several runs are compared. Series with few points (held-out evals) get markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    colors = colors or run_colors(runs)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**MARGINS)
    ax = fig.add_subplot()
    drawn = 0
    for run in runs:
        points = run.series.get(key)
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, label=run.name, color=colors.get(run.name),
                marker="o" if len(points) <= 20 else None, markersize=3, linewidth=1.4)
        drawn += 1
    ax.set_title(title_of(key), fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if key.endswith("/lr"):
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if len(runs) > 1 and drawn:
        ax.legend(fontsize=8, loc="best")
    return fig


def draw_curves(runs: list[RunData], out_dir: Path) -> list[Chart]:
    """One PNG per series any of ``runs`` logged, in ``ordered_keys`` order, into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = run_colors(runs)
    keys = ordered_keys({k for run in runs for k in run.series})
    charts = []
    for key in keys:
        fig = curve_figure(runs, key, colors)
        path = out_dir / file_name(key)
        fig.savefig(path, format="png", metadata=PNG_METADATA)
        charts.append(Chart(key, title_of(key), path))
    return charts
