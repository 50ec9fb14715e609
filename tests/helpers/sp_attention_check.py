"""Ulysses attention against full-sequence sdpa, on the ranks of a ``torchrun`` launch.

``torchrun --nproc-per-node 2 tests/helpers/sp_attention_check.py OUT.json``: every rank builds
the same random q/k/v for the whole sequence, runs transformers' sdpa on all of it (the
reference), then runs ``launcher.train.sequence_parallel.ulysses_attention`` on its own token chunk;
rank 0 writes the largest differences (outputs and q/k/v gradients) per case to OUT.json.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

from launcher.train import sequence_parallel as sp_mod

CASES = {  # name: (heads, kv heads, sequence length, packed example lengths or None)
    "gqa": (4, 2, 12, None),
    "kv_fewer_than_ranks": (4, 1, 12, None),
    "packed": (4, 2, 12, [5, 4, 3]),
}


def run_case(group: sp_mod.SPGroup, heads: int, kv: int, seq: int, packed: list[int] | None
             ) -> dict[str, float]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(0)
    b, d = 2, 8
    q, k, v = (torch.randn(b, h, seq, d, generator=gen) for h in (heads, kv, kv))
    w = torch.randn(b, seq, heads, d, generator=gen)
    module = SimpleNamespace(num_key_value_groups=heads // kv, is_causal=True, layer_idx=0)
    segments = None
    mask = None
    if packed:
        positions = torch.cat([torch.arange(n) for n in packed]).expand(b, seq)
        segments = (positions == 0).long().cumsum(1)
        mask = (segments[:, None, :, None] == segments[:, None, None, :]) & torch.ones(seq, seq).bool().tril()
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref, _ = sdpa_attention_forward(module, *ref_in, mask, is_causal=mask is None, scaling=d ** -0.5)
    (ref * w).sum().backward()

    chunk = slice(group.rank * seq // group.size, (group.rank + 1) * seq // group.size)
    local_in = [t[:, :, chunk].clone().requires_grad_() for t in (q, k, v)]
    with sp_mod.active(group, segments):
        out, _ = sp_mod.ulysses_attention(module, *local_in, None, scaling=d ** -0.5)
        (out * w[:, chunk]).sum().backward()
    diffs = {"out": (out - ref[:, chunk]).abs().max().item()}
    for name, got, full in zip("qkv", local_in, ref_in):
        diffs[f"grad_{name}"] = (got.grad - full.grad[:, :, chunk]).abs().max().item()
    return diffs


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    group = sp_mod.build_groups(dist.get_rank(), dist.get_world_size(), dist.get_world_size())
    results = {name: run_case(group, *case) for name, case in CASES.items()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        worst = {name: {k: max(r[name][k] for r in gathered) for k in results[name]} for name in results}
        with open(out_path, "w") as fh:
            json.dump(worst, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
