"""What every cluster target does: run (attached), and later submit/status/logs/stop."""

from __future__ import annotations

from typing import Any

from launcher.rundir import RunFolder


class Target:
    name: str

    def preflight(self, cfg: Any) -> None:
        """Raise UserError when the target cannot take this config (before anything starts)."""

    def check_reachable(self, cfg: Any) -> None:
        """Raise UserError when the cluster cannot be reached (skipped by --dry-run)."""

    def render(self, folder: RunFolder, cfg: Any) -> str:
        """What would be submitted (``--dry-run``); the folder need not exist yet."""
        raise NotImplementedError

    def run(self, folder: RunFolder, *, progress: bool = True) -> dict[str, Any]:
        """Run attached until the job ends; return the summary; raise JobFailed on failure."""
        raise NotImplementedError
