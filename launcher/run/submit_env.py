"""The environment a job submitted by ``ftl`` should inherit: the user's, not the ftl process's.

``sbatch`` exports the environment of the process that calls it (``--export=ALL``, Slurm's
default) to the batch job, and that export is how ``cluster.slurm.setup`` lines, ``PATH``,
loaded modules and the secrets (``WANDB_API_KEY``, ``HF_TOKEN``) reach the nodes. Replacing it
with an explicit list (``--export=NONE`` or a whitelist) would silently drop whatever a site's
setup relies on, so the export stays whole. What must not be exported is what the ftl process
added to its own ``os.environ`` after it started, and that is not only ftl's code: measured in
tests/integration/test_secrets.py, importing the training stack in the CLI sets
``KMP_DUPLICATE_LIB_OK=True`` and ``KMP_INIT_AT_FORK=FALSE`` (scikit-learn, joblib,
threadpoolctl, at import) and ``TORCHINDUCTOR_CACHE_DIR`` (torch inductor), which sbatch then
carried to every node, where the first one hides real OpenMP conflicts.

So the job gets the environment the ftl process was started with, read back from
``/proc/self/environ`` (Linux keeps the initial environment there; ``os.environ`` edits do not
touch it). Where that file cannot be read (not Linux), the current ``os.environ`` is used: the
behaviour sbatch had before.
"""

from __future__ import annotations

import os
from pathlib import Path

_INITIAL = Path("/proc/self/environ")


def launch_environment() -> dict[str, str]:
    """The environment this process was started with (for ``subprocess.run(..., env=...)``)."""
    try:
        raw = _INITIAL.read_bytes()
    except OSError:
        return dict(os.environ)
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)  # undecodable bytes round-trip
    return env


def added_since_start() -> dict[str, str]:
    """Variables this process set or changed after it started (what ``launch_environment``
    leaves out); for messages and tests."""
    initial = launch_environment()
    return {k: v for k, v in os.environ.items() if initial.get(k) != v}
