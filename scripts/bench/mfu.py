"""Model FLOPs utilisation (MFU) of ftl's SFT loop: packing on/off x gradient checkpointing on/off.

    python -m scripts.bench.mfu                  # GPU: ~1.1B Llama-like (TinyLlama's shape), bf16
    python -m scripts.bench.mfu --preset cpu     # this CPU box: a 4-layer model, fp32

Each configuration runs the per-rank loop without Ray (``python -m launcher.train.loop RUN_DIR``, one
rank) on the same variable-length chats (log-uniform lengths up to ``max_length``), side by side
in one invocation, and appends a section to BENCHMARKS.md.

MFU = model FLOPs of the real (non-padding) tokens a step trained / (step time x peak FLOP/s).
Model FLOPs per example of n tokens: 6·N·n + 12·L·d·n² (PaLM's convention: N = matmul weights
incl. the LM head, attention counted without the causal half; gradient-checkpointing recompute
and padding are not model FLOPs, so they lower MFU). The examples each step trained are replayed
from ftl's own data pipeline and sampler, so packed rows count their examples' n², not the row's.
Peak: bf16 dense of the GPU (H100/H200 989 TFLOP/s, A100 312; ``--peak-tflops`` otherwise); on a
CPU the measured fp32 matmul rate of the same thread count, which makes the CPU figure a
utilisation of what matmuls reach here, not of a datasheet.
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
from dataclasses import dataclass
from pathlib import Path

from launcher.core.workers import thread_env
from launcher.metrics.jsonl import read_metrics
from scripts.bench.common import ROOT, append_section, prepare, replayed_rows, steady_step_s
from scripts.bench.packing.chats import variable_chats

# bf16 dense tensor-core peaks (datasheet, SXM parts), FLOP/s.
GPU_PEAKS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}


@dataclass(frozen=True)
class Preset:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_length: int
    dtype: str
    micro: int
    steps: int
    skip: int
    chats: int


PRESETS = {
    # TinyLlama-1.1B's shape (a Llama-2 architecture at ~1B), untied 32k vocabulary.
    "gpu-1b": Preset(2048, 5632, 22, 32, 4, 32000, 2048, "bf16", 8, 30, 10, 4000),
    "cpu": Preset(256, 688, 4, 8, 4, 4096, 256, "fp32", 4, 14, 4, 1500),
}


def matmul_weights(p: Preset) -> int:
    """Weights that take part in a matmul per token (embedding lookup is not a matmul)."""
    head_dim = p.hidden // p.heads
    attn = 2 * p.hidden * p.hidden + 2 * p.hidden * p.kv_heads * head_dim
    mlp = 3 * p.hidden * p.intermediate
    return p.layers * (attn + mlp) + p.hidden * p.vocab


def example_flops(p: Preset, n: int) -> float:
    return 6.0 * matmul_weights(p) * n + 12.0 * p.layers * p.hidden * n * n


def model_folder(p: Preset, name: str) -> Path:
    """A random Llama of the preset's shape with ftl's builtin tokenizer (its 384 tokens use the
    first rows of the larger embedding), saved once under $FTL_HOME/models."""
    from transformers import LlamaConfig

    from launcher.core.paths import ftl_home
    from launcher.models.tiny import build_tokenizer, save_random_model

    folder = ftl_home() / "models" / f"bench-mfu-{name}-v1"
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer(384)
    config = LlamaConfig(vocab_size=p.vocab, hidden_size=p.hidden, intermediate_size=p.intermediate,
                         num_hidden_layers=p.layers, num_attention_heads=p.heads,
                         num_key_value_heads=p.kv_heads, max_position_embeddings=p.max_length,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    save_random_model(config, tokenizer, folder)
    return folder


def peak_flops(args: argparse.Namespace, threads: int) -> tuple[float, str]:
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"{args.peak_tflops} TFLOP/s (given)"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAKS.items():
            if key in name:
                return peak, f"{name}: bf16 dense {peak / 1e12:.1f} TFLOP/s"
        raise SystemExit(f"scripts.bench.mfu: unknown GPU {name!r}; pass --peak-tflops")
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    rate = 2 * 1024**3 / best
    return rate, (f"CPU fp32 matmul 1024^3 with {threads} threads, best of 20: "
                  f"{rate / 1e9:.1f} GFLOP/s (measured)")


def steps_flops(run: Path, p: Preset) -> list[float]:
    """Model FLOPs of each step, from the examples ftl's sampler gave it (replayed here)."""
    return [sum(example_flops(p, n) for row in rows for n in example_lengths(row))
            for rows in replayed_rows(run, p.steps)]


def example_lengths(row: dict) -> list[int]:
    """Lengths of the examples in a row: one, or several where position ids restart (packed)."""
    pos = row.get("position_ids")
    if not pos:
        return [len(row["input_ids"])]
    starts = [k for k, q in enumerate(pos) if q == 0] + [len(pos)]
    return [b - a for a, b in zip(starts, starts[1:])]


