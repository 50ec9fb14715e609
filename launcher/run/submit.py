"""From a config file (or a run folder to resume) to a started run on its target.

A resume is refused, before anything in the folder is written, when it would make a second
writer of the folder or could not read its checkpoints:

- another process holds the folder's writer lock (``RunFolder.hold_writer_lock``): a local
  run, or an ``ftl run`` attached to a cluster job;
- the job the folder was last submitted to (``submission.json``) has not ended, asked of the
  target it went to (``status()``), whichever target the resume names. The writer of a cluster
  run is its remote driver, which no lock on this machine can see: it may run on a host that
  does not share this filesystem's locks (or this filesystem at all), and a job still PENDING
  has no driver yet to hold anything, while the scheduler knows both;
- the checkpoints were written by another sharding backend, ZeRO stage, model or adapter set
  (``launcher.train.checkpoint.refuse_changed_writer``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cluster import TARGETS
from launcher.backends.registry import AUTO
from launcher.config.load import apply_overrides, config_to_dict, load_config, validate_config
from launcher.core.errors import Problem, UserError
from launcher.core.lazy import load_object
from launcher.core.user_code import add_run_code, ship
from launcher.plan.auto_sharding import prepared_config
from launcher.plan.planner import make_plan
from launcher.run.preflight import Notes, preflight
from launcher.run.rundir import RunFolder
from launcher.run.smoke import smoke_config
from launcher.train.checkpoint import checkpoint_writer, refuse_changed_writer


def _target(cfg: Any) -> Any:
    return load_object(TARGETS.get(cfg.cluster.target, "cluster.target").impl)()


def target_of(folder: RunFolder) -> Any:
    """The target a run folder was submitted to (for status, logs, stop)."""
    sub = folder.read_json("submission.json")
    if not sub:
        raise UserError(Problem(str(folder.path), "this run was not submitted to a cluster",
                                "status/logs/stop apply to runs started with --target ray|slurm|kubernetes"))
    return load_object(TARGETS.get(sub["target"]).impl)()


def prepare_run(config: str | None, resume_dir: str | None, overrides: tuple[str, ...], *,
                runs_dir: str | None = None, dry_run: bool = False, smoke: bool = False,
                notes: Notes | None = None) -> tuple[RunFolder, Any]:
    """Validate and preflight; create (or reopen) the run folder unless ``dry_run``.
    ``smoke``: run the config shrunk to this machine (launcher/run/smoke.py). Preflight's warnings
    and notes go to ``notes`` for the caller to show."""
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
            cfg, smoke_changes = smoke_config(cfg)
        folder = RunFolder.planned(runs_dir or cfg.checkpoint.dir, cfg.name)
    target = _target(cfg)
    plan = None
    if cfg.sharding.backend == AUTO:  # chosen here, once: preflight, the ranks, a resume read the choice
        try:
            plan = make_plan(cfg)
        except UserError:
            # planning reads the model's config: when it cannot, preflight reports why with every
            # other problem of the config (as `ftl validate` does), not "cannot read" alone
            preflight(cfg, target, notes)
            raise
        cfg = prepared_config(cfg, plan)  # the chosen backend, and the memory switches auto turned on
    preflight(cfg, target, notes)
    target.check_run_folder(folder, cfg)
    plan = plan or make_plan(cfg)
    if resume_dir:
        refuse_changed_writer(folder.path, cfg)
    if dry_run:
        return folder, _DryRun(target, folder, cfg)
    target.check_reachable(cfg)
    if resume_dir:
        folder.hold_writer_lock()  # first: a second resume now waits for our submission below
        refuse_while_job_active(folder)
        folder.remove_partial_writes()  # no other writer is left to own them
    else:
        folder = RunFolder.create(runs_dir or cfg.checkpoint.dir, cfg.name)  # locked
        ship(cfg.method_options().code_references(), Path(config).parent, folder.path)
    folder.write_config(config_to_dict(cfg))
    folder.write_json("plan.json", plan)
    if smoke and not resume_dir:
        folder.write_json("smoke.json", {"source": str(config), "changes": smoke_changes})
    folder.new_launch(writer=checkpoint_writer(cfg))
    return folder, target


#: States, beyond a target module's TERMINAL set, in which a job no longer runs: KubeRay
#: reports only ``jobDeploymentStatus`` when a RayJob ends before its Ray job starts.
_ENDED_EXTRA = {"kubernetes": {"Complete", "Failed", "ValidationFailed", "Suspended"}}


def _ended_states(target: Any) -> set[str]:
    """The states of ``target``'s jobs that can no longer write (its module's TERMINAL set)."""
    module = importlib.import_module(type(target).__module__)
    return set(getattr(module, "TERMINAL", ())) | _ENDED_EXTRA.get(target.name, set())


def _job_name(sub: dict[str, Any]) -> str:
    if "namespace" in sub:
        return f"{sub['namespace']}/{sub.get('name')}"
    return str(sub.get("job_id") or sub.get("submission_id") or "?")


def refuse_while_job_active(folder: RunFolder) -> None:
    """Raise UserError while the job in ``submission.json`` may still write the folder.

    A state the target cannot tell (cluster unreachable, a job the scheduler no longer knows:
    Slurm's UNKNOWN, a deleted RayJob) is refused too: resuming next to a job that does run
    would corrupt the folder, whereas waiting costs nothing; the hint says how to go on once
    the job surely ended."""
    sub = folder.read_json("submission.json")
    if not sub:
        return
    target = target_of(folder)
    job = f"{target.job_label} {_job_name(sub)}"
    check = f"`ftl status {folder.path}`"
    try:
        state = target.status(folder)
    except Exception as exc:  # UserError (unreachable) or the client's own errors
        detail = exc.render() if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        state, unknown = None, detail.splitlines()[0] if detail else type(exc).__name__
    else:
        unknown = f"its state is {state}" if state == "UNKNOWN" else None
    if unknown is not None:
        raise UserError(Problem(
            str(folder.path), f"cannot tell whether {job}, which this folder was submitted to, "
            f"still runs: {unknown}",
            f"resume once {check} answers; if that job is gone for good, remove "
            f"{folder.path / 'submission.json'} and resume"))
    if state in _ended_states(target):
        return
    raise UserError(Problem(
        str(folder.path), f"{job} is {state}: it writes this run folder, and a second writer would "
        "delete its checkpoints",
        f"wait until it ends ({check}), or stop it with `ftl stop {folder.path}`, then resume"))


class _DryRun:
    """Renders what the target would submit, for a folder that is not created."""

    def __init__(self, target: Any, folder: RunFolder, cfg: Any):
        self.target, self.folder, self.cfg = target, folder, cfg

    def render(self, folder: RunFolder) -> str:
        return self.target.render(self.folder, self.cfg)


def start_run(folder: RunFolder, target: Any, *, progress: bool) -> dict[str, Any]:
    return target.run(folder, progress=progress)
