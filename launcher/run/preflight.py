"""Checks that need the model and data, run before anything is submitted.

Schema validation catches typos; preflight catches what only reading the inputs shows: a
model folder that does not exist, a tokenizer without the chat template the method needs,
a dataset row without the column the method reads. Every problem is reported at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.backends.registry import AUTO, resolve_sharding
from launcher.core.errors import HintedValueError, Problem, UserError
from launcher.data.report import RowError, measure_source
from launcher.data.sources import eval_split, load_source, resolve_format, row_location, source_label
from launcher.models.packaged import PACKAGED
from launcher.models.tiny import TINY_MODELS, is_builtin
from launcher.plan.auto_sharding import concrete_config
from launcher.plan.facts import model_dims, read_model_config
from strategies import STRATEGIES, build_strategy
from strategies.ppo.engine import vllm_status


class Notes(list):
    """What could not be checked from this machine (cluster paths, hub ids offline); beside it
    ``warnings`` (shown by every command that preflights) and ``data_lines`` (the token summary
    of each training source, shown by ``ftl validate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []
        self.data_lines: list[str] = []


def check_model(cfg: Any, notes: Notes, remote: bool = False) -> list[Problem]:
    path = cfg.model.path
    if is_builtin(path):
        name = path.split(":", 1)[1]
        if name in PACKAGED:
            try:
                PACKAGED.get(name).package_dir()  # installed? (converting waits for the run)
            except UserError as exc:
                return exc.problems
            return []
        if name in TINY_MODELS:
            return []
        problem = TINY_MODELS.unknown(name, "model.path")
        return [Problem(problem.where, f"{problem.message}; packaged: {', '.join(PACKAGED.names())}",
                        problem.hint)]
    local = Path(path).expanduser()
    if path.startswith((".", "/", "~")) and not local.exists():
        if remote:
            notes.append(f"model.path: {path} is not on this machine: not checked (it must exist on "
                         "the cluster)")
            return []
        return [Problem("model.path", f"folder not found: {path}",
                        "give a local HF folder, a hub id, or builtin:tiny-llama")]
    if local.is_dir() and not (local / "config.json").exists() and not cfg.model.gguf_file:
        return [Problem("model.path", f"{path} has no config.json",
                        "point at a folder written by save_pretrained (or set model.gguf_file)")]
    return []


def _method_model_paths(cfg: Any) -> list[tuple[str, str]]:
    """Other models a method reads: (field, path), e.g. PPO's reward model, DPO's reference."""
    opts = cfg.method_options()
    found = []
    reward = getattr(opts, "reward", None)
    if getattr(reward, "model", None):
        found.append((f"{cfg.method}.reward.model", reward.model))
    if getattr(opts, "ref_model", None):
        found.append((f"{cfg.method}.ref_model", opts.ref_model))
    return found


def check_method_models(cfg: Any, notes: Notes, remote: bool = False) -> list[Problem]:
    """A local model folder a method names must exist and hold a model or an adapter."""
    problems = []
    for where, path in _method_model_paths(cfg):
        local = Path(path).expanduser()
        if not (path.startswith((".", "/", "~")) or local.exists()):
            continue  # a hub id
        if not local.is_dir():
            if remote:
                notes.append(f"{where}: {path} is not on this machine: not checked")
                continue
            problems.append(Problem(where, f"folder not found: {path}",
                                    "point at a run's final/ folder (a `method: reward` run for rewards)"))
        elif not (local / "config.json").exists() and not (local / "adapter_config.json").exists():
            problems.append(Problem(where, f"{path} holds neither config.json nor adapter_config.json",
                                    "point at a folder written by save_pretrained, e.g. <run>/final"))
    return problems


def check_tokenizer(cfg: Any, spec: Any, notes: Notes, remote: bool = False) -> tuple[Any, list[Problem]]:
    from launcher.models.load import load_tokenizer

    try:
        tok = load_tokenizer(cfg)
    except Exception as exc:  # transformers raises OSError/ValueError/... for missing files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if remote:
            notes.append(f"model.path: the tokenizer cannot be loaded here ({msg[:120]}): chat template "
                         "and rows not checked; the architecture is planned from its config")
            return None, []
        return None, [Problem("model.path", f"cannot load the tokenizer: {msg}",
                              "offline? set HF_HUB_OFFLINE=1 and use a local folder")]
    if spec.needs_chat_template and not getattr(tok, "chat_template", None):
        uses_chat = any(s.format in ("auto", "messages") for s in cfg.data.train)
        if uses_chat:
            return tok, [Problem("model.tokenizer", f"method {spec.name!r} needs a chat template "
                                 "and this tokenizer has none",
                                 "use an instruct model's tokenizer, or prompt/completion text data")]
    return tok, []


def check_data(cfg: Any, spec: Any, notes: Notes, remote: bool = False, tokenizer: Any = None
               ) -> list[Problem]:
    """Columns of every source, then the first rows through the method's own tokenizer step
    (catches e.g. a label that is not in classify.labels as file:row)."""
    problems: list[Problem] = []
    groups = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    for prefix, sources in groups:
        for i, source in enumerate(sources):
            where = f"{prefix}.{i}"
            path = source.path or ""
            if remote and path.startswith(("/", "~")) and not Path(path).expanduser().exists():
                notes.append(f"{where}.path: {path} is not on this machine: not checked")
                continue
            try:
                split = eval_split(source) if prefix == "data.eval" else None
                ds = load_source(source, where, split=split)
                if len(ds) == 0:
                    problems.append(Problem(f"{where}.path", "the dataset is empty"))
                    continue
                fmt = resolve_format(ds, source, spec.formats, where, cfg.method)
                if tokenizer is not None and prefix == "data.train":
                    problems += _measure_train_source(cfg, tokenizer, ds, source, fmt, where, notes)
                elif tokenizer is not None:
                    problems += _check_rows(cfg, tokenizer, ds, source, fmt)
            except UserError as exc:
                problems.extend(exc.problems)
    return problems


def check_sharding(cfg: Any) -> list[Problem]:
    cfg = concrete_config(cfg)  # ftl validate: auto as it would choose (ftl run has chosen already)
    sharding = resolve_sharding(cfg.sharding)
    problems: list[Problem] = []
    if sharding.kind == "deepspeed":
        from launcher.backends.deepspeed import validate_ds_config

        problems += validate_ds_config(cfg)
    if cfg.peft is not None and cfg.peft.type == "qlora":
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            problems.append(Problem("peft.type", "qlora needs a CUDA GPU (4-bit weights via bitsandbytes)",
                                    "use peft.type: lora on CPU machines"))
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(Problem("peft.type", "qlora needs the bitsandbytes package",
                                    "pip install bitsandbytes"))
        if sharding.kind == "fsdp2" or sharding.zero_stage == 3:
            problems.append(Problem("sharding.backend", "qlora is supported with ddp, zero1 and zero2",
                                    "4-bit weights cannot be sharded by fsdp2/ZeRO-3 here"))
    return problems


def check_sequence_parallel(cfg: Any, notes: Notes) -> list[Problem]:
    """``sharding.sp_size`` must divide the attention heads: each rank of a sequence-parallel
    group runs attention for heads/sp of them. KV heads need not divide (GQA models with fewer
    KV heads than ranks get them replicated inside attention; noted)."""
    sp = cfg.sharding.sp_size
    if sp == 1:
        return []
    try:
        config, _ = read_model_config(cfg)
    except UserError as exc:
        return exc.problems
    dims = model_dims(config)
    heads, kv = dims["num_attention_heads"], dims["num_key_value_heads"]
    if heads % sp:
        return [Problem("sharding.sp_size", f"{sp} does not divide the model's {heads} attention heads",
                        "use an sp_size that divides num_attention_heads (each rank runs heads/sp_size)")]
    if kv % sp:
        notes.warnings.append(f"sharding.sp_size: {sp} does not divide the model's {kv} KV heads: "
                              "each rank gets copies of the KV heads its query heads use (more "
                              "all-to-all traffic)")
    return []


ROWS_CHECKED = 64


def _row_problem(source: Any, index: int, fmt: str, exc: Exception) -> Problem:
    if isinstance(exc, HintedValueError):
        return Problem(row_location(source, index), str(exc), exc.hint)
    return Problem(row_location(source, index), f"cannot read this row as {fmt!r} data: {exc}",
                   "check the row against the method's data format (`ftl schema`)")


def _check_rows(cfg: Any, tokenizer: Any, ds: Any, source: Any, fmt: str) -> list[Problem]:
    strategy = build_strategy(cfg, tokenizer)
    for i in range(min(len(ds), ROWS_CHECKED)):
        try:
            strategy.tokenize(ds[i], fmt)
        except (KeyError, TypeError, ValueError) as exc:
            return [_row_problem(source, i, fmt, exc)]
    return []


def _measure_train_source(cfg: Any, tokenizer: Any, ds: Any, source: Any, fmt: str, where: str,
                          notes: Notes) -> list[Problem]:
    """Every row (up to ROWS_MEASURED) through the method, with and without data.max_length:
    unreadable rows and data that would train on nothing are errors, rows losing their answer
    a warning, and the token summary a note (``ftl validate`` prints it)."""
    unlimited = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": 10**9})})
    try:
        report = measure_source(build_strategy(cfg, tokenizer), build_strategy(unlimited, tokenizer), ds, fmt,
                                where, source_label(source))
    except RowError as exc:
        return [_row_problem(source, exc.index, fmt, exc.cause)]
    if report is None:
        return []
    max_length = cfg.data.max_length
    notes.data_lines.append(report.summary_line(max_length))
    emptied, cut = report.rows_emptied(), report.rows_cut()
    if emptied and len(emptied) == report.measured:
        untrainable = [i for i in emptied if report.untruncated[i] == 0]
        if len(untrainable) == len(emptied):
            return [Problem(row_location(source, emptied[0]), "no row has a token to train on",
                            "check that rows have answers the method trains on")]
        fits = report.fitting_length([i for i in emptied if report.untruncated[i]])
        return [Problem(row_location(source, emptied[0]),
                        f"no row keeps a token to train on at data.max_length {max_length}: the answers "
                        f"start after the limit ({report.measured:,} rows measured)",
                        f"data.max_length: {fits} keeps every answer whole")]
    if emptied or cut:
        fits = report.fitting_length(emptied + cut)
        notes.warnings.append(f"{where}: at data.max_length {max_length}, {len(emptied):,} of "
                     f"{report.measured:,} rows keep no trained token and {len(cut):,} lose part of it "
                     f"(e.g. {row_location(source, (emptied or cut)[0])}); data.max_length: {fits} keeps "
                     "them whole")
    return []

def check_rollout_engine(cfg: Any, notes: Notes, remote: bool = False) -> list[Problem]:
    """``rollout.engine: vllm`` needs vLLM where the rollout workers run (here, for a local run)."""
    rollout = getattr(cfg.method_options(), "rollout", None)
    if rollout is None or rollout.engine != "vllm":
        return []
    where = f"{cfg.method}.rollout.engine"
    problems = []
    if rollout.gpus_per_worker and rollout.gpus_per_worker != rollout.tensor_parallel_size:
        problems.append(Problem(f"{cfg.method}.rollout.gpus_per_worker",
                                f"a vLLM engine spans tensor_parallel_size={rollout.tensor_parallel_size} "
                                f"GPUs but each worker asks for {rollout.gpus_per_worker}",
                                "set them equal"))
    status = vllm_status()
    if status is not None:
        if remote:
            notes.append(f"{where}: vllm is not installed here: not checked (the cluster's image needs it)")
        else:
            problems.append(Problem(where, status, "or use engine: hf (or auto)"))
    return problems


def check_cross_entropy(cfg: Any, notes: Notes, remote: bool = False) -> list[Problem]:
    """``model.cross_entropy: liger`` imports liger-kernel on every rank (CPU-only runs are refused
    by the config check already)."""
    import importlib.util

    if cfg.model.cross_entropy != "liger" or importlib.util.find_spec("liger_kernel") is not None:
        return []
    if remote:
        notes.append("model.cross_entropy: liger-kernel is not installed here: not checked (the "
                     "cluster's image needs it)")
        return []
    return [Problem("model.cross_entropy", "liger needs the liger-kernel package",
                    "pip install liger-kernel, or use model.cross_entropy: chunked")]


def preflight(cfg: Any, target: Any | None = None, notes: Notes | None = None) -> Any:
    """Run every check; raise one UserError listing all problems. Returns the tokenizer.
    What cannot be checked from here (cluster paths, offline hub ids) goes to ``notes``."""
    notes = Notes() if notes is None else notes
    remote = target is not None and not target.paths_are_local
    spec = STRATEGIES.get(cfg.method, "method")
    problems = check_model(cfg, notes, remote) + check_method_models(cfg, notes, remote)
    model_readable = not problems
    tokenizer = None
    if not problems:
        tokenizer, tok_problems = check_tokenizer(cfg, spec, notes, remote)
        problems += tok_problems
    problems += check_data(cfg, spec, notes, remote, tokenizer)
    if model_readable or cfg.sharding.backend != AUTO:  # auto chooses from the model's config
        problems += check_sharding(cfg)
    problems += check_sequence_parallel(cfg, notes)
    problems += check_rollout_engine(cfg, notes, remote) + check_cross_entropy(cfg, notes, remote)
    if target is not None:
        try:
            target.preflight(cfg)
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(problems, title=f"preflight found {len(problems)} problem(s)")
    return tokenizer
