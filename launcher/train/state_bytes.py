"""Bytes of model states one rank really holds: parameters, gradients, optimizer states.

Why: ``ftl plan`` predicts these per rank (``launcher.plan.memory_model``) and ``backend: auto`` picks a
sharding from the prediction. This module measures the same quantities inside a real run, so a
test (``tests/integration/test_state_bytes.py``) can hold the prediction to what every backend
allocates, and ``summary.json`` records them as ``model_state_bytes_per_rank``.

What is counted, and how
    Every figure is the size of distinct tensor *storages*: a storage reached twice (tied
    embeddings, parameters that are views of a flat buffer, gradients that are views of one
    reduce-scatter output) is counted once, with its full size (alignment padding included),
    because that is what the allocator holds.

    ``parameters`` (read after the first optimizer step)
        The module's parameters as this rank stores them: the whole tensor (DDP; ZeRO-1/2, whose
        parameters are views into one flat buffer per group), the local shard of an FSDP2
        ``DTensor`` (``to_local()``), or a ZeRO-3 parameter's partition ``ds_tensor`` plus the
        full tensor when it stays gathered (ZeRO-3 keeps parameters under
        ``stage3_param_persistence_threshold`` elements whole on every rank after the first step).
    ``gradients`` (read where the optimizer step consumes them)
        ``p.grad`` (local shard under FSDP2); DeepSpeed's reduced partitions: ZeRO-1/2
        ``averaged_gradients`` (and ``grads_in_partition``, ``accumulated_grads_in_cpu``), ZeRO-3's
        ``grad_partitions_flat_buffer``, and the fp32 gradient partitions of the master weights
        (``.grad`` of ``single_partition_of_fp32_groups`` / ``fp32_partitioned_groups_flat``).
        DeepSpeed steps inside ``engine.step()``, so the readings are taken by hooks: when its
        ZeRO optimizer's ``step`` is entered (right after the last backward) and each time the
        inner torch optimizer starts a step (DeepSpeed has just flattened the reduced partition
        into an fp32 copy; both exist then). The figure is the largest reading: gradient bytes
        alive at once. Torch backends are read once, just before ``optimizer.step()``.
    ``optimizer_states`` (read after the first step: torch optimizers allocate state lazily)
        The torch optimizer's ``state`` tensors (Adam moments, step counters) and, for DeepSpeed,
        the fp32 master partitions its inner optimizer updates (``single_partition_of_fp32_groups``,
        ``fp32_partitioned_groups_flat``) unless they share storage with the parameters.
    ``cpu_offloaded``
        How many of the bytes above live in host RAM *by configuration*: ZeRO offload_optimizer
        (gradient partitions, master weights, moments), ZeRO-3 offload_params (the partitions;
        gathered persistent parameters stay on the device), FSDP2 ``CPUOffloadPolicy`` (all
        three). On a CPU-only machine everything is in host RAM, so the device cannot tell.
    ``comm_buffers`` (DDP only)
        The reducer's flat gradient buckets (``gradient_as_bucket_view=False``), from DDP's own
        logging data; not a model state, reported so the plan's ``comm_buffers`` can be checked.

Not counted: working buffers sized by configuration or by one layer rather than by the model —
DeepSpeed's IPG reduce buckets (``reduce_bucket_size`` elements, allocated empty), its offload
transfer buffers (``temp_grad_buffer_for_*_offload``, ``param_buffer_of_bit16_for_cpu_offload_groups``),
and parameters gathered for one layer's compute (the plan's ``gathered_layers``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

log = logging.getLogger("ftl.state_bytes")

TERMS = ("parameters", "gradients", "optimizer_states")

# DeepSpeed ZeRO optimizer attributes that hold reduced gradients (stage 1/2 and stage 3, 0.19).
_DS_GRADIENT_ATTRS = ("averaged_gradients", "grads_in_partition", "accumulated_grads_in_cpu",
                      "grad_partitions_flat_buffer")
# ... and the fp32 master partitions its inner optimizer updates.
_DS_MASTER_ATTRS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Tensors inside nested lists, tuples and dict values (DeepSpeed's bookkeeping)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        flat = getattr(obj, "flat_partition", None)  # DeepSpeed's GradPartitionBufferGroup
        if isinstance(flat, torch.Tensor):
            yield flat
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _Tally:
    """Distinct storages and their bytes, split by whether they are offloaded by design.
    ``local``: the storage-backed tensor of a (possibly sharded) one (``Backend.local_tensor``:
    an FSDP2 ``DTensor``'s local shard)."""

    def __init__(self, local: Callable[[torch.Tensor], torch.Tensor],
                 skip: set[tuple[str, int]] | None = None):
        self.local = local
        self.seen: set[tuple[str, int]] = set(skip or ())
        self.total = 0
        self.offloaded = 0

    def add(self, tensors: Iterable[torch.Tensor | None], offloaded: bool) -> None:
        for t in tensors:
            if t is None or not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = self.local(t).untyped_storage()
            nbytes = storage.nbytes()
            key = (str(storage.device), storage.data_ptr())
            if nbytes == 0 or key in self.seen:
                continue
            self.seen.add(key)
            self.total += nbytes
            self.offloaded += nbytes if offloaded else 0


def _offload(backend: Any) -> tuple[bool, bool]:
    """(optimizer states offloaded, parameters offloaded), from the backend's configuration."""
    from launcher.backends.registry import resolve_sharding

    sharding = resolve_sharding(backend.cfg.sharding)
    return sharding.offload_optimizer == "cpu", sharding.offload_params == "cpu"


def _zero_optimizer(backend: Any) -> Any | None:
    """DeepSpeed's ZeRO optimizer (a wrapper around a torch optimizer), or None."""
    opt = backend.optimizer
    if isinstance(opt, torch.optim.Optimizer):
        return None
    return opt if isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer) else None


