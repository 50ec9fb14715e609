"""GPU check: the per-rank loop without Ray on one CUDA GPU, bf16 + nccl, for each backend.

    python -m scripts.gpu_check [--backends ddp,zero2,zero3,fsdp2] [--steps 30]
                                [--cross-entropy plain|chunked|liger] [--ce-only]

Each backend trains the builtin tiny-llama-256 on the reverse task in its own process
(``python -m launcher.train.loop RUN_DIR``, a one-rank nccl group) and must lower the training
loss. Prints one line per backend and exits non-zero if any failed. Needs torch with CUDA,
transformers, peft, datasets, deepspeed (for zero*); Ray is not used.

Before the backends, ``cross_entropy_check`` compares ``model.cross_entropy`` plain, chunked and
liger (liger-kernel installed, else skipped) on the GPU: the summed causal-LM loss and every
gradient (fp32, must agree within 1e-4 relative) and the peak CUDA memory of each forward+backward
on a Llama with a 128k vocabulary and 8k tokens (chunked and liger must stay well below plain).
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


def cross_entropy_check() -> int:
    """plain vs chunked vs liger on one GPU: loss, gradients, peak memory. Returns failures."""
    import importlib.util

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from launcher.models.chunked_ce import labelled_nll_sum

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=512, intermediate_size=1024,
                                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                         max_position_embeddings=4096)).cuda().float()
    ids = torch.randint(0, 128256, (2, 4096), device="cuda")
    labels = ids.clone()
    labels[:, :100] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    modes = ["plain", "chunked"] + (["liger"] if importlib.util.find_spec("liger_kernel") else [])
    results = {}
    for mode in modes:
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = labelled_nll_sum(model, inputs, labels, mode=mode, chunk_tokens=1024)
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        results[mode] = (loss.detach(), grads, peak)
    failures = 0
    ref_loss, ref_grads, ref_peak = results["plain"]
    for mode in modes:
        loss, grads, peak = results[mode]
        rel = max((grads[n] - ref_grads[n]).norm().item() / max(ref_grads[n].norm().item(), 1e-12)
                  for n in ref_grads)
        loss_rel = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
        ok = loss_rel < 1e-4 and rel < 1e-4 and (mode == "plain" or peak < ref_peak / 2)
        failures += not ok
        print(f"cross_entropy {mode:>7}: loss {loss.item():.6f} (rel {loss_rel:.1e}) "
              f"max grad rel diff {rel:.1e} peak {peak / 2**30:.2f} GiB {'ok' if ok else 'FAILED'}")
    if "liger" not in modes:
        print("cross_entropy   liger: skipped (liger-kernel not installed)")
    return failures


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="ddp,zero2,zero3,fsdp2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cross-entropy", default="plain", choices=["plain", "chunked", "liger"],
                        help="model.cross_entropy of the backend runs")
    parser.add_argument("--ce-only", action="store_true", help="only the cross-entropy comparison")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing run")
        return 2
    ce_failures = cross_entropy_check()
    if args.ce_only:
        return 1 if ce_failures else 0
    from launcher.config.load import config_to_dict, validate_config
    from launcher.run.rundir import RunFolder

    failures = ce_failures
    work = Path(tempfile.mkdtemp(prefix="ftl-gpu-"))
    for backend in args.backends.split(","):
        cfg = validate_config({
            "name": f"gpu-{backend}", "method": "sft",
            "model": {"path": "builtin:tiny-llama-256", "dtype": "bf16",
                      "cross_entropy": args.cross_entropy},
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
        proc = subprocess.run([sys.executable, "-m", "launcher.train.loop", str(folder.path)], cwd=ROOT,
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
