"""Load a run config: YAML -> overrides -> one pydantic validation reporting every problem.

Errors name the dotted path and, when the value came from the file, ``file:line``; unknown
keys get a did-you-mean. ``--set a.b=value`` is checked against the schema before it is
applied, and its value is typed by the schema (YAML scalar syntax: ``1e-5``, ``true``, ``[a, b]``).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from launcher.backends.registry import resolve_sharding
from launcher.config.schema import RunConfigBase
from launcher.core.errors import HintedValueError, Problem, UserError
from launcher.core.registry import did_you_mean
from launcher.core.user_code import importable_from
from strategies import STRATEGIES


@cache
def run_config_model() -> type[RunConfigBase]:
    """RunConfig = the base sections + one optional section per registered method."""
    # Optional here; validate_config fills in the chosen method's section, so its required
    # fields (e.g. classify.labels) are reported while other methods' sections stay absent.
    method_fields: dict[str, Any] = {
        name: (spec.options | None, Field(None, description=spec.description))
        for name, spec in STRATEGIES.items()
    }

    return create_model(
        "RunConfig",
        __base__=RunConfigBase,
        **method_fields,
    )


# ---------------------------------------------------------------- YAML with line numbers


def _load_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """Parse YAML and remember the line of every mapping key and sequence item."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(Problem(str(path), "config file not found")) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(Problem(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(Problem(str(path), "a config file must be a mapping of sections"))
    lines: dict[tuple, int] = {}

    def walk(n: yaml.Node, loc: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                lines[loc + (key.value,)] = key.start_mark.line + 1
                walk(value, loc + (key.value,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[loc + (i,)] = item.start_mark.line + 1
                walk(item, loc + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


# ---------------------------------------------------------------- overrides


def _field_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like ``Foo | None`` or ``list[Foo]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _field_model(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in get_args(annotation))


def _check_override_path(model: type[BaseModel], parts: list[str], raw: str) -> None:
    current: type[BaseModel] | None = model
    seen: list[str] = []
    expect_index = False
    for part in parts:
        if expect_index:
            expect_index = False
            if part.isdigit():
                seen.append(part)
                continue
        if current is None:
            raise UserError(Problem(f"--set {raw}", f"{'.'.join(seen)} has no field {part!r}"))
        fields = current.model_fields
        if part not in fields:
            close = did_you_mean(part, list(fields))
            where = ".".join(seen + [part])
            raise UserError(
                Problem(f"--set {raw}", f"unknown config path {where!r}",
                        f"did you mean {'.'.join(seen + [close])!r}?" if close
                        else f"fields here: {', '.join(fields)}")
            )
        annotation = fields[part].annotation
        expect_index = _is_list(annotation)
        current = _field_model(annotation)
        seen.append(part)


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b.c=value`` overrides (schema-checked paths, YAML-typed values)."""
    model = run_config_model()
    data = copy.deepcopy(data)
    for raw in overrides:
        key, sep, value_text = raw.partition("=")
        if not sep or not key.strip():
            raise UserError(Problem(f"--set {raw}", "expected KEY=VALUE", "e.g. --set train.lr=1e-5"))
        parts = key.strip().split(".")
        _check_override_path(model, parts, raw)
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else ""
        except yaml.YAMLError:
            value = value_text
        target: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(target, list):
                idx = int(part)
                if idx >= len(target):
                    raise UserError(Problem(f"--set {raw}", f"index {idx} is out of range"))
                target = target[idx]
                continue
            if part not in target or target[part] is None:
                target[part] = [] if nxt.isdigit() else {}
            elif isinstance(target[part], dict) and nxt.isdigit():
                target[part] = [target[part]]  # data.train given as one mapping
            target = target[part]
        last = parts[-1]
        if isinstance(target, list):
            idx = int(last)
            if idx >= len(target):
                raise UserError(Problem(f"--set {raw}", f"index {idx} is out of range"))
            target[idx] = value
        else:
            target[last] = value
    return data


# ---------------------------------------------------------------- validation


def _error_problem(err: dict, model: type[BaseModel], source: str, lines: dict) -> Problem:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc)
    line = lines.get(loc) or next(
        (lines[loc[:i]] for i in range(len(loc) - 1, 0, -1) if loc[:i] in lines), None
    )
    where = f"{source}:{line} {dotted}" if line else f"{source} {dotted}".strip()
    hint = None
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        if parent is not None:
            known = list(parent.model_fields)
            close = did_you_mean(str(loc[-1]), known)
            hint = f"did you mean {close!r}?" if close else f"known keys: {', '.join(known)}"
        return Problem(where, "unknown key", hint)
    if err["type"] == "missing":
        return Problem(where, "required field is missing")
    inner = err.get("ctx", {}).get("error")
    if isinstance(inner, HintedValueError):
        return Problem(where, str(inner), inner.hint)
    msg = err["msg"]
    if err["type"] in ("literal_error", "enum") and "expected" in err.get("ctx", {}):
        msg = f"{msg} (got {err.get('input')!r})"
    return Problem(where, msg)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _field_model(field.annotation)
    return current


def validate_config(data: dict, source: str = "<config>", lines: dict | None = None):
    """Validate a config mapping; raise one UserError listing every problem."""
    model = run_config_model()
    lines = lines or {}
    problems = _foreign_method_sections(data, source, lines)
    method = data.get("method")
    if isinstance(method, str) and method in model.model_fields and data.get(method) is None:
        data = {**data, method: {}}
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        problems += [_error_problem(e, model, source, lines) for e in exc.errors(include_url=False)]
    else:
        problems += _cross_checks(cfg)
    if problems:
        raise UserError(problems, title=f"{source}: {len(problems)} problem(s) in the config")
    return cfg


def _cross_checks(cfg: Any) -> list[Problem]:
    """Checks that span sections (run after the schema passed)."""
    problems: list[Problem] = []
    try:
        resolve_sharding(cfg.sharding)
    except UserError as exc:
        problems += exc.problems
    if cfg.data.packing and cfg.method in UNPACKABLE:
        problems.append(Problem("data.packing", f"method {cfg.method!r} does not pack examples: "
                                f"{UNPACKABLE[cfg.method]}", "set data.packing: false"))
    if cfg.model.cross_entropy == "liger" and cfg.resources.gpus_per_worker == 0:
        problems.append(Problem("model.cross_entropy", "liger needs CUDA GPUs (Triton kernels) but this "
                                "run has resources.gpus_per_worker: 0",
                                "use model.cross_entropy: chunked on CPU (same memory saving, plain torch)"))
    return problems + _sequence_parallel_checks(cfg)


#: methods whose loss is the per-token causal LM loss that sequence parallelism shards
SEQUENCE_PARALLEL_METHODS = ("full", "sft")


def _sequence_parallel_checks(cfg: Any) -> list[Problem]:
    """``sharding.sp_size`` against workers, method and attention (elastic mode: the schema's
    elastic check). The heads are checked in preflight
    (``launcher.run.preflight.check_sequence_parallel``): they need the model."""
    sp = cfg.sharding.sp_size
    if sp == 1:
        return []
    problems: list[Problem] = []
    workers = cfg.resources.num_workers
    if workers % sp:
        problems.append(Problem("sharding.sp_size", f"{sp} does not divide resources.num_workers ({workers})",
                                f"use a divisor of {workers}, or num_workers a multiple of {sp}"))
    if cfg.method not in SEQUENCE_PARALLEL_METHODS:
        problems.append(Problem("sharding.sp_size", f"sequence parallelism supports methods "
                                f"{', '.join(SEQUENCE_PARALLEL_METHODS)}, not {cfg.method!r}",
                                "set sharding.sp_size: 1 (other methods' losses are not split by "
                                "token yet)"))
    if cfg.model.attn_implementation != "sdpa":
        problems.append(Problem("model.attn_implementation", f"{cfg.model.attn_implementation!r} with "
                                f"sharding.sp_size {sp}: sequence parallelism runs sdpa between its "
                                "all-to-alls",
                                "set model.attn_implementation: sdpa"))
    return problems


#: Methods that refuse ``data.packing``, and why. Every registered method packs today (models
#: that cannot, such as encoders outside ``strategies.contrastive.PACKABLE_ENCODERS`` or
#: classifiers that pool inside the model, are refused when the model is built).
UNPACKABLE: dict[str, str] = {}


def _foreign_method_sections(data: dict, source: str, lines: dict) -> list[Problem]:
    """A section for another method would be silently ignored: report it instead."""
    method = data.get("method")
    problems = []
    for name in STRATEGIES:
        if name != method and name in data and isinstance(method, str) and method in STRATEGIES:
            line = lines.get((name,))
            where = f"{source}:{line} {name}" if line else f"{source} {name}"
            problems.append(Problem(where, f"section for method {name!r} but method is {method!r}",
                                    f"remove it, or set method: {name}"))
    return problems


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Read, override and validate a config file."""
    path = Path(path)
    data, lines = _load_yaml(path)
    data = apply_overrides(data, overrides)
    with importable_from(path.parent):  # a reward function may live next to the config
        return validate_config(data, str(path), lines)


def config_to_dict(cfg: BaseModel) -> dict:
    """The resolved config as plain data (what ``config.yaml`` in a run folder holds)."""
    data = cfg.model_dump(mode="json", exclude_none=False)
    method = data.get("method")
    return {k: v for k, v in data.items() if k not in STRATEGIES or k == method}


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


__all__ = [
    "apply_overrides", "config_to_dict", "dump_config", "load_config",
    "run_config_model", "validate_config",
]
