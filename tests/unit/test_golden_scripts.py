"""Golden files pin what the Slurm and Kubernetes targets render (FTL_UPDATE_GOLDEN=1 rewrites)."""

from __future__ import annotations

from launcher.config.load import validate_config
from tests.helpers.golden import EXAMPLE_70B, check_golden


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
