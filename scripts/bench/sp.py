"""Ulysses sequence parallelism (``sharding.sp_size``) on long sequences: memory and step time.

    python -m scripts.bench.sp [--max-length 8192] [--steps 8]

Two ranks (gloo, one torch thread each), the same global batch of 2 sequences of ``max-length``
tokens per step (method ``full``, builtin letters-text cut into fixed blocks), two layouts:

- dp (sp_size 1): each rank trains one whole sequence;
- sp (sp_size 2): both ranks share each sequence, each holding half its tokens (two
  micro-batches of accumulation, so the same 2 sequences per step).

Per rank: peak resident memory minus that of the same run at 128 tokens (model, optimizer and
libraries cancel out; what is left grows with the tokens a rank holds: activations, logits,
attention), and the median step time after 2 warm-up steps. The losses of the two layouts are
compared step by step (same math: they must agree). Each layout is its own ``torchrun`` launch,
so every process's peak belongs to one run. CPU only: on a shared 2-core machine the step time
says what the all-to-alls cost here, not what they cost over NVLink.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from launcher.metrics.jsonl import read_metrics
from scripts.bench.common import Contention, append_section, prepare, steady_step_s, torchrun, wait_quiet

MODEL = "builtin:tiny-llama-256"


def config(name: str, sp: int, max_length: int, steps: int) -> dict:
    return {
        "name": name, "method": "full", "model": {"path": MODEL},
        "data": {"train": {"path": "builtin:letters-text", "num_rows": 12000}, "packing": True,
                 "max_length": max_length},
        "train": {"max_steps": steps, "micro_batch_size": 1, "global_batch_size": 2, "lr": 1e-3,
                  "schedule": "constant"},
        "sharding": {"backend": "fsdp2", "sp_size": sp},
        "resources": {"num_workers": 2, "cpus_per_worker": 1, "threads_per_worker": 1},
        "checkpoint": {"dir": "runs", "save_final": False},
        "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}},
    }


def losses(run: Path) -> dict[int, float]:
    rows = read_metrics(run / "metrics.jsonl")
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def peak_mb(run: Path) -> list[float]:
    return json.loads((run / "summary.json").read_text())["peak_rss_mb_per_rank"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-wait", type=float, default=120,
                        help="seconds to wait for a quiet machine before each launch")
    parser.add_argument("--no-write", action="store_true", help="print, do not append to BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sp-"))
    runs: dict[str, Path] = {}
    contention: dict[str, float] = {}
    for name, sp, length in (("base-dp", 1, 128), ("base-sp", 2, 128), ("dp", 1, args.max_length),
                             ("sp", 2, args.max_length)):
        runs[name] = prepare(work, name, config(name, sp, length, args.steps))
        wait_quiet(max_wait_s=args.max_wait)
        with Contention() as c:
            torchrun([runs[name]])
        contention[name] = c.other_share
    ref, got = losses(runs["dp"]), losses(runs["sp"])
    diff = max(abs(ref[s] - got[s]) for s in ref)
    rows = []
    for name in ("dp", "sp"):
        peaks, base = peak_mb(runs[name]), peak_mb(runs[f"base-{name}"])
        extra = [p - b for p, b in zip(peaks, base)]
        tokens = args.max_length // (1 if name == "dp" else 2)
        rows.append([name, 1 if name == "dp" else 2, f"{tokens:,}", " / ".join(f"{p:.0f}" for p in peaks),
                     " / ".join(f"{e:.0f}" for e in extra), f"{steady_step_s(runs[name], skip=2) * 1000:.0f}",
                     f"{contention[name]:.2f}"])
    header = ["layout", "sp_size", "tokens per rank per micro-batch", "peak RSS per rank (MB)",
              "peak RSS over the 128-token run (MB)", "median step (ms)", "other load"]
    notes = (f"Model: {MODEL} (4 layers, hidden 256), fp32, fsdp2 on 2 ranks, 2 sequences of "
             f"{args.max_length:,} tokens per step, {args.steps} steps. Max loss difference dp vs sp over "
             f"the steps: {diff:.1e}. 'other load': share of the machine other processes used meanwhile.")
    command = f"python -m scripts.bench.sp --max-length {args.max_length} --steps {args.steps}"
    title = "Ulysses sequence parallelism: memory per rank on long sequences (CPU, 2 ranks)"
    if args.no_write:
        print(title, header, *rows, notes, sep="\n")
    else:
        print(append_section(title, command, header, rows, notes))


if __name__ == "__main__":
    main()
