"""The ``ftl`` command line (Click).

Only click, rich and pydantic are imported at start-up; torch, transformers and Ray are
imported inside the commands that need them, so ``ftl --help`` and schema errors are instant.
Exit codes: 0 ok, 1 the job failed, 2 bad input (nothing submitted), 75 stopped and saved on
request (SIGTERM, a Slurm time-limit warning: resume it), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from launcher.core import terminal
from launcher.core.errors import JobFailed, Preempted, UserError

EXIT_FAILED, EXIT_USER, EXIT_PREEMPTED, EXIT_INTERRUPTED = 1, 2, 75, 130


def _err(text: str) -> None:
    click.echo(text, file=terminal.err())


def _out(text: str) -> None:
    click.echo(text, file=terminal.out())


def _handle(fn):
    """Map exceptions to exit codes: no tracebacks for user errors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            _err(f"error: {exc.render()}")
            sys.exit(EXIT_USER)
        except JobFailed as exc:
            _err(f"job failed: {exc}")
            sys.exit(EXIT_FAILED)
        except Preempted as exc:
            _err(str(exc))
            sys.exit(EXIT_PREEMPTED)
        except KeyboardInterrupt:
            _err("interrupted: stopped what this command started")
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.lr=1e-5 (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ftl")
def cli() -> None:
    """ftl: launch LLM fine-tuning runs on Ray from one YAML file.

    \b
    Example:
      ftl validate configs/quickstart.yaml
      ftl run configs/quickstart.yaml --set train.max_steps=100
    """


@cli.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@set_option
@click.option("--schema-only", is_flag=True, help="Skip preflight (no model or data is read).")
@_handle
def validate(configs: tuple[str, ...], overrides: tuple[str, ...], schema_only: bool) -> None:
    """Check config files: schema, then preflight (model, tokenizer, data columns).

    \b
    Example:
      ftl validate configs/quickstart.yaml --set train.lr=3e-4
    """
    from launcher.config.load import load_config

    errors: list[UserError] = []
    for path in configs:
        try:
            cfg = load_config(path, overrides)
            if not schema_only:
                from cluster import TARGETS
                from launcher.core.lazy import load_object
                from launcher.run.preflight import Notes, preflight

                notes = Notes()
                preflight(cfg, load_object(TARGETS.get(cfg.cluster.target).impl)(), notes)
                for line in notes.data_lines:
                    click.echo(f"data: {line}")
                for warning in notes.warnings:
                    _err(f"warning: {warning}")
                for note in notes:
                    _err(f"note: {path}: {note}")
            click.echo(f"ok: {path}")
        except UserError as exc:
            errors.append(exc)
            _err(f"error: {exc.render()}")
    if errors:
        sys.exit(EXIT_USER)


@cli.command()
@click.option("--method", default=None, help="Only this method's section.")
def schema(method: str | None) -> None:
    """Print the config's JSON Schema.

    \b
    Example:
      ftl schema > ftl.schema.json
    """
    from launcher.config.load import run_config_model

    data = run_config_model().model_json_schema()
    if method:
        data = data["properties"].get(method) or data["$defs"].get(method, {})
    click.echo(json.dumps(data, indent=2))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--gpu-memory", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB",
              help="Memory of one GPU in GB (same as --set resources.gpu_memory_gb=GB).")
