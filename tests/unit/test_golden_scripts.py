"""Golden files pin what the Slurm and Kubernetes targets render (FTL_UPDATE_GOLDEN=1 rewrites)."""

from __future__ import annotations

import os
import subprocess

from launcher.config.load import validate_config
from tests.conftest import ROOT

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


def slurm_cfg(**slurm):
    return validate_config({**EXAMPLE_70B, "cluster": {"target": "slurm", "slurm": slurm}})


def test_slurm_70b_script():
    from cluster.slurm_script import render_sbatch

    cfg = slurm_cfg(nodes=8, gpus_per_node=8, cpus_per_node=96, mem="1500G", time="2-00:00:00",
                    partition="gpu", account="ml-team", qos="high", constraint="h100", exclusive=True,
                    container_image="nvcr.io/nvidia/pytorch:25.01-py3",
                    setup=["source /shared/venvs/ftl/bin/activate", "export NCCL_IB_HCA=mlx5"])
    text = render_sbatch(cfg, "/shared/runs/llama3-70b-sft-20260101-000000",
                         "/shared/runs/llama3-70b-sft-20260101-000000/job")
    check_golden("slurm_70b.sbatch", text)
    for line in ("#SBATCH --nodes=8", "#SBATCH --gres=gpu:8", "#SBATCH --exclusive",
                 "srun --nodes=7 --ntasks=7", "NODES=8"):
        assert line in text


def test_slurm_script_with_hostile_path_quotes_everything():
    from cluster.slurm_script import render_sbatch

    hostile = "/shared/runs dir/it's \"q\" $HOME `id`; rm -rf x"
    text = render_sbatch(slurm_cfg(nodes=2, gpus_per_node=8, python="/opt/my python/bin/python"),
                         hostile, hostile + "/job")
    check_golden("slurm_hostile.sbatch", text)
    # Every occurrence of the path is inside single quotes (shlex), so nothing in it runs.
    assert "RUN_DIR='/shared/runs dir/it'\"'\"'s \"q\" $HOME `id`; rm -rf x'" in text
    assert "PY='/opt/my python/bin/python'" in text
