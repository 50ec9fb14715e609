"""``model.activation_offload``: the tensors a forward saves for backward live in host memory.

Why torch's ``save_on_cpu`` and not a hand-written hook pair: it is the saved-tensor hook torch
ships for exactly this (copy to host at pack time, back to the device at unpack time, pinned
memory for asynchronous copies on CUDA), it composes with non-reentrant gradient checkpointing
(checkpointed layers save only their inputs, so those are what moves; the layer recomputed in
backward lives on the device while it is computed) and with chunked cross-entropy. On CPU it
is an identity (a copy to the same device), so a CPU test checks the wiring and exactness.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def activation_offload(cfg: Any) -> contextlib.AbstractContextManager:
    """The context the loss forward runs under: ``save_on_cpu`` when ``model.activation_offload``."""
    if not getattr(cfg.model, "activation_offload", False):
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
