"""User modules that a config names (a reward function in a file next to the config) travel
with the run, so every process of it can import them: on this machine, a Ray cluster, Slurm
and Kubernetes alike.

The rule a user sees: ``module:function`` resolves against the folder of the config file
first, then ``PYTHONPATH`` and installed packages. A module found in the config's folder is
copied into the run folder's ``code/`` when the run is created; every process that loads the
run's config (driver, controller, Ray actors, Slurm and Kubernetes pods, which get ``code/``
with the run's seed files) puts ``code/`` on ``sys.path``. Modules found elsewhere (installed
packages, ``PYTHONPATH``) are the cluster image's business and are not copied.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

CODE_DIR = "code"


@contextlib.contextmanager
def importable_from(folder: Path | None) -> Iterator[None]:
    """``folder`` on ``sys.path`` (last, so it never shadows the standard library) for the block."""
    entry = str(Path(folder).resolve()) if folder is not None else None
    added = entry is not None and entry not in sys.path
    if added:
        sys.path.append(entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def add_run_code(run_dir: Path) -> None:
    """Make the run's shipped modules importable in this process (idempotent)."""
    folder = (Path(run_dir) / CODE_DIR).resolve()
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.append(str(folder))


def _module_root(module: str) -> Path | None:
    """The file (single module) or folder (package) that ``import module`` loads, or None."""
    top = module.split(".")[0]
    loaded = sys.modules.get(top)
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or origin in ("built-in", "frozen"):
        return None
    path = Path(origin).resolve()
    return path.parent if path.name == "__init__.py" else path


def ship(specs: Iterable[str], config_dir: Path, run_dir: Path) -> list[str]:
    """Copy into ``<run>/code`` every module of ``specs`` ('module:attr') that lives in
    ``config_dir``; returns the copied names (for the run's log)."""
    config_dir = config_dir.resolve()
    shipped: list[str] = []
    with importable_from(config_dir):
        for spec in specs:
            root = _module_root(spec.partition(":")[0])
            if root is None or not root.is_relative_to(config_dir) or root.name in shipped:
                continue
            dest = run_dir / CODE_DIR / root.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if root.is_dir():
                shutil.copytree(root, dest, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(root, dest)
            shipped.append(root.name)
    return shipped
