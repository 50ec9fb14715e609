"""Checks that need the model and data, run before anything is submitted.

Schema validation catches typos; preflight catches what only reading the inputs shows: a
model folder that does not exist, a tokenizer without the chat template the method needs,
a dataset row without the column the method reads. Every problem is reported at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.errors import Problem, UserError


def check_model(cfg: Any) -> list[Problem]:
    from launcher.models.tiny import TINY_MODELS, is_builtin

    path = cfg.model.path
    if is_builtin(path):
        name = path.split(":", 1)[1]
        return [] if name in TINY_MODELS else [TINY_MODELS.unknown(name, "model.path")]
    local = Path(path).expanduser()
    if path.startswith((".", "/", "~")) and not local.exists():
        return [Problem("model.path", f"folder not found: {path}",
                        "give a local HF folder, a hub id, or builtin:tiny-llama")]
    if local.is_dir() and not (local / "config.json").exists() and not cfg.model.gguf_file:
        return [Problem("model.path", f"{path} has no config.json",
                        "point at a folder written by save_pretrained (or set model.gguf_file)")]
    return []


def check_tokenizer(cfg: Any, spec: Any) -> tuple[Any, list[Problem]]:
    from launcher.models.load import load_tokenizer

    try:
        tok = load_tokenizer(cfg)
    except Exception as exc:  # transformers raises OSError/ValueError/... for missing files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, [Problem("model.path", f"cannot load the tokenizer: {msg}",
                              "offline? set HF_HUB_OFFLINE=1 and use a local folder")]
    if spec.needs_chat_template and not getattr(tok, "chat_template", None):
        uses_chat = any(s.format in ("auto", "messages") for s in cfg.data.train)
        if uses_chat:
            return tok, [Problem("model.tokenizer", f"method {spec.name!r} needs a chat template "
                                 "and this tokenizer has none",
                                 "use an instruct model's tokenizer, or prompt/completion text data")]
    return tok, []


def check_data(cfg: Any, spec: Any) -> list[Problem]:
    from launcher.data.sources import eval_split, load_source, resolve_format

    problems: list[Problem] = []
    groups = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    for prefix, sources in groups:
        for i, source in enumerate(sources):
            where = f"{prefix}.{i}"
            try:
                split = eval_split(source) if prefix == "data.eval" else None
                ds = load_source(source, where, split=split)
                if len(ds) == 0:
                    problems.append(Problem(f"{where}.path", "the dataset is empty"))
                    continue
                resolve_format(ds, source, spec.formats, where, cfg.method)
            except UserError as exc:
                problems.extend(exc.problems)
    return problems


def check_sharding(cfg: Any) -> list[Problem]:
    from launcher.auto_sharding import concrete_config
    from launcher.backends.registry import resolve_sharding

    cfg = concrete_config(cfg)
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


def preflight(cfg: Any, target: Any | None = None) -> Any:
    """Run every check; raise one UserError listing all problems. Returns the tokenizer."""
    from strategies import STRATEGIES

    spec = STRATEGIES.get(cfg.method, "method")
    problems = check_model(cfg)
    tokenizer = None
    if not problems:
        tokenizer, tok_problems = check_tokenizer(cfg, spec)
        problems += tok_problems
    problems += check_data(cfg, spec)
    problems += check_sharding(cfg)
    if target is not None:
        try:
            target.preflight(cfg)
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(problems, title=f"preflight found {len(problems)} problem(s)")
    return tokenizer
