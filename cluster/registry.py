"""Registry of cluster targets, light enough for config validation."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.core.registry import Registry


@dataclass(frozen=True)
class TargetSpec:
    name: str
    impl: str
    description: str


TARGETS: Registry[TargetSpec] = Registry("cluster target")

TARGETS.register("local")(
    TargetSpec("local", "cluster.local:LocalTarget", "embedded Ray on this machine")
)
TARGETS.register("slurm")(
    TargetSpec("slurm", "cluster.slurm:SlurmTarget", "a Slurm allocation that brings up Ray (sbatch)")
)
TARGETS.register("kubernetes")(
    TargetSpec("kubernetes", "cluster.kubernetes:KubernetesTarget", "a KubeRay RayJob")
)
TARGETS.register("ray")(
    TargetSpec("ray", "cluster.ray_jobs:RayJobsTarget", "an existing Ray cluster, through its Jobs API")
)
