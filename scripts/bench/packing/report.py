"""The BENCHMARKS.md section: tokens/s per trainer, ratios, and the run's own figures."""

from __future__ import annotations

import argparse
import json
import os
import statistics

from scripts.bench.common import append_section
from scripts.bench.packing.chats import CHATS_PER_STEP, MODEL, NUM_ROWS, SKIP, THREADS
from scripts.bench.packing.runners import RunResult


def best_per_step(runs: list[RunResult]) -> float:
    """Real tokens/s from the fastest time seen for each step over all runs of one trainer.

    Every run of a trainer sees the same batches step by step (seeded samplers), and other
    jobs can only slow a step down, so the per-step minimum is the least disturbed estimate of
    that trainer's speed on this batch sequence (``timeit``'s rule) when the machine is busy.
    """
    if any(r.tokens != runs[0].tokens for r in runs):
        raise ValueError("runs of one trainer saw different batches")
    fastest = [min(times) for times in zip(*(r.step_s for r in runs))]
    return sum(runs[0].tokens) / sum(fastest)


def section(args: argparse.Namespace, results: dict[str, list[RunResult]],
            attempts: dict[str, list[RunResult]], fill: dict[str, float], ftl_rows: int, trl_rows: int,
            check: dict[str, float]) -> str:
    """The BENCHMARKS.md section (appended unless --no-append)."""
    tps = {k: statistics.median(r.tokens_per_s for r in v) for k, v in results.items()}
    best = {k: best_per_step(v) for k, v in attempts.items()}
    others = [r.extra["other_share"] for v in results.values() for r in v]
    reruns = sum(r.extra.get("attempt", 0) for v in results.values() for r in v)
    layout = {"ftl padded": f"{CHATS_PER_STEP} chats, padded to the longest",
              "TRL padded": f"{CHATS_PER_STEP} chats, padded to the longest",
              "ftl packed": f"{ftl_rows} rows x {args.max_length} (bfd), one row each",
              "TRL packed": f"{trl_rows} bins (bfd) flattened to 1 x {trl_rows * args.max_length}"}
    table = []
    for name, runs in results.items():
        table.append([name, layout[name], f"{statistics.mean(runs[0].tokens):,.0f}",
                      f"{statistics.median(r.median_step_ms for r in runs):.0f}", f"{tps[name]:,.0f}",
                      f"{tps[name] / tps['TRL padded']:.2f}", f"{best[name]:,.0f}",
                      f"{best[name] / best['TRL padded']:.2f}",
                      f"{statistics.median(r.first_loss for r in runs):.4f}",
                      " ".join(f"{r.tokens_per_s:,.0f}" for r in runs)])

    def ratio(a: str, b: str) -> str:
        return f"{tps[a] / tps[b]:.2f} (best per step: {best[a] / best[b]:.2f})"

    ratios = (f"Ratios, medians of runs (and best per step): **ftl packed / TRL packed = "
              f"{ratio('ftl packed', 'TRL packed')}**; **ftl packed / TRL padded = "
              f"{ratio('ftl packed', 'TRL padded')}**; ftl padded / TRL padded = "
              f"{ratio('ftl padded', 'TRL padded')}; ftl packed / ftl "
              f"padded = {ratio('ftl packed', 'ftl padded')}; TRL packed / TRL padded = "
              f"{ratio('TRL packed', 'TRL padded')}.")
    # How the runs are set up and what each column means is in BENCHMARKS.md's first section of
    # this title (and this package's docstring); a section carries its own run's figures.
    notes = (
        f"{ratios}\n\nData: {NUM_ROWS} synthetic chats, lengths log-uniform from {fill['min_len']} to "
        f"{fill['max_len']} tokens (mean {fill['mean_len']:.1f}, median {fill['median_len']:.0f}); "
        f"max_length {args.max_length}. Model {MODEL}, fp32, sdpa, constant LR 1e-3, {THREADS} torch "
        f"threads. Packed rows per step carry the real tokens of {CHATS_PER_STEP} chats: ftl's rows hold "
        f"{fill['ftl_row']:.0f} real tokens on average, TRL's bins {fill['trl_row']:.0f}. Real tokens/s "
        f"over steps {SKIP + 1}..{args.steps}. Each run waited at most {args.max_wait:.0f} s for a quiet "
        f"machine and was rerun at most {args.retries} times when others took more than "
        f"{args.max_other:.0%} of the {os.cpu_count()} cores; share taken by others in the kept runs: "
        f"median {statistics.median(others):.0%}, max {max(others):.0%} ({reruns} reruns). Same-chats "
        "loss check at the initial weights (mean loss per trained token): "
        + ", ".join(f"{k} {v:.6f}" for k, v in check.items()) + ".")
    header = ["trainer", "rows per step", "real tokens/step", "median step (ms)", "real tokens/s (median)",
              "vs TRL padded", "real tokens/s (best per step)", "vs TRL padded", "loss at step 1",
              "per-run tokens/s"]
    title = "ftl sft vs TRL SFTTrainer with packing, variable-length chats (CPU, one process)"
    command = (f"python -m scripts.bench.packing --repeats {args.repeats} --steps {args.steps} "
               f"--max-length {args.max_length} --retries {args.retries} --max-other {args.max_other} "
               f"--max-wait {args.max_wait:.0f}")
    if args.no_append:
        return json.dumps({"table": [header, *table], "notes": notes})
    return append_section(title, command, header, table, notes)
