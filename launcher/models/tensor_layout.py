"""How a model's tensors are held across ranks, as the code outside a backend needs to know it.

Counting parameters, initialising LoRA adapters identically on every rank and reporting memory
all read parameters whose storage a sharding backend may have split (a ZeRO-3 partition, an
FSDP2 DTensor). ``TensorLayout`` answers those questions; this base is the unsharded answer, and
each sharding backend (``launcher.backends``) is a ``TensorLayout`` that overrides it. It lives
below the backends so that model loading can take a layout without importing them.
"""

from __future__ import annotations

import torch
from torch import nn


class TensorLayout:
    """How tensors are held across ranks; this base: whole, ordinary tensors on every rank (ddp,
    ZeRO-1/2, a model built outside any backend). Sharding backends override it."""

    #: ``offload_params: cpu`` also keeps gradients and optimizer states in host RAM (FSDP2's
    #: CPUOffloadPolicy), as ``launcher.train.state_bytes`` reports them
    offload_params_holds_states = False

    def local_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """The storage-backed tensor this rank holds for ``t`` (a parameter, gradient or
        optimizer state): its local shard when sharded, else ``t``."""
        return t

    def param_shape(self, param: torch.Tensor) -> tuple[int, ...]:
        """The full (unsharded) shape of a parameter."""
        return tuple(param.shape)

    def param_numel(self, param: torch.Tensor) -> int:
        """The full (unsharded) number of elements of a parameter."""
        return param.numel()

    def full_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """The whole value of a result computed from sharded tensors (the gradient norm)."""
        return t

    @torch.no_grad()
    def write_full(self, param: nn.Parameter, full: torch.Tensor) -> None:
        """Copy a full tensor, identical on every rank, into ``param`` (each rank keeps its part)."""
        param.copy_(full.to(param.device, param.dtype))


#: the layout of a model no backend has sharded
WHOLE = TensorLayout()
