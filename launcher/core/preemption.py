"""Stop at the next step boundary, with a checkpoint, when the job is about to be taken away.

Whoever learns first that the job will be killed (``ftl run`` receiving SIGTERM, the sbatch
script receiving Slurm's warning signal or a requeue's SIGTERM, a Kubernetes pod's preStop
hook) writes one file, ``<run>/logs/stop-request``, holding the reason. It is a file, not a
signal to the ranks, because those senders are shells and drivers that do not know where the
ranks are, and Ray Train runs the training function in a thread that cannot install signal
handlers; the run folder is the one place every launcher and rank shares.

Rank 0 looks for the file at every step boundary and the answer travels in the all-reduce the
step guard makes anyway (no extra collective). Every rank then saves the step's checkpoint,
rank 0 writes ``logs/preempted.json`` (step, checkpoint, reason) and the ranks return. The
launcher exits with ``PREEMPTED_EXIT`` (75, EX_TEMPFAIL: "try again"): Slurm's trap requeues
the job on it, KubeRay's ``backoffLimit`` resubmits it, and every launch resumes from the
newest checkpoint in the folder, so the continued run's losses equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: exit code of a launcher whose run stopped, saved, on request (EX_TEMPFAIL)
PREEMPTED_EXIT = 75
#: under ``<run>/logs/``: written by whoever asks the run to stop (content: the reason)
STOP_REQUEST = "stop-request"
#: under ``<run>/logs/``: written by rank 0 once every rank saved and stopped
PREEMPTED = "preempted.json"


def request_stop(run_dir: str | Path, reason: str) -> None:
    """Ask a running job to save and stop at its next step boundary (safe from a signal handler:
    a write and a rename, no locks)."""
    logs = Path(run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tmp = logs / f".{STOP_REQUEST}.{os.getpid()}"
    tmp.write_text(reason + "\n")
    os.replace(tmp, logs / STOP_REQUEST)


def stop_reason(run_dir: str | Path) -> str | None:
    """The reason a stop was requested, or None."""
    try:
        return (Path(run_dir) / "logs" / STOP_REQUEST).read_text().strip() or "requested"
    except FileNotFoundError:
        return None


def record_preempted(run_dir: str | Path, step: int, checkpoint: str | None, reason: str) -> None:
    logs = Path(run_dir) / "logs"
    (logs / PREEMPTED).write_text(json.dumps({"step": step, "checkpoint": checkpoint, "reason": reason}))


def preempted(run_dir: str | Path) -> dict[str, Any] | None:
    """What the last launch recorded when it stopped on request, or None."""
    try:
        return json.loads((Path(run_dir) / "logs" / PREEMPTED).read_text())
    except FileNotFoundError:
        return None


def clear(run_dir: str | Path) -> None:
    """A new launch starts: forget the previous launch's request and record."""
    for name in (STOP_REQUEST, PREEMPTED):
        (Path(run_dir) / "logs" / name).unlink(missing_ok=True)


def stopped_message(run_dir: str | Path) -> str | None:
    """What the launcher tells the user when the last launch saved and stopped on request
    (step, reason, checkpoint, how to continue), or None when it did not."""
    record = preempted(run_dir)
    if record is None:
        return None
    return (f"stopped at step {record['step']} ({record['reason']}); checkpoint "
            f"{record.get('checkpoint') or '-'} saved; continue with: ftl run --resume {run_dir}")
