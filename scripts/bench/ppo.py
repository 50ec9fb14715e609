"""PPO/GRPO throughput, sync vs one-step-off-policy async, side by side on the same machine.

    python -m scripts.bench.ppo [--method ppo] [--repeats 3] [--steps 16] [--no-append]

Both modes run the same config (builtin tiny Llama on builtin:prompts-letters with the
letter-'a' rule, 1 policy trainer, 2 rollout workers, 1 thread per actor) in one private Ray
session, in alternating order per repeat. The figure is the median RL step time after 2 warm-up
steps (``time/step_s``: wall time of one controller iteration, start-up excluded); the ratio is
sync's over async's (> 1: async is faster). The time split (generate / score / train / sync, as
the controller waits for each) shows where an overlap can and cannot help.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from launcher.metrics.jsonl import read_metrics
from scripts.bench.common import LoadSampler, append_section, prepare, wait_quiet

PHASES = ("generate", "score", "train", "sync")


def config(method: str, steps: int, async_: bool, new_tokens: int, workers: int, beta: float) -> dict:
    opts: dict = {"rollout": {"num_workers": workers, "batch_size": 32 if method == "ppo" else 8,
                              "max_new_tokens": new_tokens},
                  "reward": {"function": "strategies.ppo.rewards:letter_a_fraction"},
                  "ppo_epochs": 1, "minibatches": 2, "async": async_}
    if method == "ppo":
        opts.update(kl_coef=0.01, critic={"lr": 3e-3})
    else:
        opts.update(num_generations=4, beta=beta)
    return {
        "name": f"bench-{method}-{'async' if async_ else 'sync'}", "method": method,
        "model": {"path": "builtin:tiny-llama"},
        "data": {"train": {"path": "builtin:prompts-letters", "num_rows": 512}, "max_length": 96},
        "train": {"max_steps": steps, "micro_batch_size": 16, "lr": 3e-3, "schedule": "constant"},
        method: opts, "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "cluster": {"target": "local", "local": {"num_cpus": 16}},
        "checkpoint": {"dir": "runs", "save_final": False},
        "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}},
    }


def measure(run: Path, skip: int = 2) -> dict[str, float]:
    rows = read_metrics(run / "metrics.jsonl")
    rows = [r for r in rows if "time/step_s" in r and r["step"] > skip]
    out = {"step": statistics.median(r["time/step_s"] for r in rows),
           "rollout_busy": statistics.median(r["rollout/busy_s"] for r in rows)}
    for phase in PHASES:
        out[phase] = statistics.median(r[f"time/{phase}_s"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["ppo", "grpo"], default="ppo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rollout-workers", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.01, help="grpo: KL weight (0: no reference actor)")
    parser.add_argument("--no-append", action="store_true", help="print the section, leave BENCHMARKS.md")
    args = parser.parse_args()
    import ray

    from launcher.run.driver import run_trainer
    from launcher.run.rundir import RunFolder

    temp = tempfile.mkdtemp(prefix="ftl-bench-ray-", dir="/tmp")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=16, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
             configure_logging=False)
    results: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    try:
        for rep in range(args.repeats):
            work = Path(tempfile.mkdtemp(prefix="ftl-bench-ppo-"))
            for mode in (["sync", "async"] if rep % 2 == 0 else ["async", "sync"]):
                cfg = config(args.method, args.steps, mode == "async", args.new_tokens, args.rollout_workers,
                             args.beta)
                run = prepare(work, mode, cfg)
                wait_quiet(max_runnable=1.0, max_wait_s=120)
                with LoadSampler() as load:
                    run_trainer(RunFolder(run))
                results[mode].append({**measure(run), "load": load.mean})
                print(f"repeat {rep + 1} {mode}: {results[mode][-1]}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in results.items()}
    ratio = med["sync"]["step"] / med["async"]["step"]
    rows = [[mode, f"{med[mode]['step'] * 1000:.0f}",
             f"{med['sync']['step'] / med[mode]['step']:.2f}",
             " / ".join(f"{med[mode][p] * 1000:.0f}" for p in PHASES),
             f"{med[mode]['rollout_busy'] * 1000:.0f}", f"{med[mode]['load']:.1f}",
             " ".join(f"{r['step'] * 1000:.0f}" for r in results[mode])] for mode in ("sync", "async")]
    roles = ["1 policy trainer", f"{args.rollout_workers} rollout worker(s)"]
    if args.method == "ppo":
        roles += ["critic", "reference"]
    elif args.beta > 0:
        roles.append("reference")
    notes = (f"Method {args.method}: builtin tiny-llama, 32 responses of up to {args.new_tokens} tokens per "
             "step on builtin:prompts-letters (letter-'a' rule), 1 epoch x 2 minibatches; roles: "
             f"{', '.join(roles)}, each a Ray actor with 1 torch thread (placement separate). "
             f"Sync / async step time: {ratio:.2f}.")
    print(append_section(
        f"RL rollout overlap: {args.method} sync vs one-step-off async (CPU)",
        f"python -m scripts.bench.ppo --method {args.method} --repeats {args.repeats} --steps {args.steps} "
        f"--new-tokens {args.new_tokens} --rollout-workers {args.rollout_workers}"
        + (f" --beta {args.beta}" if args.method == "grpo" else ""),
        ["mode", "median step (ms)", "speed vs sync", "generate / score / train / sync (ms)",
         "rollout busy (ms)", "runnable tasks", "per-repeat medians (ms)"], rows, notes)
        if not args.no_append else json.dumps({"median": med, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
