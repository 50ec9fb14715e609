"""What a remote job needs beside the cluster's Python: ftl's code, the run's config, small data.

The staged folder becomes the job's working directory (Ray ``runtime_env.working_dir``, or
the sbatch script's directory): ``launcher``, ``strategies`` and ``cluster`` import from it,
``ftl-run/`` seeds the run folder, and local data files are copied under ``ftl-data/`` with
the config's paths rewritten to match, so workers on other nodes can read them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from launcher.core.errors import Problem, UserError
from launcher.core.registry import BUILTIN_PREFIX
from launcher.core.user_code import CODE_DIR
from launcher.run.rundir import RunFolder

PACKAGES = ("launcher", "strategies", "cluster")
SEED_DIR = "ftl-run"
DATA_DIR = "ftl-data"
MAX_DATA_BYTES = 100 * 2**20  # more belongs on shared storage or a hub, not in a job upload
SEED_FILES = ("config.yaml", "plan.json", "launch.json")
FLAT_SEP = "--"


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def stage(folder: RunFolder) -> Path:
    """A temp folder with code, run seed and data; the caller removes it."""
    out = Path(tempfile.mkdtemp(prefix="ftl-stage-"))
    root = project_root()
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, out / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = folder.raw_config()
    config = _stage_data(config, out)
    (out / SEED_DIR).mkdir()
    (out / SEED_DIR / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in SEED_FILES[1:]:
        if (folder.path / name).exists():
            shutil.copy2(folder.path / name, out / SEED_DIR / name)
    if (folder.path / CODE_DIR).is_dir():  # user modules the config names (launcher.core.user_code)
        shutil.copytree(folder.path / CODE_DIR, out / SEED_DIR / CODE_DIR)
    return out


def _stage_data(config: dict[str, Any], out: Path) -> dict[str, Any]:
    total = 0
    for section in ("train", "eval"):
        entries = config.get("data", {}).get(section) or []
        for i, entry in enumerate(entries):
            path = entry.get("path") or ""
            local = Path(path).expanduser()
            if path.startswith(BUILTIN_PREFIX) or not local.exists():
                continue  # builtin tasks and hub ids resolve on the cluster
            if local.is_dir():
                raise UserError(Problem(f"data.{section}.{i}.path", "a local folder cannot be uploaded",
                                        "use a file, a hub id, or a path on the cluster's shared storage"))
            total += local.stat().st_size
            if total > MAX_DATA_BYTES:
                raise UserError(Problem(f"data.{section}.{i}.path", "local data over 100 MB",
                                        "put it on the cluster's shared storage and use that path"))
            dest = Path(DATA_DIR) / f"{section}-{i}-{local.name}"
            (out / DATA_DIR).mkdir(exist_ok=True)
            shutil.copy2(local, out / dest)
            entry["path"] = str(dest)
    return config


def seed_run_folder(run_dir: Path, seed: Path) -> RunFolder:
    """On the cluster: (re)write the run folder's seed files from the staged copy. The staged
    config, with data paths rewritten to the upload, is the one the workers must read."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in SEED_FILES:
        if (seed / name).exists():
            shutil.copy2(seed / name, run_dir / name)
    if (seed / CODE_DIR).is_dir():
        shutil.copytree(seed / CODE_DIR, run_dir / CODE_DIR, dirs_exist_ok=True)
    for flat in seed.glob(f"{CODE_DIR}{FLAT_SEP}*"):  # a Kubernetes ConfigMap holds flat names
        dest = run_dir / Path(*flat.name.split(FLAT_SEP))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(flat, dest)
    return RunFolder(run_dir)


def flat_seed_files(folder: RunFolder) -> dict[str, str]:
    """Seed files as one flat name -> text mapping (a ConfigMap's keys cannot hold '/'):
    ``code/rewards.py`` travels as ``code--rewards.py``."""
    out = {n: (folder.path / n).read_text() for n in SEED_FILES if (folder.path / n).exists()}
    code = folder.path / CODE_DIR
    for f in sorted(code.rglob("*.py")) if code.is_dir() else []:
        rel = f.relative_to(folder.path)
        out[FLAT_SEP.join(rel.parts)] = f.read_text()
    return out
