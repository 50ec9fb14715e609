"""What a worker process is told about its CPU threads and accelerator, the same everywhere.

A rank, a PPO role actor and a benchmark child each get ``threads_per_worker`` torch threads
(default: the CPUs Ray reserved for it), and the same number for OpenMP through
``OMP_NUM_THREADS``: more threads than reserved CPUs make every process on a node wait for
descheduled threads. A worker without GPUs gets ``DS_ACCELERATOR=cpu`` because DeepSpeed picks
its accelerator once, on import, and would otherwise look for CUDA.
"""

from __future__ import annotations

from typing import Protocol

OMP_NUM_THREADS = "OMP_NUM_THREADS"
DS_ACCELERATOR = "DS_ACCELERATOR"
# Every training worker (a Ray Train rank, wherever it is submitted from): no per-line print
# patching (pages of noise from datasets.map), no tokenizer thread pools fighting the training
# threads.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "TOKENIZERS_PARALLELISM": "false"}


class WorkerResources(Protocol):
    """A config section that sizes workers (``resources``, a PPO role's section)."""

    threads_per_worker: int | None
    cpus_per_worker: float


def worker_threads(resources: WorkerResources) -> int:
    """torch intra-op threads of one worker: ``threads_per_worker``, else its whole CPUs (>= 1)."""
    return resources.threads_per_worker or max(1, int(resources.cpus_per_worker))


def thread_env(threads: int, *, cpu: bool = False) -> dict[str, str]:
    """Environment variables for a child process with ``threads`` threads (and, with ``cpu``,
    DeepSpeed's CPU accelerator)."""
    env = {OMP_NUM_THREADS: str(threads)}
    if cpu:
        env[DS_ACCELERATOR] = "cpu"
    return env
