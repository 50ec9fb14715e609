"""Per-rank memory of a training run, by arithmetic only (no torch, no model in memory).

Why: a 70B run that does not fit is found out after the job queued, the nodes booted and the
weights streamed in. ``ftl plan`` answers before anything is submitted, and
``sharding.backend: auto`` (``launcher.plan.auto_sharding``) uses the same numbers to pick the least
communicating sharding that fits. Everything here is a pure function of a few integers, so the
planner can evaluate hundreds of layouts in milliseconds.

Units and scope: bytes. GPU terms are per rank (ftl runs one rank per GPU). CPU terms are per
node, because host RAM is shared by the ranks of a node; this is also how DeepSpeed's estimator
reports them. ``P`` is the parameter count, ``T`` the trainable part (all of ``P`` for full
fine-tuning, the adapters for LoRA), ``N`` the world size, ``g`` ranks per node, ``n`` nodes.

Model states
    * DeepSpeed (``deepspeed``/``zeroN`` presets): DeepSpeed converts the module to the 16-bit
      dtype (``b`` = 2 bytes; 4 for fp32) and keeps fp32 master weights, fp32 gradients and the
      two Adam moments (4 + 4 + 8 = 16 bytes per trainable parameter) in its optimizer. Both the
      split and the CPU figures reproduce DeepSpeed's own ``estimate_zero2/3_model_states_mem_needs``
      (including its ``additional_buffer_factor`` = 1.5 on host RAM), so a plan agrees with what
      DeepSpeed users already know: ZeRO-2 = ``2P + 18P/N``, ZeRO-3 = ``4 * largest_layer +
      18P/N``, where DeepSpeed's "largest layer" is the biggest single module's own parameters.
      Where DeepSpeed 0.19 (as ftl configures it) departs from the estimator, ftl follows what
      it allocates, measured per rank on CPU by ``tests/integration/test_state_bytes.py``:
      ZeRO-1 reduces gradients into the same partition as ZeRO-2 (``contiguous_gradients``: whole
      gradients only pass through the reduce bucket), so both hold ``(b + 4) T/N`` of gradients
      (the reduced partition and the fp32 copy the optimizer steps on); ZeRO-3 keeps parameters
      of at most ``stage3_param_persistence_threshold`` elements (default 1e5: norms, and most
      tensors of a small model) whole on every rank after the first step; and in fp32 (CPU runs,
      outside the estimator's 16-bit assumption) ZeRO-3 holds the partition backward reduces into
      (``b T/N``) besides the fp32 gradient copy, which the estimator leaves out. With gradient
      accumulation, ZeRO-1/2 offload sums micro-batches in a host buffer (``b T/N`` more).
    * DDP and FSDP2 (ftl's torch paths): ftl keeps fp32 weights on the module (``model.dtype``
      bf16 means autocast, or FSDP2's mixed-precision all-gather), gradients in fp32 and torch
      AdamW's two fp32 moments: 4 + 4 + 8 bytes per parameter, replicated (DDP, plus the
      reducer's flat gradient buckets) or divided by ``N`` (FSDP2).
    * ``RoleMemory.model_states`` lists the three model states per rank wherever they live
      (offloaded ones without the host buffer factor), with ``cpu_offloaded`` the part kept in
      host RAM by configuration: the figures ``launcher.train.state_bytes`` measures in a run.

Working buffers of sharded parameters
    ZeRO-3 gathers one module at a time: ``2b * largest_module`` (16-bit weights + gradients,
    DeepSpeed's figure). FSDP2 (``fully_shard`` per decoder layer, then the root) keeps the root
    group (embeddings, final norm, LM head) gathered from forward to the end of backward, computes
    one decoder layer while prefetching the next, and holds one layer's unsharded gradient until
    its reduce-scatter: ``c * root + 2c * layer + 4 * layer`` (``c`` = compute dtype bytes).

Activations (per rank, micro-batch ``m``, sequence ``s``)
    Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models" (2022),
    count ``s*m*h*(34 + 5*a*s/h)`` bytes per layer for a GPT block in 16-bit with dropout. The
    ``5*a*s/h`` part is the attention matrix (scores, softmax, dropout mask), which SDPA and
    FlashAttention never keep: they save the output and a log-sum-exp (4 bytes per head and
    token). A Llama-style block (no dropout, SwiGLU MLP of width ``I``, grouped-query attention
    with K/V width ``kv = kv_heads * head_dim``, RMSNorm computed in fp32) saves, per token and
    layer, counted with torch's saved-tensor hooks on transformers 5 (``tests/unit/
    test_memory_model.py`` recounts it on a tiny model)::

        fp32 everywhere              32h + 8kv + 16I + 4a + 8
        16-bit weights (DS, FSDP2)   20h + 4kv +  8I + 4a + 8
        autocast over fp32 weights   30h + 4kv +  8I + 4a + 8   (+ 16-bit copies of the weights)

    Eager attention adds the ``a*s`` probabilities (4 bytes each in fp32, 6 in 16-bit: the fp32
    softmax and its cast) and K/V repeated to all heads. With gradient checkpointing a layer
    keeps only its input (``r*h`` per token, ``r`` = bytes of the residual stream) and one layer
    is recomputed at a time in backward. On top: the final norm, and the logits buffer
    ``m*s*vocab*4`` bytes three times over (the fp32 log-probabilities cross-entropy saves, their
    gradient, and the logits' gradient, which coexist at the start of backward).

    ``model.cross_entropy: chunked`` (``launcher.models.chunked_ce``) never holds those: the LM
    head runs ``c = min(ce_chunk_tokens, m*s)`` tokens at a time, recomputed in backward, so the
    term is one chunk's ``2 * 4 * c * vocab`` (the recomputed fp32 logits and the buffer their
    gradient is built in; ``tests/unit/test_memory_model.py`` checks plain minus chunked against
    measured peak RSS on CPU).
    ``liger`` keeps a chunk of logits about the size of the hidden states, plus the head weight's
    and the input's gradients it computes in forward (Liger-Kernel's own chunking rule).
    ``model.activation_offload`` keeps the saved tensors in host RAM (``offloaded_activations``,
    per node: every rank's saved layers) and on the GPU the one layer being computed or
    recomputed. ``sharding.sp_size`` (sequence parallelism) divides the tokens each rank
    computes, so it divides the activation and logits terms.

Other roles (``frozen_role_memory``, ``kv_cache_bytes``) cover reference and reward models
(weights only, sharded like ZeRO-3 when the backend shards) and generation
(``2 * layers * kv_heads * head_dim * tokens * dtype`` bytes of KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 10**9

#: DeepSpeed's safety factor on host RAM (``additional_buffer_factor`` in its estimator).
CPU_BUFFER_FACTOR = 1.5
#: fp32 master weights + fp32 gradients + Adam momentum + variance, per trainable parameter.
DS_FP32_STATES = 16
#: bytes per element of each ``model.dtype``
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# Per token and decoder layer: coefficients of (h, kv, I) in bytes, see the module docstring.
_LAYER_COEFFS = {"fp32": (32, 8, 16), "half": (20, 4, 8), "autocast": (30, 4, 8)}
# Bytes per hidden element kept by a norm + the next matmul's input (final norm before LM head).
_NORM_BYTES = {"fp32": 12, "half": 8, "autocast": 10}
_LOGITS_COPIES = 3  # fp32 [tokens, vocab] buffers alive at the start of backward
#: fp32 [chunk, vocab] buffers of one chunk of chunked cross-entropy in backward: the recomputed
#: logits and the one buffer their gradient is built in (``chunked_ce._TargetStats``)
_CHUNK_COPIES = 2


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, read from the architecture (exact counts from the meta device)."""

    params: int
    trainable: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    largest_module: int  # biggest module's own parameters (DeepSpeed's "largest layer")
    largest_block: int  # biggest decoder layer (FSDP2's unit)
    outside_blocks: int  # embeddings, final norm, LM head: FSDP2's root group
    tied_embeddings: bool = False
    zero3_persistent: int = 0  # parameters ZeRO-3 keeps whole (stage3_param_persistence_threshold)

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Workload:
    micro_batch: int
    seq_len: int
    dtype: str = "bf16"  # model.dtype: fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa | flash_attention_2 | eager
    grad_accum: int = 1  # micro-batches per optimizer step
    cross_entropy: str = "plain"  # model.cross_entropy: plain | chunked | liger
    ce_chunk_tokens: int = 1024
    activation_offload: bool = False
    sp_size: int = 1  # sequence-parallel ranks a sequence is split over (sharding.sp_size)

    @property
    def tokens(self) -> int:
        """Tokens this rank computes per micro-batch (a sequence-parallel group splits them)."""
        return math.ceil(self.micro_batch * self.seq_len / max(self.sp_size, 1))


