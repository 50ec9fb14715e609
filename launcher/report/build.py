"""Write a report: the curves' PNGs, the plan's memory chart and ``index.html`` into a folder.

``write_report`` serves ``ftl report`` (one run or several overlaid); ``write_run_report_safely``
is what the end of a run calls on the process that writes ``summary.json``: the run has
finished by then, so a report that cannot be drawn (matplotlib missing on a cluster image, a
full disk) is a warning in the log, never a failed run."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from launcher.core.errors import Problem, UserError
from launcher.run.rundir import atomic_write_text

REPORT_DIR = "report"
INDEX = "index.html"

log = logging.getLogger("ftl.report")


def _unique_names(runs: list) -> None:
    """Runs of the same folder name (copies in two places) get their parent folder prepended,
    so each has its own legend entry and colour."""
    counts = Counter(r.name for r in runs)
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.path.parent.name}/{run.name}"
    seen: Counter = Counter()
    for run in runs:  # still the same (same parent name too): number them
        seen[run.name] += 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> Path:
    """Draw ``run_dirs`` (one run, or several compared) into ``out_dir`` and return its
    ``index.html``. Default ``out_dir``: ``<run>/report`` for one run; several need one."""
    from launcher.report.curves import draw_curves, run_colors
    from launcher.report.page import render_page
    from launcher.report.plan_chart import write_plan_png
    from launcher.report.series import read_run

    if not run_dirs:
        raise UserError("no run given: name one or more run folders")
    unique: dict[Path, Path] = {}
    for p in run_dirs:  # a run named twice (by name and by path) is one run
        unique.setdefault(Path(p).resolve(), Path(p))
    runs = [read_run(p) for p in unique.values()]
    if out_dir is None:
        if len(runs) > 1:
            raise UserError(Problem("-o", "several runs are compared in one page: say where it goes",
                                    "add -o DIR (e.g. -o runs/compare)"))
        out_dir = runs[0].path / REPORT_DIR
    out = Path(out_dir)
    _unique_names(runs)
    charts = draw_curves(runs, out)
    plan_pngs = {}
    for i, run in enumerate(runs):
        if run.plan and (run.plan.get("memory") or {}).get("roles"):
            name = "plan-memory.png" if len(runs) == 1 else f"plan-memory-{i + 1}.png"
            plan_pngs[run.name] = write_plan_png(run.plan, out / name)
    curves = [(f"{c.key} ({c.path.name})", c.path) for c in charts]
    html = render_page(runs, curves, run_colors(runs), plan_pngs)
    index = out / INDEX
    atomic_write_text(index, html)
    return index


def write_run_report_safely(run_dir: str | Path) -> Path | None:
    """``<run>/report/index.html`` at the end of a run; on any failure a warning, and None."""
    try:
        index = write_report([run_dir])
    except ImportError as exc:
        log.warning("no report written for %s: %s (pip install matplotlib; `ftl report %s` draws it "
                    "later)", run_dir, exc, run_dir)
        return None
    except Exception as exc:  # a finished run stays finished whatever the drawing does
        log.warning("no report written for %s: %s: %s (`ftl report %s` retries)", run_dir,
                    type(exc).__name__, exc, run_dir)
        return None
    log.info("report: %s", index)
    return index
