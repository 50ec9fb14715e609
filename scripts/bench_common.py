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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, no GPU"


def versions() -> str:
    import importlib.metadata as md

    names = ("torch", "ray", "transformers", "deepspeed", "trl", "peft")
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
        BENCHMARKS.write_text("# Benchmarks\n\nEach section is appended by a `scripts/bench_*.py` run: "
                              "ratios of runs made side by side in one invocation, medians of repeats.\n")
    with BENCHMARKS.open("a") as fh:
        fh.write(text)
    return text


def prepare(work: Path, name: str, cfg: dict) -> Path:
    import yaml

    from launcher.submit import prepare_run

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    folder, _ = prepare_run(str(path), None, (), runs_dir=str(work / "runs"))
    return folder.path.resolve()


def torchrun(run_dirs: list[Path], nproc: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(ROOT / "tests" / "helpers" / "run_many.py"), *map(str, run_dirs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])


def steady_step_s(run: Path, skip: int = 5) -> float:
    """Median seconds per optimizer step, from per-step metrics, after ``skip`` warm-up steps."""
    import json

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["train/step_s"] for r in rows if "train/step_s" in r and r["step"] > skip]
    return statistics.median(steps)
