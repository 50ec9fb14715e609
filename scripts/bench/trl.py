"""ftl's ``sft`` against TRL's ``SFTTrainer``: same model, data, batch, steps, one process each.

    python -m scripts.bench.trl [--repeats 3] [--steps 60]

Both train the builtin tiny-llama-256 on the same chat rows (loss on assistant tokens, no
packing, fp32, 2 torch threads); the figure is the median optimizer-step time after 5
warm-up steps, turned into real (non-padding) tokens per second. Runs alternate per repeat.

TRL 1.x's ``SFTConfig`` defaults to bf16 autocast and gradient checkpointing, even on CPU; ftl
defaults to fp32 without checkpointing. TRL is therefore set to ``bf16=False,
gradient_checkpointing=False`` (same arithmetic, same work); ``--trl-defaults`` adds a row
with TRL's own defaults, what a user who changes nothing gets. Sections appended before this
was fixed compared against TRL's defaults.
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

from launcher.core.workers import thread_env
from scripts.bench.common import ROOT, append_section, prepare, steady_step_s

BATCH, MAX_LEN = 16, 64


def ftl_step_s(work: Path, steps: int) -> float:
    cfg = {"name": "bench-ftl", "method": "sft", "model": {"path": "builtin:tiny-llama-256"},
           "data": {"train": {"path": "builtin:reverse", "num_rows": 4000}, "max_length": MAX_LEN},
           "train": {"max_steps": steps, "micro_batch_size": BATCH, "lr": 1e-3, "schedule": "constant",
                     "max_grad_norm": 1.0},
           "resources": {"num_workers": 1, "cpus_per_worker": 2},
           "checkpoint": {"dir": "runs", "save_final": False},
           "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False}}
    run = prepare(work, "ftl", cfg)
    subprocess.run([sys.executable, "-m", "launcher.train.loop", str(run)], check=True, cwd=ROOT,
                   env={**os.environ, **thread_env(2)}, capture_output=True)
    return steady_step_s(run)


def trl_step_s(work: Path, steps: int, defaults: bool = False) -> tuple[float, float]:
    """(median step seconds, mean real tokens per step) for TRL's SFTTrainer; ``defaults`` keeps
    TRL's bf16 autocast and gradient checkpointing instead of matching ftl's fp32 run."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from launcher.data.synthetic import generate
    from launcher.models.tiny import resolve_model_path

    torch.set_num_threads(2)
    path = resolve_model_path("builtin:tiny-llama-256")
    tok = AutoTokenizer.from_pretrained(path)
    rows = generate("reverse", 4000)
    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=BATCH,
                     learning_rate=1e-3, lr_scheduler_type="constant", max_grad_norm=1.0,
                     logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                     max_length=MAX_LEN, assistant_only_loss=True, packing=False, seed=42,
                     dataloader_num_workers=0,
                     **({} if defaults else {"bf16": False, "gradient_checkpointing": False}))
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Timer()])
    trainer.train()
    step_times = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)][5:]
    lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in rows[:500]]
    return statistics.median(step_times), statistics.mean(lengths) * BATCH


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trl-defaults", action="store_true",
                        help="also time TRL with its own defaults (bf16 autocast, gradient checkpointing)")
    parser.add_argument("--no-append", action="store_true", help="print the section, leave BENCHMARKS.md")
    args = parser.parse_args()
    which_runs = ["ftl", "trl"] + (["trl-defaults"] if args.trl_defaults else [])
    times: dict[str, list[float]] = {k: [] for k in which_runs}
    tokens = 0.0
    for rep in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="ftl-bench-trl-"))
        for which in (which_runs if rep % 2 == 0 else which_runs[::-1]):
            if which == "ftl":
                times["ftl"].append(ftl_step_s(work, args.steps))
            else:
                t, tokens = trl_step_s(work / which, args.steps, defaults=which == "trl-defaults")
                times[which].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    t = med["trl"]
    names = {"trl": "TRL SFTTrainer (fp32, no checkpointing)",
             "trl-defaults": "TRL SFTTrainer, TRL defaults (bf16 autocast, gradient checkpointing)",
             "ftl": "ftl sft (launcher.train.loop, 1 process)"}
    rows = [[names[k], f"{med[k] * 1000:.1f}", f"{tokens / med[k]:,.0f}", f"{t / med[k]:.2f}",
             " ".join(f"{x * 1000:.1f}" for x in times[k])]
            for k in ("trl", "trl-defaults", "ftl") if k in med]
    title = "ftl sft vs TRL SFTTrainer (CPU, one process, no packing)"
    command = f"python -m scripts.bench.trl --repeats {args.repeats} --steps {args.steps}" + (
        " --trl-defaults" if args.trl_defaults else "")
    header = ["trainer", "median step (ms)", "real tokens/s", "speed vs TRL", "per-repeat medians (ms)"]
    notes = (f"Model: builtin tiny-llama-256; batch {BATCH} chats of the reverse task ({tokens / BATCH:.1f} "
             f"tokens each on average), max_length {MAX_LEN}, fp32 on both sides (TRL set to bf16=False, "
             "gradient_checkpointing=False), constant LR, 2 torch threads. Packing on variable-length data: "
             "scripts.bench.packing.")
    if args.no_append:
        print(json.dumps({"table": [header, *rows], "notes": notes}))
    else:
        print(append_section(title, command, header, rows, notes))
    print(json.dumps({f"{k}_ms": v * 1000 for k, v in med.items()}))


if __name__ == "__main__":
    main()
