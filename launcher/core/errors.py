"""Errors that reach the user.

A ``UserError`` is something the user can fix (a config field, a data row, a missing file):
the CLI prints it without a traceback and exits 2. Anything else is a bug or a failed job.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One thing wrong with the user's input, located by dotted path or file:row."""

    where: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class UserError(Exception):
    """Bad input. Carries every problem found so the user can fix them all at once."""

    def __init__(self, problems: list[Problem] | Problem | str, *, title: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        if self.title:
            lines.append(self.title)
        lines.extend(p.render() for p in self.problems)
        return "\n".join(lines)


class HintedValueError(ValueError):
    """A ValueError raised inside a pydantic validator that also carries a hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class Preempted(Exception):
    """The run saved and stopped on request (SIGTERM, Slurm's warning, a pod's preStop): the CLI
    exits 75 (``launcher.core.preemption.PREEMPTED_EXIT``) and says how to continue."""


@dataclass
class JobFailed(Exception):
    """The submitted job ran and failed. The CLI exits 1 and names the failed rank and its log."""

    message: str
    failed_ranks: dict[int, str] = field(default_factory=dict)
    logs: dict[int, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message
