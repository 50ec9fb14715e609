"""A fix for Ray Train 2.60 that ftl installs in every Ray worker process of its jobs.

Ray Train starts a detached ``PlacementGroupCleaner`` actor per run: once a second it asks the
state API whether the controller actor is alive and, when not, removes the run's placement group
(so a crashed controller does not hold GPUs). It decides with ``is_actor_alive``, which reads
"no answer" (``get_actor`` returns None: the state API's actor listing came back empty, which
happens under CPU starvation) as "dead". The cleaner then removes the placement group of a live
run and Ray destroys its workers ("Destroying worker since its placement group was removed"):
seen on this 2-core machine twice in a full test suite's worth of runs, once on Slurm and once on
the local target, never reproducible alone (and again on Slurm while only the local target had
the fix). Installed by the local target's private runtime (``cluster.local.start_private_ray``)
and by the cluster driver (``launcher.run.driver.main``: Slurm, Ray Jobs, KubeRay). Here a
controller counts as dead only when the state API says DEAD. What the cleaner is for still
holds: a dead controller is reported DEAD, and placement groups a job owns are removed by Ray
when the job's driver exits.
"""

from __future__ import annotations

#: the ``runtime_env`` entry that runs :func:`install` in every worker process of a job
SETUP_HOOK = {"worker_process_setup_hook": "launcher.run.ray_patches.install"}


def install() -> None:
    from ray.train.v2._internal.execution.controller import placement_group_cleaner
    from ray.util.state import get_actor

    def is_actor_alive(actor_id: str, timeout: int) -> bool:
        state = get_actor(actor_id, timeout=timeout)
        return state is None or state.state != "DEAD"

    placement_group_cleaner.is_actor_alive = is_actor_alive
