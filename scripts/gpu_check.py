#!/usr/bin/env python3
"""GPU check: the per-rank loop without Ray on one CUDA GPU, bf16 + nccl, for each backend.

    python scripts/gpu_check.py [--backends ddp,zero2,zero3,fsdp2] [--steps 30]

Each backend trains the builtin tiny-llama-256 on the reverse task in its own process
(``python -m launcher.loop RUN_DIR``, a one-rank nccl group) and must lower the training
loss. Prints one line per backend and exits non-zero if any failed. Needs torch with CUDA,
transformers, peft, datasets, deepspeed (for zero*); Ray is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="ddp,zero2,zero3,fsdp2")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing run")
        return 2
    from launcher.config.load import config_to_dict, validate_config
    from launcher.rundir import RunFolder

    failures = 0
    work = Path(tempfile.mkdtemp(prefix="ftl-gpu-"))
    for backend in args.backends.split(","):
        cfg = validate_config({
            "name": f"gpu-{backend}", "method": "sft",
            "model": {"path": "builtin:tiny-llama-256", "dtype": "bf16"},
            "data": {"train": {"path": "builtin:reverse", "num_rows": 4000},
                     "eval": {"path": "builtin:reverse", "num_rows": 64}, "max_length": 64},
            "train": {"max_steps": args.steps, "micro_batch_size": 32, "lr": 2e-3, "warmup_steps": 3},
            "sharding": {"backend": backend},
            "resources": {"num_workers": 1, "gpus_per_worker": 1},
            "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}},
            "checkpoint": {"dir": str(work), "every_steps": args.steps},
        })
        folder = RunFolder.create(work, cfg.name)
        folder.write_config(config_to_dict(cfg))
        folder.new_launch()
        proc = subprocess.run([sys.executable, "-m", "launcher.loop", str(folder.path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if proc.returncode != 0:
            failures += 1
            print(f"{backend:>6}: FAILED\n{proc.stderr[-2000:]}")
            continue
        rows = [json.loads(x) for x in folder.metrics.read_text().splitlines()]
        losses = [r["train/loss"] for r in rows if "train/loss" in r]
        summary = folder.summary()
        ok = losses[-1] < losses[0]
        failures += not ok
        em = summary["final"].get("eval/exact_match", 0.0)
        print(f"{backend:>6}: loss {losses[0]:.4f} -> {losses[-1]:.4f} "
              f"{summary['tokens_per_s']:,.0f} tok/s  eval EM {em:.3f} "
              f"{'ok' if ok else 'LOSS DID NOT FALL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
