"""From a config file (or a run folder to resume) to a started run on its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.config.load import apply_overrides, config_to_dict, load_config, validate_config
from launcher.errors import Problem, UserError
from launcher.lazy import load_object
from launcher.preflight import Notes, preflight
from launcher.rundir import RunFolder
from launcher.user_code import add_run_code, ship


def _target(cfg: Any) -> Any:
    from cluster import TARGETS

    return load_object(TARGETS.get(cfg.cluster.target, "cluster.target").impl)()


def target_of(folder: RunFolder) -> Any:
    """The target a run folder was submitted to (for status, logs, stop)."""
    sub = folder.read_json("submission.json")
    if not sub:
        raise UserError(Problem(str(folder.path), "this run was not submitted to a cluster",
                                "status/logs/stop apply to runs started with --target ray|slurm|kubernetes"))
    from cluster import TARGETS

    return load_object(TARGETS.get(sub["target"]).impl)()


def prepare_run(config: str | None, resume_dir: str | None, overrides: tuple[str, ...], *,
                runs_dir: str | None = None, dry_run: bool = False, smoke: bool = False,
                notes: Notes | None = None) -> tuple[RunFolder, Any]:
    """Validate and preflight; create (or reopen) the run folder unless ``dry_run``.
    ``smoke``: run the config shrunk to this machine (launcher/smoke.py). Preflight's warnings
    and notes go to ``notes`` for the caller to show."""
    from launcher.planner import make_plan

    if resume_dir:
        folder = RunFolder(Path(resume_dir))
        if not folder.config_file.exists():
            raise UserError(Problem(resume_dir, "not a run folder (no config.yaml)",
                                    "pass the folder `ftl run` printed, e.g. runs/<name>-<time>"))
        data = apply_overrides(folder.raw_config(), overrides)
        add_run_code(folder.path)
        cfg = validate_config(data, str(folder.config_file))
    else:
        cfg = load_config(config, overrides)
        if smoke:
            from launcher.smoke import smoke_config

            cfg, smoke_changes = smoke_config(cfg)
        folder = RunFolder.planned(runs_dir or cfg.checkpoint.dir, cfg.name)
    target = _target(cfg)
    preflight(cfg, target, notes)
    target.check_run_folder(folder, cfg)
    plan = make_plan(cfg)
    if dry_run:
        return folder, _DryRun(target, folder, cfg)
    target.check_reachable(cfg)
    if not resume_dir:
        folder = RunFolder.create(runs_dir or cfg.checkpoint.dir, cfg.name)
        ship(cfg.method_options().code_references(), Path(config).parent, folder.path)
    folder.write_config(config_to_dict(cfg))
    folder.write_json("plan.json", plan)
    if smoke and not resume_dir:
        folder.write_json("smoke.json", {"source": str(config), "changes": smoke_changes})
    folder.new_launch()
    return folder, target


class _DryRun:
    """Renders what the target would submit, for a folder that is not created."""

    def __init__(self, target: Any, folder: RunFolder, cfg: Any):
        self.target, self.folder, self.cfg = target, folder, cfg

    def render(self, folder: RunFolder) -> str:
        return self.target.render(self.folder, self.cfg)


def start_run(folder: RunFolder, target: Any, *, progress: bool) -> dict[str, Any]:
    return target.run(folder, progress=progress)
