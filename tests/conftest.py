"""Shared fixtures: real ftl processes in temp folders, offline, with private caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.ftl import ROOT

os.environ.setdefault("FTL_HOME", str(ROOT / ".cache" / "ftl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# Seconds each of the longest files took in a full run (2 xdist workers, this 2-core machine).
# ``--dist loadfile`` hands out whole files in collection order: these go first, longest first,
# so that no long file starts last while the other worker sits idle; the short files fill in.
LONGEST_FILES = {
    "integration/test_local_run.py": 490, "integration/test_sharding.py": 400,
    "integration/test_slurm_target.py": 375, "integration/test_ray_target.py": 285,
    "methods/test_methods_learn.py": 270, "integration/test_smoke.py": 230,
    "rl/test_vllm_rollouts.py": 215, "rl/test_rl_runs.py": 200, "integration/test_elastic.py": 165,
    "integration/test_guards.py": 145, "integration/test_smollm2.py": 120,
    "integration/test_sweep.py": 110, "unit/test_examples.py": 95, "integration/test_quickstart.py": 80,
    "integration/test_run_folder_writers.py": 85, "integration/test_fewshot.py": 80,
    "rl/test_rlhf_chain.py": 75, "integration/test_sequence_parallel.py": 65,
}


def pytest_configure(config: pytest.Config) -> None:
    # xdist's loadfile otherwise reorders files by how many tests they hold, which puts a long
    # file with one test (test_elastic.py) near the end of the run.
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier is tests/unit (config, planning, rendering, math: no Ray, Slurm, torchrun or
    training run). Everything else starts real processes and is marked ``slow``, so
    ``./scripts/test.sh -m "not slow"`` runs the fast tier alone. Under xdist the longest files
    run first (LONGEST_FILES; within a file the order stays as written); a serial run keeps the
    collection order, so tests/rl's package-wide Ray session starts once."""
    tests = ROOT / "tests"
    unit = tests / "unit"
    first_seen: dict[Path, int] = {}
    for index, item in enumerate(items):
        path = Path(str(item.fspath))
        first_seen.setdefault(path, index)
        if unit not in path.parents:
            item.add_marker(pytest.mark.slow)

    def order(item: pytest.Item) -> tuple[int, int]:
        path = Path(str(item.fspath))
        seconds = LONGEST_FILES.get(path.relative_to(tests).as_posix(), 0) if tests in path.parents else 0
        return -seconds, first_seen[path]

    if hasattr(config, "workerinput"):  # an xdist worker: the controller schedules its order
        items.sort(key=order)  # stable: a file's tests keep their order
