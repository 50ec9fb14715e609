"""Run several prepared run folders one after another in one process group.

``torchrun --nproc-per-node 2 tests/helpers/run_many.py RUN_DIR...``: the per-rank loop joins
the existing group each time, so a matrix of backends costs one process start, not one each.
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from launcher.train.loop import train_rank

if __name__ == "__main__":
    for run_dir in sys.argv[1:]:
        train_rank(run_dir)
    if dist.is_initialized():
        dist.destroy_process_group()
