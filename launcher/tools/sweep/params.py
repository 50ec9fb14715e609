"""``--param PATH=DIST:ARGS``: parsing, Ray Tune search domains, and checks against the config.

Every candidate value is checked against the schema before Ray starts, so a typo in a path or
a value of the wrong type fails in a second with the config's own error, not in every trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from launcher.core.errors import Problem, UserError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
ACCEPTED_FORMS = ("loguniform:LO:HI, uniform:LO:HI, randint:LO:HI (integers, both ends included), "
                  "choice:A,B,...  e.g. --param train.lr=loguniform:1e-5:1e-3")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class ParamSpec:
    """One ``--param PATH=DIST:ARGS``; ``values`` are (lo, hi) or the choices."""

    raw: str
    path: str
    kind: str
    values: tuple[Any, ...]

    def candidates(self) -> list[Any]:
        """Values checked against the schema before anything starts: both ends, and a
        fractional value for continuous ranges (an int field must not get ``uniform``)."""
        if self.kind == "choice":
            return list(self.values)
        lo, hi = self.values
        if self.kind == "randint":
            return [lo, hi]
        inner = lo + (hi - lo) * 0.37 if self.kind == "uniform" else math.exp(
            math.log(lo) + (math.log(hi) - math.log(lo)) * 0.37)
        return [lo, hi, inner]

    def domain(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)  # Tune's upper end is exclusive; ours is included
        return tune.loguniform(lo, hi) if self.kind == "loguniform" else tune.uniform(lo, hi)


def _bad(raw: str, message: str) -> UserError:
    return UserError(Problem(f"--param {raw}", message, f"accepted forms: {ACCEPTED_FORMS}"))


def parse_param(raw: str) -> ParamSpec:
    """``train.lr=loguniform:1e-5:1e-3`` -> ParamSpec (syntax only; paths are checked later)."""
    path, sep, dist = raw.partition("=")
    path = path.strip()
    if not sep or not path or not dist.strip():
        raise _bad(raw, "expected PATH=DISTRIBUTION:ARGS")
    kind, _, args = dist.strip().partition(":")
    if kind not in DISTRIBUTIONS:
        from launcher.core.registry import did_you_mean

        close = did_you_mean(kind, DISTRIBUTIONS)
        raise _bad(raw, f"unknown distribution {kind!r}" + (f" (did you mean {close!r}?)" if close else ""))
    if kind == "choice":
        items = [a.strip() for a in args.split(",")]
        if not args.strip() or any(not a for a in items):
            raise _bad(raw, "choice needs one or more comma-separated values")
        return ParamSpec(raw, path, kind, tuple(yaml.safe_load(a) for a in items))
    parts = args.split(":")
    if len(parts) != 2:
        raise _bad(raw, f"{kind} needs two bounds, LO:HI")
    try:
        if kind == "randint":
            lo, hi = (int(p) for p in parts)
        else:
            lo, hi = (float(p) for p in parts)
    except ValueError:
        raise _bad(raw, f"{kind} bounds must be {'integers' if kind == 'randint' else 'numbers'}, "
                        f"got {args!r}") from None
    if not lo < hi:
        raise _bad(raw, f"LO must be below HI, got {lo:g} and {hi:g}")
    if kind == "loguniform" and lo <= 0:
        raise _bad(raw, "loguniform bounds must be positive")
    return ParamSpec(raw, path, kind, (lo, hi))


def yaml_value(value: Any) -> str:
    """A value as the text of a ``--set`` override (YAML, so types survive)."""
    text = yaml.safe_dump(value, default_flow_style=True)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.strip()


def as_override(path: str, value: Any) -> str:
    return f"{path}={yaml_value(value)}"


def check_sweep(config: str, overrides: tuple[str, ...], specs: list[ParamSpec], *, metric: str,
                scheduler: str) -> Any:
    """Check every ``--param`` against the schema (path and every candidate value) and the
    sweep settings against the config, before Ray starts. Returns the base config."""
    from launcher.config.load import load_config

    base = load_config(config, overrides)
    seen: dict[str, str] = {}
    set_paths = {o.partition("=")[0].strip() for o in overrides}
    for spec in specs:
        if spec.path in seen:
            raise UserError(Problem(f"--param {spec.raw}", f"{spec.path!r} is swept twice",
                                    f"also in --param {seen[spec.path]}"))
        if spec.path in set_paths:
            raise UserError(Problem(f"--param {spec.raw}", f"{spec.path!r} is also fixed by --set",
                                    "sweep it or set it, not both"))
        seen[spec.path] = spec.raw
        for value in spec.candidates():
            override = as_override(spec.path, value)
            try:
                load_config(config, (*overrides, override))
            except UserError as exc:
                if any(p.where == f"--set {override}" for p in exc.problems):  # unknown path
                    raise UserError([Problem(f"--param {spec.raw}", p.message, p.hint)
                                     for p in exc.problems]) from None
                raise UserError(exc.problems, title=f"--param {spec.raw}: value {value!r} does not "
                                                    "fit the config") from None
    if base.cluster.target != "local":
        raise UserError(Problem("cluster.target", f"ftl sweep runs on an embedded local Ray, "
                                f"not {base.cluster.target!r}", "--set cluster.target=local"))
    if scheduler not in SCHEDULERS:
        raise UserError(Problem("--scheduler", f"unknown scheduler {scheduler!r}",
                                f"one of: {', '.join(SCHEDULERS)}"))
    if metric.startswith("eval/") and not base.data.eval:
        raise UserError(Problem("--metric", f"{metric!r} needs held-out data but data.eval is empty",
                                "add data.eval, or sweep on train/loss"))
    if scheduler == "asha" and metric.startswith("eval/") and not base.eval.every_steps:
        raise UserError(Problem("eval.every_steps", "asha compares trials at eval steps, but the "
                                "config evaluates only at the end",
                                "--set eval.every_steps=N, or --scheduler fifo"))
    return base
