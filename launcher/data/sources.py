"""Load a ``DataSource`` as a ``datasets.Dataset``: local files, hub ids or builtin tasks.

Problems are reported as ``file:row`` so a user can open the file at the broken line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.core.errors import Problem, UserError
from launcher.core.registry import BUILTIN_PREFIX

if TYPE_CHECKING:
    import datasets

    from launcher.config.schema import DataSource

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# Columns each format needs; the first format whose columns are all present wins in 'auto'.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("chosen", "rejected"),          # + optional prompt (TRL's preference format)
    "feedback": ("prompt", "completion", "label"),  # unpaired preference (KTO): label true = desirable
    "classification": ("text", "label"),
    "pairs": ("anchor", "positive"),               # + optional negative
    "prompt": ("prompt",),                         # prompts only (online RL: PPO, GRPO)
}


def source_label(source: DataSource) -> str:
    """Short name of a source for per-task metrics (``eval/<task>/...``)."""
    if source.name:
        return source.name
    path = source.path or "data"
    if path.startswith(BUILTIN_PREFIX):
        return path[len(BUILTIN_PREFIX):]
    return Path(path).stem or path


def load_source(source: DataSource, where: str, split: str | None = None) -> datasets.Dataset:
    """Load one source. ``split`` overrides the source's own (builtin tasks: train/eval)."""
    import datasets

    path = source.path
    if path is None:
        raise UserError(Problem(f"{where}.path", "required field is missing"))
    split = split or source.split
    if path.startswith(BUILTIN_PREFIX):
        from launcher.data.synthetic import generate

        rows = generate(path[len(BUILTIN_PREFIX):], source.num_rows or 1000, source.seed, split)
        return datasets.Dataset.from_list(rows)
    local = Path(path).expanduser()
    try:
        if local.is_file():
            builder = FILE_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise UserError(Problem(f"{where}.path", f"unsupported file type {local.suffix!r}",
                                        f"use one of {', '.join(FILE_BUILDERS)}"))
            if builder == "json":
                _check_json_lines(local)
            ds = datasets.load_dataset(builder, data_files=str(local), split="train")
        elif local.is_dir():
            ds = datasets.load_dataset(str(local), split=split)
        elif path.startswith((".", "/", "~")) or local.suffix.lower() in FILE_BUILDERS:
            raise UserError(Problem(f"{where}.path", f"file not found: {path}",
                                    "paths are relative to the directory you run ftl from"))
        else:
            ds = datasets.load_dataset(path, split=split)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types; all mean "cannot read this source"
        raise UserError(Problem(f"{where}.path", f"cannot load {path!r}: {exc}".splitlines()[0],
                                "check the path, the split name and (for hub ids) HF_TOKEN")) from None
    if source.num_rows is not None and len(ds) > source.num_rows:
        ds = ds.select(range(source.num_rows))
    return ds


def _check_json_lines(path: Path) -> None:
    """Report the first malformed JSON line as file:line (datasets' own error has no line)."""
    if path.suffix.lower() != ".jsonl":
        return
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(Problem(f"{path}:{lineno}", f"invalid JSON: {exc.msg}")) from None
            if not isinstance(value, dict):
                raise UserError(Problem(f"{path}:{lineno}", "each line must be a JSON object"))


def eval_split(source: DataSource) -> str | None:
    """Split to read for an eval source: builtin tasks default to their held-out ``eval``."""
    if (source.path or "").startswith(BUILTIN_PREFIX) and source.split == "train":
        return "eval"
    return None


def row_location(source: DataSource, index: int) -> str:
    """``file:line`` for jsonl (1-based line), ``file:row N`` otherwise."""
    path = source.path or "data"
    if path.lower().endswith(".jsonl"):
        return f"{path}:{index + 1}"
    return f"{path}: row {index + 1}"


def resolve_format(ds: datasets.Dataset, source: DataSource, accepted: tuple[str, ...],
                   where: str, method: str) -> str:
    """Pick the row format and check every row has its columns (nulls are reported by row)."""
    columns = set(ds.column_names)
    if source.format != "auto":
        fmt = source.format
        if fmt not in accepted:
            raise UserError(Problem(f"{where}.format", f"method {method!r} does not take {fmt!r} data",
                                    f"it takes: {', '.join(accepted)}"))
    else:
        fmt = next((f for f in accepted if set(FORMAT_COLUMNS[f]) <= columns), "")
        if not fmt:
            wanted = " or ".join("+".join(FORMAT_COLUMNS[f]) for f in accepted)
            raise UserError(Problem(row_location(source, 0), f"missing column: method {method!r} "
                                    f"needs {wanted}; the data has {', '.join(sorted(columns)) or 'none'}",
                                    "rename the columns, or set data.*.format"))
    for column in FORMAT_COLUMNS[fmt]:
        if column not in columns:
            raise UserError(Problem(row_location(source, 0), f"missing column {column!r}",
                                    f"format {fmt!r} needs {', '.join(FORMAT_COLUMNS[fmt])}"))
        values = ds[column] if len(ds) <= 200_000 else ds.select(range(200_000))[column]
        for i, value in enumerate(values):
            if value is None or value == "" or value == []:
                raise UserError(Problem(row_location(source, i), f"missing column {column!r}",
                                        "every row needs it; drop or fix the row"))
    return fmt
