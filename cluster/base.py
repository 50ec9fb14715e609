"""The target contract: what every cluster target does (render, run attached) and, declared as
capabilities, what a target with a job system adds (submit, status, logs, stop)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from launcher.core import preemption, terminal
from launcher.core.capabilities import Capability, Capable
from launcher.core.errors import JobFailed, Preempted
from launcher.run.rundir import RunFolder


class TargetCapability(Capability):
    SUBMIT = "submit"   #: start the job and return (``ftl run --detach``)
    STATUS = "status"   #: the job's state (``ftl status``)
    LOGS = "logs"       #: its driver log (``ftl logs``)
    STOP = "stop"       #: stop it (``ftl stop``)


class Target(Capable, ABC):
    name: str
    #: Model and data paths are read on this machine. Cluster targets read them on the
    #: cluster: a path missing here is then a note ("not checked here"), not an error.
    paths_are_local = True

    def preflight(self, cfg: Any) -> None:
        """Raise UserError when the target cannot take this config (before anything starts)."""

    def check_run_folder(self, folder: RunFolder, cfg: Any) -> None:
        """Raise UserError when the job could not reach this run folder (checked before the
        folder is created, so a refused run leaves nothing behind)."""

    def check_reachable(self, cfg: Any) -> None:
        """Raise UserError when the cluster cannot be reached (skipped by --dry-run)."""

    @abstractmethod
    def render(self, folder: RunFolder, cfg: Any) -> str:
        """What would be submitted (``--dry-run``); the folder need not exist yet."""

    @abstractmethod
    def run(self, folder: RunFolder, *, progress: bool = True) -> dict[str, Any]:
        """Run attached until the job ends; return the summary; raise JobFailed on failure."""


class SubmittingTarget(Target):
    """A target with a job system: attached runs are submit + follow logs + final state."""

    paths_are_local = False
    capabilities = frozenset(TargetCapability)

    #: the state a successful job ends in, and how to name a job in messages
    success_state = "SUCCEEDED"
    job_label = "job"

    @abstractmethod
    def submit(self, folder: RunFolder) -> str:
        """Start the job and return its id (also written to the folder's submission.json)."""

    @abstractmethod
    def status(self, folder: RunFolder) -> str:
        """The job's state: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED (or the cluster's)."""

    @abstractmethod
    def logs(self, folder: RunFolder, *, follow: bool = False) -> Iterator[str]:
        """The driver's log, in chunks; with ``follow`` until the job ends."""

    @abstractmethod
    def stop(self, folder: RunFolder) -> str:
        """Stop the job; return its final state."""

    def failure_hint(self, folder: RunFolder) -> str:
        return f"see `ftl logs {folder.path}`"

    def run(self, folder: RunFolder, *, progress: bool = True) -> dict[str, Any]:
        job = f"{self.job_label} {self.submit(folder)}"
        say = terminal.err()
        print(f"submitted {job}", file=say)
        try:
            for chunk in self.logs(folder, follow=True):
                say.write(chunk)
                say.flush()
        except KeyboardInterrupt:
            self.stop(folder)  # Ctrl-C stops what this command started
            raise
        state = self.status(folder)
        stopped = preemption.stopped_message(folder.path)
        if state != self.success_state and stopped:
            raise Preempted(f"{job} {state}: {stopped}")
        if state != self.success_state:
            from launcher.run.driver import job_failure

            failure = job_failure(folder, None)
            detail = failure.message if failure.failed_ranks else self.failure_hint(folder)
            raise JobFailed(f"{job} {state}: {detail}", failure.failed_ranks, failure.logs)
        return folder.summary() or {}