@click.option("--png", "png", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also draw each role's memory per GPU (terms stacked) against the GPU's capacity.")
@_handle
def plan(config: str, overrides: tuple[str, ...], as_json: bool, gpu_memory: float | None,
         png: str | None) -> None:
    """Show workers, placement, batch arithmetic, exact parameter counts and the predicted
    memory of every rank (per role, per GPU, per node), with what would fit if it does not.

    \b
    Example:
      ftl plan configs/quickstart.yaml --json
      ftl plan llama-70b.yaml --gpu-memory 141 --set resources.num_workers=16
      ftl plan configs/examples/llama-3.1-70b/ppo.yaml --png ppo-memory.png
    """
    from launcher.config.load import load_config
    from launcher.plan.planner import make_plan

    if gpu_memory is not None:
        overrides = (*overrides, f"resources.gpu_memory_gb={gpu_memory!r}")
    if png:
        from launcher.report.curves import require_matplotlib

        require_matplotlib()  # before the (slow) plan, not after
    cfg = load_config(config, overrides)
    result = make_plan(cfg)
    if png:
        from launcher.report.plan_chart import write_plan_png

        _err(f"memory chart: {write_plan_png(result, png)}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from launcher.plan.view import render_plan

    render_plan(result)


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@set_option
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue RUN_DIR from its newest checkpoint (CONFIG not needed).")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted; submit nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
@click.option("--runs-dir", default=None, help="Parent of run folders (default: checkpoint.dir).")
@click.option("--target", default=None, help="Where to run (overrides cluster.target): local, ray, ...")
@click.option("--detach", is_flag=True, help="Submit and return (cluster targets); see ftl status/logs/stop.")
@click.option("--smoke", is_flag=True, help="Run this config here first: a tiny model of the same "
              "architecture, a few steps, same method, data format, sharding, checkpoint and export.")
@click.option("--verbose", "-v", is_flag=True, help="Show library output (progress bars, warnings) here "
              "too; by default it goes to the run's logs/launcher.log.")
@_handle
def run(config: str | None, overrides: tuple[str, ...], resume_dir: str | None, dry_run: bool,
        no_progress: bool, runs_dir: str | None, target: str | None, detach: bool, smoke: bool,
        verbose: bool) -> None:
    """Validate, plan and run a config; or resume a run folder.

    \b
    Examples:
      ftl run configs/quickstart.yaml
      ftl run configs/quickstart.yaml --set train.max_steps=50 --dry-run
      ftl run --resume runs/quickstart-20260101-120000 --set train.max_steps=600
      ftl run configs/examples/llama-3.1-70b/full_sft_zero3_64gpu.yaml --smoke
    """
    from launcher.run.preflight import Notes
    from launcher.run.submit import prepare_run, start_run

    if bool(config) == bool(resume_dir):
        raise UserError("give a CONFIG file, or --resume RUN_DIR (not both)")
    if smoke and (resume_dir or target or detach):
        raise UserError("--smoke runs a fresh config here: no --resume, --target or --detach")
    if target:
        overrides = (*overrides, f"cluster.target={target}")
    with terminal.library_output_to_log(enabled=not verbose) as library_log:
        notes = Notes()
        folder, chosen = prepare_run(config, resume_dir, overrides, runs_dir=runs_dir, dry_run=dry_run,
                                     smoke=smoke, notes=notes)
        if library_log and not dry_run:
            library_log.move_to(folder.logs / "launcher.log")
        for warning in notes.warnings:
            _err(f"warning: {warning}")
        if smoke and not dry_run:
            for change in json.loads((folder.path / "smoke.json").read_text())["changes"]:
                _err(f"smoke: {change}")
        if dry_run:
            _out(chosen.render(folder))
            return
        _err(f"run folder: {folder.path}")
        if detach:
            from cluster.base import TargetCapability

            if not chosen.supports(TargetCapability.SUBMIT):
                raise UserError(f"target {chosen.name!r} runs attached only (no --detach)")
            job = chosen.submit(folder)
            _out(f"submitted {job}\n  ftl status {folder.path}\n  ftl logs {folder.path} --follow"
                 f"\n  ftl stop {folder.path}")
            return
        summary = start_run(folder, chosen, progress=not no_progress and terminal.err().isatty())
    _print_summary(folder.path, summary)


def _print_summary(path: Path, summary: dict[str, Any]) -> None:
    def show(d: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k.count("/") == 1) or "-"

    click.echo(f"done: {summary.get('steps')} steps in {summary.get('wall_time_s', 0):.1f} s, "
               f"{summary.get('tokens_per_s', 0):,.0f} tokens/s")
    click.echo(f"  before: {show(summary.get('initial', {}))}")
    click.echo(f"  after:  {show(summary.get('final', {}))}")
    click.echo(f"  run folder: {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--to", "to", required=True, type=click.Path(), help="Output folder (HF format).")
@click.option("--merge-lora", is_flag=True, help="Merge LoRA adapters into the base weights.")
@click.option("--step", type=int, default=None, help="Checkpoint step (default: newest).")
@click.option("--overwrite", is_flag=True, help="Empty --to first if it holds files (refused otherwise).")
@_handle
def export(run_dir: str, to: str, merge_lora: bool, step: int | None, overwrite: bool) -> None:
    """Write one HF safetensors folder from a run's checkpoint (any backend).

    \b
    Example:
      ftl export runs/quickstart-20260101-120000 --to out/model --merge-lora
    """
    from launcher.run.export import export_run

    info = export_run(run_dir, to, merge_lora=merge_lora, step=step, overwrite=overwrite)
    click.echo(f"exported {info['checkpoint']} ({info['backend']}) to {info['to']}"
               + (" with LoRA merged" if info["merged"] else ""))


def _submitted(run_dir: str) -> tuple[Any, Any]:
    from launcher.run.rundir import RunFolder
    from launcher.run.submit import target_of

    folder = RunFolder(Path(run_dir))
    if not folder.config_file.exists():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    return folder, target_of(folder)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_handle
def status(run_dir: str) -> None:
    """State of a submitted run, read from its cluster (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).

    \b
    Example:
      ftl status runs/llama-sft-20260101-120000
    """
    folder, target = _submitted(run_dir)
    click.echo(target.status(folder))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--follow", "-f", is_flag=True, help="Stream until the job ends.")
@_handle
def logs(run_dir: str, follow: bool) -> None:
    """Print a submitted run's driver logs.

    \b
    Example:
      ftl logs runs/llama-sft-20260101-120000 --follow
    """
    folder, target = _submitted(run_dir)
    for chunk in target.logs(folder, follow=follow):
        click.echo(chunk, nl=False)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_handle
def stop(run_dir: str) -> None:
    """Stop a submitted run and print its final state.

    \b
    Example:
      ftl stop runs/llama-sft-20260101-120000
    """
    folder, target = _submitted(run_dir)
    click.echo(target.stop(folder))


@cli.command(name="list")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_runs_cmd(runs_dir: str, as_json: bool) -> None:
    """List local runs with their status and final metrics.

    \b
    Example:
      ftl list --runs-dir runs
    """
    from launcher.run.listing import describe_runs, render_runs

    rows = describe_runs(runs_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_runs(rows)


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of the page and its PNGs (default: RUN/report; needed for several runs).")
@click.option("--runs-dir", default="runs", show_default=True, help="Where run names are looked up.")
@_handle
def report(runs: tuple[str, ...], out_dir: str | None, runs_dir: str) -> None:
    """Draw runs' curves (every logged series over steps) into PNGs and one self-contained HTML
    page with the config, plan and summary; several runs are overlaid, one line per run.

    RUN is a run folder, or a run's name as `ftl list` shows it (or the unique start of one).

    \b
    Examples:
      ftl report runs/quickstart-20260101-120000
      ftl report quickstart-20260101-120000 quickstart-20260102-090000 -o runs/compare
    """
    from launcher.report.curves import require_matplotlib
    from launcher.report.series import resolve_run

    require_matplotlib()
    paths = [resolve_run(r, runs_dir) for r in runs]
    from launcher.report.build import write_report

    click.echo(f"report: {write_report(paths, out_dir)}")


@cli.command(name="eval")
@click.argument("models", nargs=-1, required=True, metavar="MODEL_OR_RUN...")
@click.option("--data", required=True,
              help="jsonl/json/parquet/csv (messages or prompt/completion), or builtin:<task>.")
@click.option("--shots", default="0", show_default=True, help="Support examples per prompt; 0,1,4 sweeps.")
@click.option("--support", default=None,
              help="Where shots come from (default: the task's train split, or the other rows).")
@click.option("--num", type=click.IntRange(min=1), default=100, show_default=True, help="Questions scored.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the support draw.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON row per (model, K).")
@_handle
def eval_cmd(models: tuple[str, ...], data: str, shots: str, support: str | None, num: int,
             max_new_tokens: int, seed: int, batch_size: int, as_json: bool) -> None:
    """Few-shot exact match of models or runs, side by side (greedy, exact after strip).

    MODEL_OR_RUN is an HF folder, builtin:<name>, or a run folder (its final/, LoRA or not).

    \b
    Examples:
      ftl eval builtin:tiny-llama --data builtin:reverse --shots 0,1,4
      ftl eval builtin:tiny-llama runs/quickstart-20260101-120000 --data builtin:reverse --json
    """
    from launcher.tools.fewshot import evaluate_fewshot, parse_shots, render_table

    rows = evaluate_fewshot(list(models), data, parse_shots(shots), num=num, support=support,
                            max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_table(rows)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--param", "params", multiple=True, required=True, metavar="PATH=DIST:ARGS",
              help="A swept value: loguniform:LO:HI, uniform:LO:HI, randint:LO:HI or choice:A,B,... "
                   "(repeatable).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True, help="Trials to run.")
@click.option("--scheduler", type=click.Choice(["asha", "fifo"]), default="asha", show_default=True,
              help="asha stops the worse half of the trials at each eval step; fifo runs all to the end.")
@click.option("--metric", default="eval/loss", show_default=True, help="A key of the runs' metrics.jsonl.")
@click.option("--mode", type=click.Choice(["min", "max"]), default="min", show_default=True)
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Trials at once (default: the CPUs the local Ray has / CPUs per trial).")
@click.option("--runs-dir", default=None, help="Parent of the sweep folder (default: checkpoint.dir).")
@set_option
@_handle
def sweep(config: str, params: tuple[str, ...], samples: int, scheduler: str, metric: str, mode: str,
          max_concurrent: int | None, runs_dir: str | None, overrides: tuple[str, ...]) -> None:
    """Search hyperparameters with Ray Tune on a local Ray; every trial is a full ftl run.

    Writes results.json and the best trial's config (best.yaml) to <runs>/sweep-<name>-<time>/.

    \b
    Example:
      ftl sweep configs/quickstart.yaml --param train.lr=loguniform:1e-4:1e-2 \\
          --param train.warmup_steps=choice:0,30 --samples 8 --set eval.every_steps=50
    """
    from launcher.tools.sweep import render_results, run_sweep

    results = run_sweep(config, list(params), overrides, samples=samples, metric=metric, mode=mode,
                        scheduler=scheduler, max_concurrent=max_concurrent, runs_dir=runs_dir, say=_err)
    render_results(results)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="ftl")


if __name__ == "__main__":
    main()
