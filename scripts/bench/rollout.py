"""Rollout engines side by side: vLLM vs HF generate, same model, prompts and sampling.

    python -m scripts.bench.rollout [--model builtin:smollm2-135m-instruct] [--prompts 64]
        [--new-tokens 64] [--repeats 3] [--grpo-steps 4] [--no-append]

Part 1 (engines alone, one process, no Ray): both engines are built from one GRPO config
(``strategies.ppo.generation.HFEngine`` and ``strategies.ppo.vllm_engine.VLLMEngine``, exactly
what a rollout worker holds) and sample the same held-out ``builtin:prompts-add`` prompts with the
same settings, alternating engine order per repeat. The figure is sampled tokens per second of
wall time (median of repeats, the first call of each engine discarded as warm-up); the ratio is
vLLM's over HF's.

Part 2 (``--grpo-steps N``): the same GRPO run (1 trainer, 1 rollout worker, LoRA) with each
engine in one private Ray session; the step's time split (generate / score / train / sync, as
the controller waits for each) is the median over the steps after the first.

On a GPU machine pass ``--device cuda`` and a ~1B model folder (``--model``); vLLM must be
installed there (``./scripts/install.sh --with-vllm``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from launcher.metrics.jsonl import read_metrics
from scripts.bench.common import append_section, prepare

PHASES = ("generate", "score", "train", "sync")


def grpo_config(model: str, engine: str, prompts: int, new_tokens: int, steps: int, gpu: bool) -> dict:
    return {
        "name": f"bench-rollout-{engine}", "method": "grpo", "model": {"path": model},
        "peft": {"r": 8, "alpha": 16},
        "data": {"train": {"path": "builtin:prompts-add", "num_rows": 512},
                 "eval": {"path": "builtin:prompts-add", "num_rows": prompts}, "max_length": 64 + new_tokens},
        "train": {"max_steps": steps, "micro_batch_size": 8, "lr": 1e-4, "schedule": "constant"},
        "grpo": {"rollout": {"engine": engine, "num_workers": 1, "batch_size": 4,
                             "max_new_tokens": new_tokens, "temperature": 1.0,
                             "gpus_per_worker": 1 if gpu else 0},
                 "reward": {"function": "strategies.rl.verifiers:numeric_answer"},
                 "num_generations": 4, "beta": 0.0},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1 if gpu else 0},
        "cluster": {"target": "local", "local": {"num_cpus": 8}},
        "checkpoint": {"dir": "runs", "save_final": False},
        "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}},
    }


def engines_alone(args: argparse.Namespace) -> dict[str, float]:
    from launcher.config.load import validate_config
    from strategies.ppo.generation import HFEngine
    from strategies.ppo.prompts import load_prompts
    from strategies.ppo.vllm_engine import VLLMEngine

    gpu = args.device == "cuda"
    cfg = validate_config(grpo_config(args.model, "hf", args.prompts, args.new_tokens, 1, gpu))
    engines = {"vllm": VLLMEngine(cfg), "hf": HFEngine(cfg)}
    prompts = [p.ids for p in load_prompts(cfg, engines["hf"].tokenizer, "eval")]
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for repeat in range(args.repeats + 1):
        order = list(engines) if repeat % 2 == 0 else list(reversed(engines))
        for name in order:
            t0 = time.perf_counter()
            out = engines[name].generate(prompts, seed=repeat)
            rate = out["tokens"] / (time.perf_counter() - t0)
            print(f"repeat {repeat} {name}: {out['tokens']} tokens, {rate:.0f} tokens/s", flush=True)
            if repeat:
                rates[name].append(rate)
    return {name: statistics.median(r) for name, r in rates.items()}


def grpo_split(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    from cluster.local import start_private_ray, stop_private_ray
    from launcher.run.driver import run_trainer
    from launcher.run.rundir import RunFolder

    out = {}
    temp = start_private_ray(8)
    try:
        for engine in ("hf", "vllm"):
            cfg = grpo_config(args.model, engine, args.prompts, args.new_tokens, args.grpo_steps,
                              args.device == "cuda")
            run = prepare(work, f"grpo-{engine}", cfg)
            run_trainer(RunFolder(run))
            rows = read_metrics(run / "metrics.jsonl")
            rows = [r for r in rows if "time/step_s" in r and r["step"] > 1]
            out[engine] = {p: statistics.median(r[f"time/{p}_s"] for r in rows) for p in PHASES}
            out[engine]["step"] = statistics.median(r["time/step_s"] for r in rows)
    finally:
        stop_private_ray(temp)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=4)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    command = "python -m scripts.bench.rollout " + " ".join(sys.argv[1:])
    rates = engines_alone(args)
    rows = [["vLLM", f"{rates['vllm']:.0f}", f"{rates['vllm'] / rates['hf']:.2f}"],
            ["HF generate", f"{rates['hf']:.0f}", "1.00"]]
    notes = (f"{args.model}, {args.prompts} held-out builtin:prompts-add prompts x up to "
             f"{args.new_tokens} sampled tokens (temperature 1, top_p 1, fp32), the engines a rollout "
             f"worker holds, built from one config in one process on {args.device}; median of "
             f"{args.repeats} repeats after a warm-up call, engine order alternated.")
    if not args.no_append:
        append_section(f"Rollout engines: vLLM vs HF generate ({args.device})", command,
                       ["engine", "sampled tokens/s", "vs HF"], rows, notes)
    print(json.dumps(rates))
    if args.grpo_steps:
        with tempfile.TemporaryDirectory() as tmp:
            split = grpo_split(args, Path(tmp))
        rows = [[e, *(f"{split[e][p]:.2f}" for p in (*PHASES, "step"))] for e in ("hf", "vllm")]
        notes = (f"GRPO on {args.model} with LoRA r=8: 4 prompts x 4 responses of up to "
                 f"{args.new_tokens} tokens per step, numeric_answer verifier, 1 trainer + 1 rollout "
                 f"worker (Ray actors, 1 thread each); medians over steps 2-{args.grpo_steps}. sync = "
                 "full weights with the adapters merged (vLLM) or the adapters alone (HF).")
        if not args.no_append:
            append_section(f"GRPO step time by rollout engine ({args.device})", command,
                           ["engine", "generate s", "score s", "train s", "sync s", "step s"], rows, notes)
        print(json.dumps(split))


if __name__ == "__main__":
    main()
