"""What a report shows of a run: its metric series, resolved config, plan and summary.

Reads the run folder only (``launcher.run.rundir``, ``launcher.metrics.jsonl``): no plotting and
no config validation, so a report can be written for a run whose config no longer validates
(an older ftl, a strategy module that moved)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.core.registry import did_you_mean
from launcher.metrics.jsonl import read_metrics
from launcher.run.rundir import RunFolder, list_runs

# Series drawn first, in this order (what people look at first); every other numeric series of
# the metrics file follows: eval/* then the rest (RL: reward/*, kl/*, response/*, rollout/*...).
HEADLINE = ("train/loss", "policy/loss", "train/lr", "policy/lr", "train/tokens_per_s", "reward/mean",
            "eval/reward_mean")
# Bookkeeping counters that only ever grow with the step: a line that says nothing.
SKIPPED = frozenset({"step", "train/tokens"})

Series = list[tuple[float, float]]  # (step, value), in the order logged


@dataclass
class RunData:
    """One run as a report reads it."""

    name: str
    path: Path
    series: dict[str, Series] = field(default_factory=dict)
    config_text: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return "done" if self.summary else "incomplete"


def numeric_series(rows: list[dict[str, Any]]) -> dict[str, Series]:
    """Every key of the metric rows with a finite number, as (step, value) pairs.

    A resumed run may have logged a step twice (the rows after its checkpoint are dropped on
    resume, but a crash can leave a repeat): the last value logged for a step wins, so a
    curve never goes back in steps."""
    out: dict[str, dict[float, float]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in row.items():
            if key in SKIPPED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                out.setdefault(key, {})[float(step)] = float(value)
    return {key: sorted(points.items()) for key, points in out.items()}


def ordered_keys(keys: set[str] | list[str]) -> list[str]:
    """Headline series first, then held-out (eval/*) ones, then every other, alphabetically."""
    keys = set(keys)
    head = [k for k in HEADLINE if k in keys]
    rest = sorted(keys - set(head), key=lambda k: (not k.startswith("eval/"), k))
    return head + rest


def read_run(path: str | Path) -> RunData:
    """A run folder's series, config, plan and summary (each optional except config.yaml)."""
    import yaml

    folder = RunFolder(Path(path))
    if not folder.config_file.exists():
        raise UserError(Problem(str(path), "not a run folder (no config.yaml)",
                                "give a run folder (runs/<name>-<time>) or a run name as `ftl list` "
                                "shows it"))
    text = folder.config_file.read_text()
    config = yaml.safe_load(text) or {}
    return RunData(name=folder.path.name, path=folder.path,
                   series=numeric_series(read_metrics(folder.metrics)), config_text=text,
                   config=config if isinstance(config, dict) else {},
                   plan=folder.read_json("plan.json"), summary=folder.summary())


def resolve_run(arg: str, runs_dir: str | Path = "runs") -> Path:
    """A run folder from what the user typed: a path to one, a folder name under ``runs_dir``
    as ``ftl list`` shows it, or a unique start of one (``quickstart`` when one run has it)."""
    given = Path(arg)
    if (given / "config.yaml").exists():
        return given
    names = {run.path.name: run.path for run in list_runs(runs_dir)}
    if given.name in names and len(given.parts) == 1:
        return names[given.name]
    starts = sorted(name for name in names if name.startswith(arg))
    if len(starts) == 1:
        return names[starts[0]]
    if starts:
        raise UserError(Problem(arg, f"{len(starts)} runs in {runs_dir} start with this: "
                                f"{', '.join(starts[:5])}{' ...' if len(starts) > 5 else ''}",
                                "give the whole run name or its folder path"))
    close = did_you_mean(given.name, list(names))
    hint = f"did you mean {close!r}?" if close else (
        f"`ftl list --runs-dir {runs_dir}` shows the runs there; a run folder has a config.yaml")
    raise UserError(Problem(arg, f"no such run (not a run folder, nor a run in {runs_dir})", hint))
