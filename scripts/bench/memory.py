"""Memory switches side by side on this CPU: cross-entropy plain vs chunked, gradient
checkpointing off/on, activation offload off/on: tokens/s and peak memory of a short training
loop, each configuration in a fresh process (peak RSS is a per-process high-water mark).

    python -m scripts.bench.memory [--steps 6] [--repeats 2] [--no-write]
    python -m scripts.bench.memory --one '{"cross_entropy": "chunked"}'   # one config, JSON out

Model: a random Llama with SmolLM2's vocabulary (49,152), hidden 64, 2 layers, fp32; micro
batch 4 x 512 tokens: the logits dominate, as they do for a large-vocabulary model at long
sequence. Peak = peak RSS (``VmHWM``) after the loop minus after a warm-up step of 8
tokens (model, gradients, optimizer states and torch's own buffers already allocated), so it is
the working memory of a training step. ``planned_logits`` is ``launcher.plan.memory_model``'s logits
term for the same shape (tests/unit/test_memory_model.py checks plain - chunked against it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHAPE = {"vocab": 49152, "hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2}
MICRO, SEQ = 4, 512
DEFAULTS = {"cross_entropy": "plain", "ce_chunk_tokens": 1024, "gradient_checkpointing": False,
            "activation_offload": False, "steps": 1, "micro": MICRO, "seq": SEQ}


def _rss_bytes() -> int:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: Linux carries that across
    fork + exec, so a child of a large parent (a pytest process with TRL loaded) starts with the
    parent's size as its peak; ``VmHWM`` belongs to the process's own address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def planned_logits(cross_entropy: str, ce_chunk_tokens: int = 1024, micro: int = MICRO,
                   seq: int = SEQ) -> int:
    """The planner's logits term for this benchmark's shape (fp32, one rank)."""
    from launcher.plan import memory_model as mm

    s = SHAPE
    shape = mm.ModelShape(params=0, trainable=0, layers=s["layers"], hidden=s["hidden"],
                          intermediate=s["intermediate"], heads=s["heads"], kv_heads=s["kv_heads"],
                          head_dim=s["hidden"] // s["heads"], vocab=s["vocab"], largest_module=0,
                          largest_block=0, outside_blocks=0)
    work = mm.Workload(micro_batch=micro, seq_len=seq, dtype="fp32", cross_entropy=cross_entropy,
                       ce_chunk_tokens=ce_chunk_tokens)
    return mm.logits_bytes(shape, work)


def measure(opts: dict) -> dict:
    """One configuration in this process: peak working memory and step times."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from launcher.models.chunked_ce import labelled_nll_sum
    from launcher.models.offload import OffloadSavedTensors

    opts = {**DEFAULTS, **opts}
    torch.set_num_threads(int(opts.get("threads", 2)))
    torch.manual_seed(0)
    s = SHAPE
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        max_position_embeddings=opts["seq"], tie_word_embeddings=False))
    if opts["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)

    def step(rows: int, length: int) -> float:
        ids = torch.randint(0, s["vocab"], (rows, length), generator=gen)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        t0 = time.perf_counter()
        offload = OffloadSavedTensors() if opts["activation_offload"] else None
        with offload if offload is not None else _null():
            loss = labelled_nll_sum(model, inputs, ids, mode=opts["cross_entropy"],
                                    chunk_tokens=opts["ce_chunk_tokens"])
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=False)  # gradients stay allocated: the baseline includes them
        return time.perf_counter() - t0

    step(1, 8)
    baseline = _rss_bytes()
    times = [step(opts["micro"], opts["seq"]) for _ in range(opts["steps"])]
    peak = _rss_bytes() - baseline
    steady = times[1:] or times
    return {**opts, "peak_bytes": peak, "step_s": statistics.median(steady),
            "tokens_per_s": opts["micro"] * opts["seq"] / statistics.median(steady),
            "planned_logits": planned_logits(opts["cross_entropy"], opts["ce_chunk_tokens"], opts["micro"],
                                             opts["seq"])}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run_one(opts: dict, timeout: float = 600) -> dict:
    """``measure`` in a fresh process (its own RSS high-water mark)."""
    # glibc keeps freed blocks below its (adaptive, up to 32 MB) mmap threshold in the heap, so
    # RSS would count chunk buffers it reuses as new peaks: every allocation over 128 KiB is mmapped
    # and returned on free instead (what tests/integration/test_sharding.py does for the same reason).
    # A clean environment: libraries imported by the caller (vLLM, TRL, Ray) export settings such
    # as LD_LIBRARY_PATH and KMP_* that changed the child's allocations when inherited (seen under
    # pytest after the GRPO/TRL tests).
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "OMP_NUM_THREADS", "HF_HOME", "HF_HUB_OFFLINE")
    env = {**{k: os.environ[k] for k in keep if k in os.environ},
           "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "scripts.bench.memory", "--one", json.dumps(opts)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


CONFIGS = [
    ("plain", {}),
    ("chunked CE", {"cross_entropy": "chunked"}),
    ("checkpointing", {"gradient_checkpointing": True}),
    ("checkpointing + chunked CE", {"gradient_checkpointing": True, "cross_entropy": "chunked"}),
    ("offload", {"activation_offload": True}),
    ("checkpointing + chunked CE + offload", {"gradient_checkpointing": True, "cross_entropy": "chunked",
                                              "activation_offload": True}),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help="JSON options: measure one configuration, print JSON")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return 0
    from scripts.bench.common import Contention, append_section, wait_quiet

    results: dict[str, list[dict]] = {label: [] for label, _ in CONFIGS}
    for _ in range(args.repeats):  # interleaved, so machine load spreads over every config
        for label, opts in CONFIGS:
            wait_quiet(max_wait_s=60)  # a shared machine: do not start inside someone's test suite
            with Contention() as busy:
                result = run_one({**opts, "steps": args.steps})
            results[label].append({**result, "contention": busy.other_share})
    base = statistics.median(r["tokens_per_s"] for r in results["plain"])
    rows = []
    for label, _ in CONFIGS:
        rs = results[label]
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        peak = statistics.median(r["peak_bytes"] for r in rs)
        busy = statistics.median(r["contention"] for r in rs)
        rows.append([label, f"{tps:,.0f}", f"{tps / base:.2f}x", f"{peak / 2**20:,.0f}",
                     f"{rs[0]['planned_logits'] / 2**20:,.0f}", f"{busy:.0%}"])
        print(f"{label:>40}: {tps:8,.0f} tokens/s  peak {peak / 2**20:8,.0f} MiB")
    if not args.no_write:
        notes = ("Model: random Llama with SmolLM2's vocabulary 49,152, hidden 64, 2 layers, fp32; "
                 f"micro batch {MICRO} x {SEQ} tokens, AdamW, one process, 2 threads; "
                 f"{args.steps} steps per process "
                 f"(median of steps 2..{args.steps}), {args.repeats} processes per configuration (medians).")
        append_section("Memory switches: chunked cross-entropy, checkpointing, activation offload (CPU)",
                       f"python -m scripts.bench.memory --steps {args.steps} --repeats {args.repeats}",
                       ["configuration", "tokens/s", "vs plain", "peak step MiB", "planned logits MiB",
                        "CPU taken by others"],
                       rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