@dataclass(frozen=True)
class Layout:
    """How the model is spread: backend kind, ZeRO stage, offload, and the cluster's shape."""

    kind: str  # ddp | deepspeed | fsdp2
    world: int = 1
    ranks_per_node: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    reshard_after_forward: bool = True
    zero_init: bool = True  # ftl builds ZeRO-3 models under zero.Init (streamed, never whole)

    @property
    def nodes(self) -> int:
        return math.ceil(self.world / self.ranks_per_node)

    @property
    def shards_params(self) -> bool:
        return (self.kind == "deepspeed" and self.zero_stage == 3) or self.kind == "fsdp2"


@dataclass
class RoleMemory:
    """One role's bytes: GPU terms per rank, CPU terms per node. ``cpu_bytes`` is the larger of
    the peak while loading the model and the steady state (loading buffers are freed before
    offloaded states are allocated)."""

    gpu: dict[str, int] = field(default_factory=dict)
    cpu_load: int = 0
    cpu_steady: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: per rank: parameters, gradients, optimizer_states wherever they live, and cpu_offloaded
    model_states: dict[str, int] = field(default_factory=dict)

    @property
    def gpu_bytes(self) -> int:
        return sum(self.gpu.values())

    @property
    def cpu_bytes(self) -> int:
        return max(self.cpu_load, sum(self.cpu_steady.values()))

    def as_dict(self) -> dict:
        out = {"gpu": dict(self.gpu), "cpu": {"model_load_peak": self.cpu_load, **self.cpu_steady},
               "total_gpu_bytes": self.gpu_bytes, "cpu_bytes": self.cpu_bytes, "notes": list(self.notes)}
        if self.model_states:
            out["model_states_per_rank"] = dict(self.model_states)
        return out