def _parameters(backend: Any, tally: _Tally) -> None:
    _, off_par = _offload(backend)
    for p in backend.module.parameters():
        ds_tensor = getattr(p, "ds_tensor", None)
        if ds_tensor is not None:  # ZeRO-3: the partition, plus the whole tensor if kept gathered
            tally.add([ds_tensor], offloaded=off_par)
            tally.add([p.data] if p.data.numel() else [], offloaded=False)
        else:
            tally.add([p], offloaded=backend.offload_params_holds_states and off_par)


def _gradients(backend: Any) -> _Tally:
    """Gradient storages alive now: the module's and, under DeepSpeed, its reduced partitions."""
    off_opt, off_par = _offload(backend)
    tally = _Tally(backend.local_tensor)
    module_grads = [p.grad for p in backend.module.parameters()]
    module_grads += [getattr(p, "grad_accum", None) for p in backend.module.parameters()]
    tally.add(module_grads, offloaded=backend.offload_params_holds_states and off_par)
    zero = _zero_optimizer(backend)
    if zero is not None:
        for attr in _DS_GRADIENT_ATTRS:
            tally.add(_tensors(getattr(zero, attr, None)), offloaded=off_opt)
        masters = [t for attr in _DS_MASTER_ATTRS for t in _tensors(getattr(zero, attr, None))]
        masters += [p for g in zero.optimizer.param_groups for p in g["params"]]
        tally.add([m.grad for m in masters], offloaded=off_opt)
    return tally


def _optimizer_states(backend: Any, tally: _Tally) -> None:
    off_opt, off_par = _offload(backend)
    zero = _zero_optimizer(backend)
    torch_opt = zero.optimizer if zero is not None else backend.optimizer
    offloaded = off_opt if zero is not None else backend.offload_params_holds_states and off_par
    tally.add(_tensors(list(torch_opt.state.values())), offloaded=offloaded)
    if zero is not None:  # fp32 master partitions (module parameters were tallied first)
        masters = [t for attr in _DS_MASTER_ATTRS for t in _tensors(getattr(zero, attr, None))]
        masters += [p for g in torch_opt.param_groups for p in g["params"]]
        tally.add(masters, offloaded=off_opt)


def _comm_buffers(backend: Any) -> int | None:
    """DDP's gradient buckets in bytes (``bucket_sizes`` of its logging data), else None."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(backend.model, DistributedDataParallel):
        return None
    sizes = str(backend.model._get_ddp_logging_data().get("bucket_sizes", ""))
    return sum(int(n) for n in re.findall(r"\d+", sizes))


def _states(backend: Any, grads: _Tally) -> dict[str, int]:
    params = _Tally(backend.local_tensor)
    _parameters(backend, params)
    # a master weight that *is* the parameter counts once
    optim = _Tally(backend.local_tensor, skip=params.seen)
    _optimizer_states(backend, optim)
    out = {"parameters": params.total, "gradients": grads.total, "optimizer_states": optim.total,
           "cpu_offloaded": params.offloaded + grads.offloaded + optim.offloaded}
    comm = _comm_buffers(backend)
    if comm is not None:
        out["comm_buffers"] = comm
    return out


def measure_model_states(backend: Any) -> dict[str, int]:
    """Bytes this rank holds now, by term (see the module docstring); ``gradients`` are the
    gradient storages that exist at the moment of the call."""
    return _states(backend, _gradients(backend))


class FirstStepProbe:
    """Measures :func:`measure_model_states` around the run's first optimizer step, then gets out
    of the way: gradients where the step consumes them, parameters and optimizer states once
    it has run (optimizers allocate state lazily). ``result`` is None until that step ran.

    The optimizer's ``step`` is wrapped for one call (an instance attribute, put back as it was
    before the wrapped step runs: LR schedulers keep their own wrapper there). DeepSpeed's ZeRO
    optimizer steps inside ``engine.step()`` and hands its fp32 partitions to an inner torch
    optimizer, which also gets a step pre-hook for that one step. Later steps run exactly as
    without the probe. A measurement that fails is logged and leaves ``result`` None: it must
    never stop a training run.
    """

    def __init__(self, backend: Any):
        self.backend = backend
        self.result: dict[str, int] | None = None
        self._best = _Tally(backend.local_tensor)
        self._hook: Any = None
        if backend.optimizer is None:
            return
        zero = _zero_optimizer(backend)
        if zero is not None:
            self._hook = zero.optimizer.register_step_pre_hook(lambda *_: self._read_gradients())
        self._wrap_once(backend.optimizer)

    def _wrap_once(self, optimizer: Any) -> None:
        had_own = "step" in vars(optimizer)
        previous = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            if had_own:
                optimizer.step = previous
            else:
                del optimizer.step
            self._read_gradients()
            try:
                return previous(*args, **kwargs)
            finally:
                self._finish()

        optimizer.step = step

    def _read_gradients(self) -> None:
        try:
            reading = _gradients(self.backend)
        except Exception:
            log.warning("model-state bytes: reading gradients failed", exc_info=True)
            return
        if reading.total >= self._best.total:
            self._best = reading

    def _finish(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        try:
            self.result = _states(self.backend, self._best)
        except Exception:
            log.warning("model-state bytes: measurement failed", exc_info=True)
