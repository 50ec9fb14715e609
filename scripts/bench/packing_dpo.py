"""Packed vs unpacked DPO on variable-length preference pairs (ftl, CPU, one process).

    python -m scripts.bench.packing_dpo [--repeats 3] [--steps 20] [--max-length 256]

Unpacked, a DPO micro-batch is ``[chosen rows; rejected rows]`` padded to the longest of them,
so one long answer makes every row of the batch long. Packed (``data.packing: true``), whole
pairs go into rows of ``2 x max_length`` tokens (best fit decreasing, TRL's packer), chosen and
rejected as two segments with restarting position ids: nearly no padding, and no attention
between segments.

Same data for both: pairs whose prompt, chosen and rejected lengths are each log-uniform (plain
text, so the answers carry EOS), the reference precomputed before step 1 (not timed), the same
model (builtin tiny-llama-256, fp32, sdpa, 2 torch threads), constant LR. The packed run takes
as many rows per step as carry the pairs of one unpacked step on average, so both do about the
same useful work per step. The figure is real (non-padding) tokens per second, counted from the
examples each step trained on (the pipeline and sampler replayed), median over steps after the
warm-up, then the median over repeats; runs alternate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
from pathlib import Path

from launcher.core.workers import OMP_NUM_THREADS
from scripts.bench.common import Contention, append_section, prepare, replayed_rows, run_loop, wait_quiet

MODEL = "builtin:tiny-llama-256"
PAIRS_PER_STEP = 16
NUM_ROWS = 512
SKIP = 5
SEED = 42
THREADS = 2
LETTERS = "abcdefghij"


def variable_pairs(num: int, max_length: int, seed: int = 0) -> list[dict]:
    """Preference rows (prompt, chosen, rejected as text) whose three parts have log-uniform
    lengths, from a couple of tokens to about a third of ``max_length`` each (letters are single
    tokens in the builtin tokenizer), so a pair's two sequences stay within ``max_length``."""
    rng = random.Random(f"bench-packing-dpo:{seed}")
    top = max_length // 3

    def letters() -> str:
        n = int(math.exp(rng.uniform(math.log(2), math.log(top))))
        return " ".join(rng.choice(LETTERS) for _ in range(n))

    return [{"prompt": f"copy: {letters()}", "chosen": letters(), "rejected": letters()} for _ in range(num)]


