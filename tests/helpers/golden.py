"""Golden files pin what the Slurm and Kubernetes targets render, and the 70B example config
they are rendered from (FTL_UPDATE_GOLDEN=1 rewrites a golden file)."""

from __future__ import annotations

import os
import subprocess

from tests.helpers.ftl import ROOT

GOLDEN = ROOT / "tests" / "golden"
EXAMPLE_70B = {
    "name": "llama3-70b-sft",
    "method": "sft",
    "model": {"path": "meta-llama/Llama-3.1-70B-Instruct", "dtype": "bf16", "gradient_checkpointing": True},
    "data": {"train": {"path": "/shared/data/chat.jsonl"}, "max_length": 4096},
    "train": {"max_steps": 1000, "micro_batch_size": 1, "global_batch_size": 64, "lr": 1.0e-5},
    "sharding": {"backend": "zero3"},
    "resources": {"num_workers": 64, "gpus_per_worker": 1, "cpus_per_worker": 8},
    "checkpoint": {"dir": "/shared/runs", "every_steps": 200},
}


def check_golden(name: str, text: str) -> None:
    if name.endswith(".sbatch"):
        syntax = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    path = GOLDEN / name
    if os.environ.get("FTL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # A missing golden file fails: writing it here would make the check pass without checking.
    assert path.exists(), f"{path} is missing; FTL_UPDATE_GOLDEN=1 writes it (review it, then commit it)"
    assert text == path.read_text(), f"{name} changed; FTL_UPDATE_GOLDEN=1 to accept"