def _states(parameters: int, gradients: int, optimizer_states: int, cpu_offloaded: int) -> dict[str, int]:
    return {"parameters": parameters, "gradients": gradients, "optimizer_states": optimizer_states,
            "cpu_offloaded": cpu_offloaded}


# ---------------------------------------------------------------------------- model states


def deepspeed_model_states(params: float, trainable: float, largest_module: float, layout: Layout,
                           weight_bytes: int = 2, buffer_factor: float = CPU_BUFFER_FACTOR,
                           persistent: float = 0, accumulates: bool = False) -> RoleMemory:
    """DeepSpeed's accounting of weights, gradients and optimizer states (see module docstring).

    With ``trainable == params``, ``weight_bytes == 2`` and neither of the two things the estimator
    does not know (``persistent``: parameters ZeRO-3 keeps whole; ``accumulates``: gradient
    accumulation, for which ZeRO-1/2 offload keeps a host buffer) the GPU total and ``cpu_bytes``
    equal ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs`` to
    the byte: sums are formed in the same order and truncated once, like DeepSpeed does.
    """
    P, T, b, f = params, trainable, weight_bytes, buffer_factor
    N, g, n = layout.world, layout.ranks_per_node, layout.nodes
    stage, off_opt, off_par = layout.zero_stage, layout.offload_optimizer, layout.offload_params
    mixed = b < 4
    mem = RoleMemory()
    if stage == 3:
        shard = int(b * P / N)
        kept_whole = int(b * persistent)  # gathered on the device even with offload_params
        # fp32: the partition backward reduces into is a second fp32 gradient buffer, besides the
        # flattened copy the optimizer steps on (16-bit figures stay DeepSpeed's estimator's).
        reduce_partition = 0 if mixed else int(b * T / N)
        mem.gpu["gathered_layers"] = int(2 * b * largest_module)
        if off_opt:
            mem.gpu["parameters"] = (0 if off_par else shard) + kept_whole
            grads, optim = int(4 * T / N) + reduce_partition, int(12 * T / N)
        else:
            sharded = int((b * P + DS_FP32_STATES * T) / N)
            mem.gpu["parameters"] = shard + kept_whole
            mem.gpu["gradients"] = grads = int(4 * T / N) + reduce_partition
            mem.gpu["optimizer_states"] = optim = sharded - shard - int(4 * T / N)
        mem.cpu_load = int((largest_module if layout.zero_init else P) * 4 * g * f)
        if off_opt:
            steady = int((DS_FP32_STATES * T + (b * P if off_par else 0) + (0 if mixed else b * T))
                         * (1 / n) * f)
            if off_par:
                mem.cpu_steady["offloaded_parameters"] = int(b * P * (1 / n) * f)
            mem.cpu_steady["offloaded_optimizer"] = steady - mem.cpu_steady.get("offloaded_parameters", 0)
        host = (shard if off_par else 0) + (grads + optim if off_opt else 0)
        mem.model_states = _states(shard + kept_whole, grads, optim, host)
        return mem
    mem.gpu["parameters"] = int(b * P)
    if off_opt:  # stages 1-2: gradients are reduced straight into the CPU partition
        mem.cpu_load = int(P * 4 * N * f)  # DeepSpeed counts every GPU here, not only the node's
        mem.cpu_steady["offloaded_optimizer"] = int(T * DS_FP32_STATES * f)
        grads, optim = int(4 * T / N), int(12 * T / N)
        if accumulates:  # micro-batches are summed in a host buffer (accumulated_grads_in_cpu)
            mem.cpu_steady["offloaded_grad_accumulation"] = int(b * T * f)
            grads += int(b * T / N)
        mem.model_states = _states(int(b * P), grads, optim, grads + optim)
        return mem
    if stage == 0:
        mem.gpu["gradients"] = int(b * T + (4 * T if mixed else 0))
        mem.gpu["optimizer_states"] = int((12 if mixed else 8) * T)
    else:  # ZeRO-1 and ZeRO-2 alike: the reduced partition + its fp32 copy, master + moments
        sharded = int((b * T + DS_FP32_STATES * T) / N)
        mem.gpu["optimizer_states"] = int(12 * T / N)
        mem.gpu["gradients"] = sharded - mem.gpu["optimizer_states"]
    mem.cpu_load = int(P * 4 * g * f)
    mem.model_states = _states(mem.gpu["parameters"], mem.gpu["gradients"], mem.gpu["optimizer_states"], 0)
    return mem


