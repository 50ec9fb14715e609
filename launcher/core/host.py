"""What the submitting host may do to its own process without it reaching the cluster.

The CLI runs on laptops and login nodes without GPUs and submits jobs whose environment is,
by default, its own (``sbatch`` exports it, Ray's local driver passes it to workers). Anything
set in ``os.environ`` for the host's sake would therefore land on GPU nodes, so host-only
settings are scoped to the call that needs them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def host_has_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


@contextlib.contextmanager
def deepspeed_on_host() -> Iterator[None]:
    """Import DeepSpeed here (config checks, ``ftl export``) with the CPU accelerator on a host
    without GPUs, quietly: DeepSpeed picks its accelerator once, on import, so the variable is
    gone again before anything is submitted."""
    if host_has_gpu() or "DS_ACCELERATOR" in os.environ:
        yield
        return
    os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        yield
    finally:
        os.environ.pop("DS_ACCELERATOR", None)
