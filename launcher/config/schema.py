"""Pydantic schema of one run.

Every section forbids unknown keys, so a typo fails with a did-you-mean instead of being
silently ignored. Method sections (``sft:``, ``full:``...) come from the strategy registry, so
adding a strategy adds its section to the schema and to ``ftl schema``.

This module must stay light (no torch, no transformers): ``ftl validate`` reports schema
errors in about a second.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cluster.registry import TARGETS
from launcher.backends.registry import BACKENDS
from launcher.config.section import Section
from launcher.core.errors import HintedValueError
from strategies import STRATEGIES


class ModelSection(Section):
    path: str = Field(
        description="Local HF folder, hub id, or 'builtin:<name>' for a model ftl creates "
        "(see `ftl list-builtins`)."
    )
    tokenizer: str | None = Field(None, description="Tokenizer folder or hub id; default: path.")
    gguf_file: str | None = Field(None, description="GGUF file inside `path` to dequantize.")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    cross_entropy: Literal["plain", "chunked", "liger"] = Field(
        "plain", description="How per-token log-probs/cross-entropy are computed from the LM head. "
        "plain: full [tokens, vocab] logits. chunked: plain torch, ce_chunk_tokens tokens at a time, each "
        "chunk recomputed in backward, so full logits never exist (CPU and GPU, every backend). liger: "
        "Liger-Kernel's fused linear cross-entropy for the summed LM loss (CUDA + the liger-kernel "
        "package; per-token log-probs of DPO/KTO/PPO use chunked).")
    ce_chunk_tokens: int = Field(
        1024, gt=0, description="Tokens per chunk of chunked cross-entropy: the LM head's buffers are "
        "about 2 x 4 x ce_chunk_tokens x vocab bytes, instead of 3 x 4 x vocab bytes for every token of "
        "the micro-batch.")
    activation_offload: bool = Field(
        False, description="Keep the tensors the forward saves for backward in host memory (saved-"
        "tensor hooks like torch's save_on_cpu, pinned on CUDA; parameters stay): with "
        "gradient_checkpointing, the layer inputs; GPU memory then holds the layer being computed. "
        "Costs PCIe transfers each step.")
    trust_remote_code: bool = False


class PeftSection(Section):
    type: Literal["lora", "qlora"] = Field("lora", description="qlora: 4-bit base (CUDA + bitsandbytes).")
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module names."
    )


class DataSource(Section):
    """One dataset: a file, a hub id, or a builtin synthetic task."""

    path: str | None = Field(
        None, description="jsonl/json/parquet/csv file or folder, hub id, or 'builtin:<task>'."
    )
    split: str = "train"
    name: str | None = Field(None, description="Task name for per-task metrics; default: file stem.")
    weight: float = Field(1.0, gt=0, description="Sampling weight in a mixture.")
    format: Literal["auto", "messages", "prompt_completion", "text", "preference", "feedback",
                    "classification", "pairs", "prompt"] = "auto"
    num_rows: int | None = Field(
        None, gt=0, description="Builtin tasks: rows to generate. Files: use at most this many."
    )
    seed: int = 0

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v


class DataSection(Section):
    train: list[DataSource]
    eval: list[DataSource] = Field(
        default_factory=list, description="Held-out sets; each is scored as eval/<name>/..."
    )
    max_length: int = Field(1024, gt=1)
    packing: bool = Field(False, description="Several examples per row, each attending only to itself "
                          "(every method; pairs and other multi-sequence items are packed whole).")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("train")
    @classmethod
    def _not_empty(cls, v: list[DataSource]) -> list[DataSource]:
        if not v:
            raise ValueError("needs at least one dataset")
        return v


class FreezeSection(Section):
    """Parameters to freeze: by name pattern (fnmatch) and/or by decoder-layer range."""

    patterns: list[str] = Field(default_factory=list, description="e.g. ['model.embed_tokens.*']")
    layers: str | None = Field(None, pattern=r"^\d+(-\d+)?$", description="e.g. '0-11' (inclusive)")
    embeddings: bool = False


class TrainSection(Section):
    max_steps: int = Field(gt=0)
    micro_batch_size: int = Field(1, gt=0)
    global_batch_size: int | None = Field(
        None, gt=0, description="micro_batch_size x accumulation x workers; default: no accumulation."
    )
    lr: float = Field(1e-5, gt=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 42
    max_failures: int = Field(0, ge=0, description="Worker-group restarts from the last checkpoint.")
    collective_timeout_s: int = Field(1800, gt=0, description="A collective (all-reduce, gather) that "
                                      "waits longer fails the run (gloo and NCCL).")
    hang_timeout_s: float | None = Field(1800, gt=0, description="Fail the run when a rank makes no "
                                         "step progress for this long, writing every thread's stack "
                                         "to its log (evaluation and saving do not count); null: off.")
    skip_nonfinite: int = Field(0, ge=0, description="Skip up to this many steps whose loss or gradient "
                                "norm is NaN/Inf (parameters and optimizer untouched, counted as "
                                "train/skipped_steps); 0: the first one stops the run.")
    freeze: FreezeSection | None = Field(None, description="Freeze parameters (transfer learning).")


#: the registries config names are checked against (all light: no torch, no Ray)
_REGISTRIES = {"method": STRATEGIES, "backend": BACKENDS, "target": TARGETS}


def _registered(kind: str, name: str) -> str:
    """Check ``name`` against the registry of ``kind``."""
    registry = _REGISTRIES[kind]
    if name not in registry:
        problem = registry.unknown(name)
        raise HintedValueError(problem.message, problem.hint)
    return name


class ShardingSection(Section):
    backend: str = Field(
        "ddp", description="ddp | deepspeed | fsdp2, a preset: zero1, zero2, zero3, "
        "zero3_offload, fsdp2, fsdp2_offload (`ftl schema` lists them), or auto: the least "
        "communicating one whose predicted memory fits (see `ftl plan`)."
    )
    zero_stage: Literal[0, 1, 2, 3] | None = Field(None, description="deepspeed: ZeRO stage.")
    offload_optimizer: Literal["none", "cpu"] | None = Field(
        None, description="deepspeed: optimizer states (and step) on CPU."
    )
    offload_params: Literal["none", "cpu"] | None = Field(
        None, description="deepspeed stage 3 / fsdp2: parameters on CPU between uses."
    )
    reshard_after_forward: bool = Field(True, description="fsdp2: free gathered params after forward.")
    deepspeed_config: dict[str, Any] | None = Field(
        None, description="deepspeed: expert settings merged on top of the generated config."
    )
    sp_size: int = Field(
        1, gt=0, description="Ulysses sequence parallelism: ranks sharing one sequence (each holds "
        "1/sp_size of its tokens; attention exchanges heads by all-to-all). Must divide "
        "resources.num_workers and the model's attention heads; sft and full only; 1: off."
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return _registered("backend", v)


class ResourcesSection(Section):
    num_workers: int = Field(1, gt=0, description="Workers (ranks); with min_workers, the most.")
    min_workers: int | None = Field(
        None, gt=0, description="Elastic: start with as few as this many workers when no more fit, "
        "keep going on fewer after losing some, and grow back to num_workers (Ray Train's elastic "
        "mode; each resize restarts from the newest checkpoint). The global batch stays the same: "
        "accumulation makes up for the missing workers. ddp and fsdp2 only.")
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    threads_per_worker: int | None = Field(
        None, gt=0, description="torch intra-op threads; default: cpus_per_worker."
    )
    gpu_memory_gb: float = Field(
        80, gt=0, description="Memory of one GPU in GB (10^9 bytes): `ftl plan` and sharding.backend "
        "auto check the predicted per-rank memory against it."
    )
    cpu_memory_gb: float = Field(
        1000, gt=0, description="Host RAM per node in GB, for model loading and CPU offload "
        "(on CPU-only runs, for everything)."
    )
    gpus_per_node: int | None = Field(
        None, gt=0, description="GPUs per node, for per-node host RAM and node counts; default: "
        "cluster.slurm.gpus_per_node when set, else 8."
    )
    placement_timeout_s: float | None = Field(
        600, gt=0, description="Fail the run when Ray cannot place every worker within this many "
        "seconds (more CPUs/GPUs asked for than the cluster has, a busy cluster, a lost node); "
        "null: wait for ever (an autoscaler that adds nodes slowly)."
    )


class LocalTarget(Section):
    num_cpus: int | None = Field(None, gt=0, description="CPUs the embedded Ray may use.")


class RayTarget(Section):
    address: str | None = Field(
        None, description="Ray dashboard URL, e.g. http://head:8265 (default: RAY_ADDRESS)."
    )
    forward_secrets: bool = Field(
        False, description="Removed; must stay false. Secrets never go into the job's runtime_env "
        "(Ray shows it in the dashboard and job info): set WANDB_API_KEY/HF_TOKEN in the "
        "cluster's own environment (README: Secrets)."
    )
    pip: list[str] = Field(default_factory=list, description="Extra pip packages for the job.")
    autoscaling: bool = Field(
        False, description="The cluster adds nodes on demand: do not refuse a run that needs more "
        "than its current nodes have (resources.placement_timeout_s still bounds the wait)."
    )


class SlurmTarget(Section):
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int | None = Field(None, gt=0, description="default: workers per node x cpus_per_worker")
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="per node, e.g. 480G")
    time: str = Field("24:00:00", pattern=r"^(\d+-)?\d+(:\d{2}){0,2}$")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    container_image: str | None = Field(None, description="pyxis/enroot image (srun --container-image)")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run first on every node, e.g. 'source /shared/venv/bin/activate'.",
    )
    python: str = Field("python", description="Python on the nodes that has ftl's dependencies.")
    join_timeout_s: int = Field(300, gt=0, description="Wait for every node's Ray to join, then fail.")
    requeue: bool = Field(True, description="Save and requeue the job when its time limit nears "
                          "(--signal=B:USR1@warning_s, --requeue); the requeued job resumes exactly.")
    warning_s: int = Field(300, gt=0, description="Seconds before the time limit at which Slurm sends the "
                           "warning: long enough for one step plus a checkpoint save.")


class SecretRef(Section):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str


class KubernetesTarget(Section):
    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = Field("rayproject/ray:2.60.0-py311-gpu", description="Image with ftl installed.")
    ray_version: str = "2.60.0"
    gpus_per_pod: int = Field(0, ge=0, description="GPUs per worker pod (0: one worker per pod, CPU).")
    cpus_per_pod: str | None = Field(None, description="default: workers per pod x cpus_per_worker")
    memory_per_pod: str = "64Gi"
    head_cpus: str = "4"
    head_memory: str = "16Gi"
    shm_size: str = Field("32Gi", description="/dev/shm as a memory emptyDir (NCCL needs it)")
    runs_pvc: str | None = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PVC holding the run folders, mounted on every pod (required unless "
                    "cluster_selector: without it the run folder lives on one pod's disk).")
    runs_mount: str | None = Field(
        None, pattern=r"^/", description="Where runs_pvc is mounted in the pods (default: "
                                         "checkpoint.dir); every run folder must lie under it.")
    termination_grace_s: int = Field(
        120, ge=15, description="Pod terminationGracePeriodSeconds: the preStop hook asks the run "
                                "to save a checkpoint and waits up to this minus 10 s.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    service_account: str | None = None
    wandb_secret: SecretRef | None = Field(None, description="Secret key holding the W&B API key.")
    hf_secret: SecretRef | None = Field(None, description="Secret key holding the HF token.")
    shutdown_after_job_finishes: bool = True
    ttl_seconds_after_finished: int = Field(3600, ge=0)
    backoff_limit: int | None = Field(
        None, ge=0, description="RayJob retries (each on a new RayCluster, resuming from the run "
                                "folder) after a failure or preemption; default 2, 0 with "
                                "cluster_selector (KubeRay cannot retry there).")
    active_deadline_seconds: int | None = Field(None, gt=0)
    cluster_selector: dict[str, str] = Field(
        default_factory=dict, description="Run on an existing RayCluster with these labels."
    )
    queue: str | None = Field(None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name).")


class ClusterSection(Section):
    target: str = "local"
    local: LocalTarget = Field(default_factory=LocalTarget)
    ray: RayTarget = Field(default_factory=RayTarget)
    slurm: SlurmTarget = Field(default_factory=SlurmTarget)
    kubernetes: KubernetesTarget = Field(default_factory=KubernetesTarget)

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: str) -> str:
        return _registered("target", v)


class CheckpointSection(Section):
    dir: str = Field("runs", description="Parent folder of run folders.")
    every_steps: int | None = Field(None, gt=0)
    keep: int = Field(2, gt=0)
    save_final: bool = Field(True, description="Write final/ in HF format at the end.")


class WandbSection(Section):
    project: str = "ftl"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when WANDB_API_KEY is set, offline otherwise."
    )
    tags: list[str] = Field(default_factory=list)


class LoggingSection(Section):
    every_steps: int = Field(10, gt=0)
    wandb: WandbSection = Field(default_factory=WandbSection)
    progress: bool = True
    report: bool = Field(True, description="When the run ends, write <run>/report/: PNG curves of every "
                         "logged series and one self-contained index.html (`ftl report RUN` draws it "
                         "any time). A report that cannot be drawn is a warning, never a failed run.")


class EvalSection(Section):
    every_steps: int | None = Field(None, gt=0)
    at_start: bool = True
    max_batches: int | None = Field(None, gt=0, description="Cap on held-out loss batches.")
    exact_match: bool | Literal["auto"] = Field(
        "auto", description="Greedy-generate answers and score exact match (auto: chat/prompt data)."
    )
    max_generate: int = Field(256, gt=0, description="Eval rows scored by generation.")
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(32, gt=0)




#: backends whose checkpoints load on any number of ranks (an elastic run resizes from them)
ELASTIC_BACKENDS = ("ddp", "fsdp2", "fsdp2_offload")


class RunConfigBase(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    method: str
    model: ModelSection
    peft: PeftSection | None = None
    data: DataSection
    train: TrainSection
    sharding: ShardingSection = Field(default_factory=ShardingSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return _registered("method", v)

    @model_validator(mode="after")
    def _batch_sizes_divide(self) -> RunConfigBase:
        gbs = self.train.global_batch_size
        per_step = self.train.micro_batch_size * self.data_parallel_size
        if gbs is not None and gbs % per_step:
            groups = "" if self.sharding.sp_size == 1 else " / sharding.sp_size"
            raise ValueError(
                f"train.global_batch_size ({gbs}) must be a multiple of "
                f"train.micro_batch_size x resources.num_workers{groups} ({per_step})"
            )
        return self

    @model_validator(mode="after")
    def _elastic_runs_keep_their_batch(self) -> RunConfigBase:
        low, high = self.resources.min_workers, self.resources.num_workers
        if low is None:
            return self
        if low > high:
            raise HintedValueError(f"resources.min_workers ({low}) is more than resources.num_workers "
                                   f"({high})", "num_workers is the most workers an elastic run uses")
        if self.sharding.sp_size > 1:
            raise HintedValueError(
                "resources.min_workers: sequence parallelism (sharding.sp_size "
                f"{self.sharding.sp_size}) cannot run elastic: a lost worker breaks its sequence-"
                "parallel group", "remove resources.min_workers, or set sharding.sp_size: 1")
        if self.sharding.backend not in ELASTIC_BACKENDS:
            raise HintedValueError(
                f"resources.min_workers: an elastic run needs sharding.backend ddp, fsdp2 or "
                f"fsdp2_offload, not {self.sharding.backend!r}",
                "DeepSpeed's ZeRO checkpoints are tied to the number of ranks that wrote them; "
                "FSDP2's (torch.distributed.checkpoint) and DDP's load on any number")
        micro = self.train.micro_batch_size
        uneven = [w for w in range(low, high + 1) if self.global_batch % (micro * w)]
        if uneven:
            raise HintedValueError(
                f"resources.min_workers: the global batch ({self.global_batch}) does not split over "
                f"{uneven[0]} workers x train.micro_batch_size {micro}",
                f"set train.global_batch_size to a multiple of micro_batch_size x every worker count "
                f"from {low} to {high}")
        return self

    @property
    def data_parallel_size(self) -> int:
        """Ranks that take different samples: workers / sharding.sp_size (the ranks of one
        sequence-parallel group share their samples). At least 1 while sp_size is invalid (the
        cross-checks in ``launcher.config.load`` report that)."""
        return max(1, self.resources.num_workers // self.sharding.sp_size)

    @property
    def grad_accum(self) -> int:
        per_step = self.train.micro_batch_size * self.data_parallel_size
        return (self.train.global_batch_size or per_step) // per_step

    def grad_accum_for(self, world_size: int) -> int:
        """Accumulation steps on ``world_size`` ranks for the configured global batch (an elastic
        run's world size changes; the global batch does not)."""
        dp = max(1, world_size // self.sharding.sp_size)
        return self.global_batch // (self.train.micro_batch_size * dp)

    @property
    def global_batch(self) -> int:
        return self.train.micro_batch_size * self.data_parallel_size * self.grad_accum

    def method_options(self) -> Section:
        return getattr(self, self.method)
