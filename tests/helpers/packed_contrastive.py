"""Two gloo ranks, packed contrastive micro-batches holding different numbers of examples:
the in-batch InfoNCE loss over candidates gathered across ranks, summed over ranks, must equal
one process's unpacked loss over all the examples (``torchrun --nproc-per-node 2 THIS OUT``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from launcher.config.load import validate_config
from launcher.data.synthetic import generate
from launcher.models.tiny import resolve_model_path
from strategies import build_strategy
from tests.helpers.ftl import tiny_config

if __name__ == "__main__":
    from transformers import AutoTokenizer

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    path = resolve_model_path("builtin:tiny-llama")
    tok = AutoTokenizer.from_pretrained(path)
    raw = tiny_config(method="contrastive", contrastive={"pooling": "last", "gather_across_ranks": True})
    raw["data"] = {"train": {"path": "builtin:pairs-reverse"}, "max_length": 64, "packing": True}
    strategy = build_strategy(validate_config(raw), tok)
    model = strategy.load_model(path, dtype=torch.float32).eval()
    feats = [strategy.tokenize(r, "pairs") for r in generate("pairs-reverse", 8, seed=4)]
    mine = feats[:5] if rank == 0 else feats[5:]  # 5 examples on rank 0, 3 on rank 1
    out = strategy.loss(model, strategy.collate(strategy.pack_dataset(mine)))
    out.loss_sum.backward()
    total = out.loss_sum.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        dist.destroy_process_group()  # one process alone: no gathering
        alone = strategy.loss(model, strategy.collate(feats))
        Path(sys.argv[1]).write_text(json.dumps({"packed_two_ranks": float(total),
                                                 "unpacked_one_process": float(alone.loss_sum)}))
    else:
        dist.destroy_process_group()