def torch_model_states(shape: ModelShape, workload: Workload, layout: Layout,
                       buffer_factor: float = CPU_BUFFER_FACTOR) -> RoleMemory:
    """DDP and FSDP2 as ftl runs them: fp32 weights, fp32 gradients, torch AdamW (fp32 moments).
    DDP holds frozen weights (LoRA base, freezing) in the compute dtype."""
    P, T, N, g, f = shape.params, shape.trainable, layout.world, layout.ranks_per_node, buffer_factor
    mem = RoleMemory()
    c = DTYPE_BYTES[workload.dtype]
    if layout.kind == "ddp":
        mem.gpu["parameters"] = 4 * T + c * (P - T)
        mem.gpu["gradients"] = 4 * T
        mem.gpu["optimizer_states"] = 8 * T
        if N > 1:  # DistributedDataParallel's flat buckets (gradient_as_bucket_view=False)
            mem.gpu["comm_buffers"] = 4 * T
        mem.cpu_load = int(4 * P * g * f)  # every rank builds the fp32 model on CPU first
        mem.model_states = _states(4 * T + c * (P - T), 4 * T, 8 * T, 0)
        return mem
    states = {"parameters": 4 * P // N, "gradients": 4 * T // N, "optimizer_states": 8 * T // N}
    if layout.offload_params:  # CPUOffloadPolicy: sharded weights, gradients and Adam on host
        mem.cpu_steady = {f"offloaded_{k}": int(v * g * f) for k, v in states.items()}
    else:
        mem.gpu.update(states)
    mem.model_states = _states(**states, cpu_offloaded=sum(states.values()) if layout.offload_params else 0)
    block = shape.largest_block
    if layout.reshard_after_forward:
        gathered = c * shape.outside_blocks + 2 * c * block + 4 * block
    else:  # every layer stays gathered from its forward to its backward
        gathered = c * shape.params + 4 * block
    mem.gpu["gathered_layers"] = gathered
    mem.cpu_load = int(4 * shape.largest_module * g * f)  # meta build + one tensor at a time
    return mem


# ---------------------------------------------------------------------------- activations


def activation_mode(workload: Workload, layout: Layout) -> str:
    """Which tensors are 16-bit: ``fp32``, ``half`` (the module itself is 16-bit: DeepSpeed
    converts it, FSDP2 gathers it so) or ``autocast`` (fp32 weights and residual stream, 16-bit
    matmuls: DDP)."""
    if workload.dtype == "fp32":
        return "fp32"
    return "autocast" if layout.kind == "ddp" else "half"


def layer_bytes_per_token(shape: ModelShape, workload: Workload, mode: str) -> int:
    """Bytes one decoder layer saves for backward, per token (module docstring's table)."""
    ch, ckv, ci = _LAYER_COEFFS[mode]
    per_token = ch * shape.hidden + ckv * shape.kv_width + ci * shape.intermediate
    if workload.attention == "eager":
        elem = 4 if mode == "fp32" else 2
        probs = 4 if mode == "fp32" else 6
        per_token += probs * shape.heads * workload.seq_len
        per_token += elem * 2 * (shape.heads * shape.head_dim - shape.kv_width)  # repeat_kv
    else:
        per_token += 4 * shape.heads  # log-sum-exp
    return per_token + 8  # two RMSNorm reciprocal roots (fp32)


def logits_bytes(shape: ModelShape, workload: Workload, mode: str = "fp32") -> int:
    """The LM head's loss buffers per rank, by ``model.cross_entropy`` (module docstring)."""
    tokens = workload.tokens
    if workload.cross_entropy == "chunked":
        return _CHUNK_COPIES * 4 * min(workload.ce_chunk_tokens, tokens) * shape.vocab
    if workload.cross_entropy == "liger":
        # Liger picks its chunk so a chunk's logits are about the size of the hidden states:
        # 2^ceil(log2(tokens / ceil(vocab / hidden))) rows. It keeps the chunk's logits (compute
        # dtype) and, from forward to backward, the weight's and the input's gradients.
        b = 4 if mode == "fp32" else 2
        chunk = min(tokens, 2 ** math.ceil(math.log2(max(1, math.ceil(
            tokens / math.ceil(shape.vocab / shape.hidden))))))
        return 2 * b * chunk * shape.vocab + b * shape.vocab * shape.hidden + b * tokens * shape.hidden
    return _LOGITS_COPIES * 4 * tokens * shape.vocab


def saved_activations(shape: ModelShape, workload: Workload, layout: Layout) -> tuple[int, int]:
    """(bytes all layers save for backward, bytes of the one layer being computed or recomputed)."""
    mode = activation_mode(workload, layout)
    tokens = workload.tokens
    full_layer = layer_bytes_per_token(shape, workload, mode) * tokens
    if workload.gradient_checkpointing:
        residual = 2 if mode == "half" else 4
        return shape.layers * residual * shape.hidden * tokens, full_layer
    return (shape.layers - 1) * full_layer, full_layer


def activation_memory(shape: ModelShape, workload: Workload, layout: Layout) -> dict[str, int]:
    """Per-rank activation terms for one micro-batch (forward + the start of backward); with
    ``activation_offload`` the saved layers are on the host (``offloaded_activations``) and the GPU
    keeps the layer being (re)computed."""
    mode = activation_mode(workload, layout)
    tokens = workload.tokens
    saved, current = saved_activations(shape, workload, layout)
    acts = current + (0 if workload.activation_offload else saved)
    acts += _NORM_BYTES[mode] * shape.hidden * tokens
    terms = {"activations": acts, "logits": logits_bytes(shape, workload, mode)}
    if mode == "autocast":  # 16-bit copies of the weights each matmul saves for backward
        matmul_params = shape.params - (0 if shape.tied_embeddings else shape.vocab * shape.hidden)
        if workload.gradient_checkpointing:
            matmul_params = shape.largest_block + shape.vocab * shape.hidden
        if layout.kind == "ddp":  # frozen weights are already 16-bit: only trained ones are copied
            matmul_params = min(matmul_params, shape.trainable)
        terms["autocast_weight_copies"] = DTYPE_BYTES[workload.dtype] * matmul_params
    return terms


# ---------------------------------------------------------------------------- roles


def policy_memory(shape: ModelShape, workload: Workload, layout: Layout,
                  buffer_factor: float = CPU_BUFFER_FACTOR) -> RoleMemory:
    """The trained model: model states + working buffers + activations."""
    if layout.kind == "deepspeed":
        mem = deepspeed_model_states(shape.params, shape.trainable, shape.largest_module, layout,
                                     DTYPE_BYTES[workload.dtype], buffer_factor, shape.zero3_persistent,
                                     workload.grad_accum > 1)
    elif layout.kind in ("ddp", "fsdp2"):
        mem = torch_model_states(shape, workload, layout, buffer_factor)
    else:
        raise ValueError(f"unknown backend kind {layout.kind!r}")
    mem.gpu.update(activation_memory(shape, workload, layout))
    if workload.activation_offload:  # every rank of the node keeps its saved layers in host RAM
        mem.cpu_steady["offloaded_activations"] = layout.ranks_per_node * saved_activations(
            shape, workload, layout)[0]
    if shape.trainable < shape.params:
        mem.notes.append(f"{shape.trainable:,} trainable of {shape.params:,}: gradients and "
                         "optimizer states cover the trainable (adapter) parameters only")
    return mem


def frozen_role_memory(shape: ModelShape, workload: Workload, layout: Layout) -> RoleMemory:
    """A reference or reward model: weights in the compute dtype, no gradients or optimizer;
    sharded like ZeRO-3 (plus one gathered module) when the backend shards parameters, whole on
    every rank otherwise. Forward runs without autograd, so only the logits buffer stays."""
    b = DTYPE_BYTES[workload.dtype]
    mem = RoleMemory()
    if layout.shards_params:
        mem.gpu["parameters"] = 0 if layout.offload_params else b * shape.params // layout.world
        mem.gpu["gathered_layers"] = b * (shape.largest_block if layout.kind == "fsdp2"
                                          else shape.largest_module)
        if layout.offload_params:
            mem.cpu_steady["offloaded_parameters"] = int(b * shape.params / layout.nodes * CPU_BUFFER_FACTOR)
    else:
        mem.gpu["parameters"] = b * shape.params
    # no autograd: chunked cross-entropy holds one chunk's logits (compute dtype + fp32)
    tokens = workload.tokens if workload.cross_entropy == "plain" else min(workload.tokens,
                                                                          workload.ce_chunk_tokens)
    mem.gpu["logits"] = (b + 4) * tokens * shape.vocab
    return mem


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int = 2) -> int:
    """Keys and values of every layer for ``tokens`` cached tokens (all sequences together)."""
    return 2 * layers * kv_heads * head_dim * tokens * dtype_bytes


def rollout_memory(shape: ModelShape, tokens: int, dtype_bytes: int = 2,
                   tensor_parallel: int = 1) -> RoleMemory:
    """A generation engine: 16-bit weights split over ``tensor_parallel`` GPUs + KV cache."""
    mem = RoleMemory()
    mem.gpu["parameters"] = dtype_bytes * shape.params // tensor_parallel
    mem.gpu["kv_cache"] = kv_cache_bytes(shape.layers, shape.kv_heads, shape.head_dim, tokens,
                                         dtype_bytes) // tensor_parallel
    return mem


def gb(n: float) -> str:
    """Bytes as GB (10^9), the unit of ``resources.gpu_memory_gb``."""
    return f"{n / GB:,.1f} GB"