def run_one(work: Path, p: Preset, model: Path, data: Path, packing: bool, ckpt: bool, threads: int) -> dict:
    name = f"{'packed' if packing else 'padded'}-{'ckpt' if ckpt else 'nockpt'}"
    cfg = {"name": name, "method": "sft",
           "model": {"path": str(model), "dtype": p.dtype, "gradient_checkpointing": ckpt},
           "data": {"train": {"path": str(data)}, "max_length": p.max_length, "packing": packing},
           "train": {"max_steps": p.steps, "micro_batch_size": p.micro, "lr": 1e-4, "schedule": "constant",
                     "max_grad_norm": 1.0},
           "resources": {"num_workers": 1, "cpus_per_worker": threads,
                         "gpus_per_worker": 1 if p.dtype == "bf16" else 0},
           "checkpoint": {"dir": str(work / "runs"), "save_final": False},
           "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False}}
    run = prepare(work, name, cfg)
    proc = subprocess.run([sys.executable, "-m", "launcher.train.loop", str(run)], cwd=ROOT,
                          capture_output=True,
                          text=True, env={**os.environ, **thread_env(threads),
                                          "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    rows = read_metrics(run / "metrics.jsonl")
    by_step = {r["step"]: r for r in rows if "train/step_s" in r}
    keep = range(p.skip + 1, p.steps + 1)
    flops = steps_flops(run, p)
    summary = json.loads((run / "summary.json").read_text())
    return {"name": name, "packing": packing, "ckpt": ckpt,
            "step_s": steady_step_s(run, skip=p.skip),
            "flops_per_s": statistics.median(flops[s - 1] / by_step[s]["train/step_s"] for s in keep),
            "tokens_per_s": statistics.median((by_step[s]["train/tokens"] - by_step[s - 1]["train/tokens"])
                                              / by_step[s]["train/step_s"] for s in keep),
            "peak_gpu_mb": (summary.get("peak_gpu_mb_per_rank") or [None])[0],
            "peak_rss_mb": summary["peak_rss_mb_per_rank"][0]}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="gpu-1b where CUDA is available, cpu otherwise")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    preset = args.preset or ("gpu-1b" if torch.cuda.is_available() else "cpu")
    p = PRESETS[preset]
    peak, peak_note = peak_flops(args, args.threads)
    work = Path(tempfile.mkdtemp(prefix="ftl-mfu-"))
    model = model_folder(p, preset)
    data = work / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in variable_chats(p.chats, p.max_length)))
    results: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # alternate configurations so drift hits them alike
        for packing in (True, False):
            for ckpt in (False, True):
                r = run_one(work, p, model, data, packing, ckpt, args.threads)
                results.setdefault(r["name"], []).append(r)
                print(f"{r['name']}: {r['step_s'] * 1000:.0f} ms/step, {r['tokens_per_s']:,.0f} real tok/s, "
                      f"MFU {r['flops_per_s'] / peak:.1%}", flush=True)
    table = []
    for runs in results.values():
        mfu = statistics.median(r["flops_per_s"] for r in runs) / peak
        mem = runs[0]["peak_gpu_mb"]
        table.append([f"packing {'on' if runs[0]['packing'] else 'off'}",
                      "on" if runs[0]["ckpt"] else "off",
                      f"{statistics.median(r['step_s'] for r in runs) * 1000:.0f}",
                      f"{statistics.median(r['tokens_per_s'] for r in runs):,.0f}",
                      f"{statistics.median(r['flops_per_s'] for r in runs) / 1e12:.3g}",
                      f"{mfu:.1%}",
                      f"{mem:,.0f}" if mem is not None else f"RSS {runs[0]['peak_rss_mb']:,.0f}"])
    n = matmul_weights(p)
    notes = (f"Model: random Llama, hidden {p.hidden}, {p.layers} layers, {p.heads} heads ({p.kv_heads} KV), "
             f"MLP {p.intermediate}, vocab {p.vocab} ({n / 1e6:,.1f}M matmul weights), "
             f"{'bf16 autocast over fp32 master weights' if p.dtype == 'bf16' else p.dtype}, sdpa, AdamW, "
             f"DDP backend on one rank without Ray. "
             f"Data: {p.chats} synthetic chats, lengths log-uniform up to {p.max_length}; micro batch "
             f"{p.micro} rows (packed rows of {p.max_length}, or chats padded to the longest); "
             f"median over steps {p.skip + 1}..{p.steps}, repeats {args.repeats}. Peak: {peak_note}.")
    if not args.no_append:
        append_section(f"SFT model FLOPs utilisation ({preset})",
                       f"python -m scripts.bench.mfu --preset {preset} --repeats {args.repeats}",
                       ["data", "grad. checkpointing", "median step (ms)", "real tokens/s", "model TFLOP/s",
                        "MFU", "peak GPU MB (or host RSS MB)"], table, notes)
    print(json.dumps({k: [{kk: vv for kk, vv in r.items()} for r in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
