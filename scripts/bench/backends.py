"""ZeRO-2, ZeRO-3 and FSDP2 against DDP on CPU: median step time, same model, data and batch.

    python -m scripts.bench.backends [--repeats 3] [--steps 40]

All backends run in one torchrun launch per repeat (2 ranks, gloo, 1 thread each), in a
rotated order so no backend always runs first; the ratio is DDP's step time over the
backend's (> 1 means faster than DDP).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from scripts.bench.common import append_section, prepare, steady_step_s, torchrun

BACKENDS = ["ddp", "zero2", "zero3", "fsdp2"]


def config(backend: str, steps: int) -> dict:
    return {
        "name": f"bench-{backend}", "method": "sft", "model": {"path": "builtin:tiny-llama-256"},
        "data": {"train": {"path": "builtin:reverse", "num_rows": 4000}, "max_length": 64},
        "train": {"max_steps": steps, "micro_batch_size": 16, "lr": 1e-3, "schedule": "constant"},
        "sharding": {"backend": backend}, "resources": {"num_workers": 2},
        "checkpoint": {"dir": "runs", "save_final": False},
        "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for rep in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="ftl-bench-"))
        order = BACKENDS[rep % len(BACKENDS):] + BACKENDS[: rep % len(BACKENDS)]
        runs = {b: prepare(work, b, config(b, args.steps)) for b in order}
        torchrun([runs[b] for b in order])
        for b in order:
            times[b].append(steady_step_s(runs[b]))
    ddp = statistics.median(times["ddp"])
    rows = [[b, f"{statistics.median(times[b]) * 1000:.1f}", f"{ddp / statistics.median(times[b]):.2f}",
             " ".join(f"{t * 1000:.1f}" for t in times[b])] for b in BACKENDS]
    print(append_section(
        "Sharding backends vs DDP (CPU, 2 ranks, gloo)",
        f"python -m scripts.bench.backends --repeats {args.repeats} --steps {args.steps}",
        ["backend", "median step (ms)", "DDP step / backend step", "per-repeat medians (ms)"], rows,
        "Model: builtin tiny-llama-256 (4 layers, hidden 256), micro batch 16 x 2 ranks, max_length 64, "
        "fp32."))


if __name__ == "__main__":
    main()