def _cfg(name: str, data: Path, steps: int, max_length: int, packing: bool, micro: int) -> dict:
    return {"name": name, "method": "dpo", "model": {"path": MODEL},
            "data": {"train": {"path": str(data)}, "max_length": max_length, "packing": packing},
            "dpo": {"beta": 0.1, "reference": "precomputed"},
            "train": {"max_steps": steps, "micro_batch_size": micro, "lr": 1e-4, "schedule": "constant",
                      "max_grad_norm": 1.0, "seed": SEED},
            "resources": {"num_workers": 1, "cpus_per_worker": THREADS},
            "checkpoint": {"dir": "runs", "save_final": False},
            "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False}}


def real_tokens(feature: dict) -> int:
    """Tokens a training item feeds the model, without padding: a packed row's tokens, or an
    unpacked pair's two sequences (prompt + chosen, prompt + rejected)."""
    if "input_ids" in feature:
        return len(feature["input_ids"])
    return 2 * len(feature["prompt_ids"]) + len(feature["chosen_ids"]) + len(feature["rejected_ids"])


def run(work: Path, data: Path, steps: int, max_length: int, packing: bool, micro: int) -> dict:
    name = f"dpo-{'packed' if packing else 'padded'}"
    folder = prepare(work, name, _cfg(name, data, steps, max_length, packing, micro))
    by_step = run_loop(folder, THREADS)
    picked = replayed_rows(folder, steps)
    tokens = [sum(real_tokens(f) for f in step) for step in picked]
    pairs = [sum(len(f.get("units", [f])) for f in step) for step in picked]
    keep = range(SKIP + 1, steps + 1)
    step_s = [by_step[s]["train/step_s"] for s in keep]
    kept_tokens = [tokens[s - 1] for s in keep]
    return {"tokens_per_s": statistics.median(t / s for t, s in zip(kept_tokens, step_s)),
            "step_ms": statistics.median(step_s) * 1000, "tokens_per_step": statistics.mean(kept_tokens),
            "pairs_per_step": statistics.mean(pairs[s - 1] for s in keep), "step_s": step_s,
            "tokens": kept_tokens, "first_loss": by_step[1]["train/loss"]}


def pairs_per_row(rows: list[dict], max_length: int) -> float:
    """Mean pairs per packed row, from ftl's own tokenizer and packer."""
    from transformers import AutoTokenizer

    from launcher.data.batching import pack_units
    from launcher.models.tiny import resolve_model_path
    from strategies.preference import tokenize_pair

    tok = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    feats = [tokenize_pair(tok, r, max_length) for r in rows]
    lengths = [2 * len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in feats]
    return len(rows) / len(pack_units(lengths, 2 * max_length))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--no-append", action="store_true", help="print the section, leave BENCHMARKS.md")
    parser.add_argument("--from-log", type=Path, help="no runs: make the section from this script's "
                        "printed output (its JSON lines)")
    args = parser.parse_args()
    if args.from_log:
        lines = [json.loads(x) for x in args.from_log.read_text().splitlines() if x.startswith("{")]
        head = next(x for x in lines if "pairs_per_row" in x)
        logged: dict[str, list[dict]] = {"unpacked": [], "packed": []}
        for x in lines:
            if "run" in x:
                logged[x["run"]].append(x)
        args.repeats = len(logged["packed"])
        print(section(args, logged, head["pairs_per_row"], head["packed_rows_per_step"]))
        return
    os.environ.setdefault(OMP_NUM_THREADS, str(THREADS))
    rows = variable_pairs(NUM_ROWS, args.max_length)
    per_row = pairs_per_row(rows, args.max_length)
    packed_rows = max(1, round(PAIRS_PER_STEP / per_row))
    print(json.dumps({"pairs_per_row": per_row, "packed_rows_per_step": packed_rows}), flush=True)
    base = Path(tempfile.mkdtemp(prefix="ftl-bench-packing-dpo-"))
    data = base / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runners = {"unpacked": (False, PAIRS_PER_STEP), "packed": (True, packed_rows)}
    results: dict[str, list[dict]] = {k: [] for k in runners}
    for rep in range(args.repeats):
        for name in (list(runners) if rep % 2 == 0 else list(reversed(runners))):
            waited = wait_quiet(max_wait_s=args.max_wait)
            work = base / f"rep{rep}-{name}"
            work.mkdir()
            packing, micro = runners[name]
            with Contention() as busy:
                res = run(work, data, args.steps, args.max_length, packing, micro)
            res.update(other_share=busy.other_share, waited_s=waited)
            results[name].append(res)
            print(json.dumps({"repeat": rep, "run": name, **res}), flush=True)
    print(section(args, results, per_row, packed_rows))


def best_per_step(runs: list[dict]) -> float:
    """Real tokens/s from the fastest time of each step over all runs of one layout: every run
    sees the same batches (seeded sampler) and other jobs only ever slow a step down, so this is
    the least disturbed estimate on a busy machine (``timeit``'s rule; as scripts.bench.packing)."""
    if any(r["tokens"] != runs[0]["tokens"] for r in runs):
        raise ValueError("runs of one layout saw different batches")
    return sum(runs[0]["tokens"]) / sum(min(times) for times in zip(*(r["step_s"] for r in runs)))


def section(args: argparse.Namespace, results: dict[str, list[dict]], per_row: float,
            packed_rows: int) -> str:
    tps = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
    best = {k: best_per_step(v) for k, v in results.items()}
    layout = {"unpacked": f"{PAIRS_PER_STEP} pairs = {2 * PAIRS_PER_STEP} rows padded to the longest",
              "packed": f"{packed_rows} rows x {2 * args.max_length} (bfd, whole pairs)"}
    table = [[name, layout[name], f"{statistics.mean(r['pairs_per_step'] for r in runs):.1f}",
              f"{statistics.mean(r['tokens_per_step'] for r in runs):,.0f}",
              f"{statistics.median(r['step_ms'] for r in runs):.0f}", f"{tps[name]:,.0f}",
              f"{tps[name] / tps['unpacked']:.2f}", f"{best[name]:,.0f}",
              f"{best[name] / best['unpacked']:.2f}",
              f"{statistics.median(r['first_loss'] for r in runs):.6f}",
              " ".join(f"{r['tokens_per_s']:,.0f}" for r in runs),
              " ".join(f"{r['other_share']:.0%}" for r in runs)]
             for name, runs in results.items()]
    notes = (f"**packed / unpacked = {tps['packed'] / tps['unpacked']:.2f}** (real tokens/s, medians of "
             f"{args.repeats} runs; {best['packed'] / best['unpacked']:.2f} from each step's fastest time "
             f"over the runs, which see the same batches). Data: {NUM_ROWS} synthetic text pairs, "
             f"prompt, chosen and rejected each log-uniform from 2 to {args.max_length // 3} letters; "
             f"max_length {args.max_length}; {per_row:.2f} pairs per packed row on average. Model {MODEL}, "
             f"fp32, sdpa, {THREADS} torch threads, one process, DPO sigmoid beta 0.1, reference "
             f"precomputed. Real tokens/s over steps {SKIP + 1}..{args.steps}; runs waited up to "
             f"{args.max_wait:.0f} s for a quiet machine.")
    header = ["run", "rows per step", "pairs/step", "real tokens/step", "median step (ms)",
              "real tokens/s (median)", "vs unpacked", "real tokens/s (best per step)", "vs unpacked",
              "loss at step 1", "per-run tokens/s", "other"]
    command = (f"python -m scripts.bench.packing_dpo --repeats {args.repeats} --steps {args.steps} "
               f"--max-length {args.max_length}")
    if args.no_append:
        return json.dumps({"table": [header, *table], "notes": notes})
    return append_section("ftl dpo packed vs unpacked, variable-length pairs (CPU, one process)", command,
                          header, table, notes)


if __name__ == "__main__":
    main()
