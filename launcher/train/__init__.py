"""What runs inside each worker rank (a Ray Train worker, or torchrun without Ray).

The training loop and its parts: process group, checkpoints, optimizer, evaluation, the NaN and
stop guard, the hang watchdog, memory sampling and sequence parallelism.
"""
