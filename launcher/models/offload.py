"""``model.activation_offload``: the tensors a forward saves for backward live in host memory.

How: saved-tensor hooks (``torch.autograd.graph.saved_tensors_hooks``) copy each saved tensor
that lives on an accelerator to host memory when the forward saves it (pinned on CUDA, so the copy
back is asynchronous) and back to the device when backward needs it. This is what torch's
``save_on_cpu`` does, with one difference that is why ftl has its own pair: parameters (and
views of them, e.g. the transposed weight a linear layer saves) are left where they are.
``save_on_cpu`` copies them too, which under ZeRO-3/FSDP2 would put every gathered weight of the
model on the host once per rank and step. With non-reentrant gradient checkpointing, a
checkpointed layer saves only its inputs (through the same hooks), so those are what moves;
the layer recomputed in backward lives on the device while it is computed. Chunked
cross-entropy's chunk inputs move the same way. On a CPU-only run nothing is on an accelerator,
so the hooks change nothing; the CPU test makes CPU tensors take the copy path (``from_cpu``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def _is_parameter(t: torch.Tensor) -> bool:
    base = t._base if t._base is not None else t
    return isinstance(t, nn.Parameter) or isinstance(base, nn.Parameter)


class OffloadSavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """Saved activations on the host between forward and backward; parameters untouched."""

    def __init__(self, pin_memory: bool | None = None, from_cpu: bool = False):
        """``from_cpu``: copy CPU tensors too (tests: the copy and the way back run on a CPU-only
        machine exactly as they do for accelerator tensors)."""
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.offloaded_bytes = 0
        self.kept_parameters = 0

        def pack(t: torch.Tensor) -> Any:
            if _is_parameter(t):
                self.kept_parameters += 1
                return t
            if t.device.type == "cpu" and not from_cpu:
                return t
            host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=pin)
            host.copy_(t)  # synchronous: the device tensor may be freed right after
            self.offloaded_bytes += t.numel() * t.element_size()
            return t.device, host

        def unpack(packed: Any) -> torch.Tensor:
            if isinstance(packed, torch.Tensor):
                return packed
            device, host = packed
            return host.to(device, non_blocking=pin)

        super().__init__(pack, unpack)


def activation_offload(cfg: Any) -> contextlib.AbstractContextManager:
    """The context the loss forward runs under: ``OffloadSavedTensors`` when ``model.activation_offload``."""
    if not getattr(cfg.model, "activation_offload", False):
        return contextlib.nullcontext()
    return OffloadSavedTensors()
