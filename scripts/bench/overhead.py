"""ftl's launch overhead and per-step cost against a plain torchrun DDP loop.

    python -m scripts.bench.overhead [--repeats 3] [--steps 60]

Start-up: wall time from the command to the first finished optimizer step, for `ftl run`
(embedded Ray, 2 workers), `torchrun -m launcher.train.loop` (ftl without Ray) and the plain
script. Steady state: median step time after 5 warm-up steps, same model and batch.
Note the plain loop's step time excludes its own tokenisation (done inline before timing),
and ftl's includes collation of pre-tokenised rows: both time forward+backward+step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher.core.env import BENCH_T0
from scripts.bench.common import ROOT, append_section, prepare, steady_step_s

BATCH = 16


def cfg(steps: int) -> dict:
    return {"name": "bench-overhead", "method": "sft", "model": {"path": "builtin:tiny-llama-256"},
            "data": {"train": {"path": "builtin:reverse", "num_rows": 4000}, "max_length": 64},
            "train": {"max_steps": steps, "micro_batch_size": BATCH, "lr": 1e-3, "schedule": "constant"},
            "resources": {"num_workers": 2}, "checkpoint": {"dir": "runs", "save_final": False},
            "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False}}


def first_step_after(start: float, metrics: Path, proc: subprocess.Popen) -> float:
    while proc.poll() is None:
        if metrics.exists() and '"step": 1,' in metrics.read_text():
            return time.time() - start
        time.sleep(0.05)
    raise RuntimeError("run ended before its first step was logged")


PHASES = {
    "cli": "CLI (imports, validation, preflight, plan) until the run folder exists",
    "ray": "Ray runtime + Train controller + worker group until ftl code runs on rank 0",
    "data": "rank 0: process group, tokenizer and data",
    "model": "rank 0: model load, backend setup and the first step",
}


def _log_time(line: str) -> float:
    """Seconds since the epoch of a rank log line (``2026-11-26 13:53:32,510 rank0 ...``, local time)."""
    stamp, ms = line[:23].split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


def ftl_phases(start: float, folder_s: float, run: Path) -> dict[str, float]:
    """Split ``ftl run``'s time to the first step, from files the run writes: ``rank-0.pid``
    (written when rank 0 enters ftl's code) and rank 0's log lines ``data:`` and ``step 1``."""
    worker = (run / "logs" / "rank-0.pid").stat().st_mtime
    lines = (run / "logs" / "rank-0.log").read_text().splitlines()
    data = next(_log_time(x) for x in lines if " INFO data: " in x)
    step1 = next(_log_time(x) for x in lines if " INFO step 1 " in x)
    return {"cli": folder_s, "ray": worker - start - folder_s, "data": data - worker, "model": step1 - data}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from launcher.models.tiny import resolve_model_path

    model_dir = resolve_model_path("builtin:tiny-llama-256")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "RAY_AUTH_MODE": "disabled"}
    res: dict[str, list[float]] = {k: [] for k in ("ftl_start", "tr_ftl_start", "plain_start",
                                                   "ftl_step", "tr_ftl_step", "plain_step")}
    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    for _ in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="ftl-bench-oh-"))
        # ftl run (Ray)
        (work / "cfg.yaml").write_text(json.dumps(cfg(args.steps)))
        start = time.time()
        cmd = [sys.executable, "-m", "launcher.cli", "run", "cfg.yaml", "--no-progress"]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (work / "runs").exists() or not any((work / "runs").iterdir()):
            time.sleep(0.05)
        folder_s = time.time() - start
        run = next((work / "runs").iterdir())
        res["ftl_start"].append(first_step_after(start, run / "metrics.jsonl", proc))
        proc.wait()
        for k, v in ftl_phases(start, folder_s, run).items():
            phases[k].append(v)
        res["ftl_step"].append(steady_step_s(run))
        # ftl's loop under torchrun (no Ray)
        run2 = prepare(work, "tr", cfg(args.steps))
        start = time.time()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "launcher.train.loop", str(run2)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res["tr_ftl_start"].append(first_step_after(start, run2 / "metrics.jsonl", proc))
        proc.wait()
        res["tr_ftl_step"].append(steady_step_s(run2))
        # plain torchrun DDP
        out = work / "plain.json"
        start = time.time()
        plain_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     "-m", "scripts.bench.plain_ddp", model_dir, str(args.steps), str(BATCH), str(out)]
        subprocess.run(plain_cmd, cwd=ROOT, env={**env, BENCH_T0: str(start)}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        plain = json.loads(out.read_text())
        res["plain_start"].append(plain["first_step_wall_s"])
        res["plain_step"].append(statistics.median(plain["step_s"][5:]))
    med = {k: statistics.median(v) for k, v in res.items()}
    rows = [
        ["start-up to first step (s)", f"{med['ftl_start']:.1f}", f"{med['tr_ftl_start']:.1f}",
         f"{med['plain_start']:.1f}", f"{med['plain_start'] / med['ftl_start']:.2f}"],
        ["steady step (ms)", f"{med['ftl_step'] * 1000:.1f}", f"{med['tr_ftl_step'] * 1000:.1f}",
         f"{med['plain_step'] * 1000:.1f}", f"{med['plain_step'] / med['ftl_step']:.2f}"],
    ]
    per_repeat = json.dumps({k: [round(x, 4) for x in v] for k, v in res.items()})
    split = "; ".join(f"{PHASES[k]} {statistics.median(v):.1f} s" for k, v in phases.items())
    print(append_section(
        "Launcher overhead vs a plain torchrun DDP loop (CPU, 2 ranks)",
        f"python -m scripts.bench.overhead --repeats {args.repeats} --steps {args.steps}",
        ["measure", "ftl run (Ray)", "ftl loop under torchrun", "plain torchrun DDP",
         "plain / ftl run (1.0 = same speed)"], rows,
        "Model: builtin tiny-llama-256, micro batch 16 per rank, fp32, 1 thread per rank. `ftl run` "
        "start-up includes validation, preflight, planning, starting a private Ray runtime and the "
        f"worker group. Where `ftl run`'s start-up goes (medians, from the run folder's timestamps): "
        f"{split}. Per-repeat values: {per_repeat}"))


if __name__ == "__main__":
    main()
