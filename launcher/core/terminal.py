"""ftl's own lines on the terminal; everything libraries print goes to the run's log.

Why at the file-descriptor level: the noise of a run's first minute comes from everywhere -
tqdm bars (transformers' "Loading weights" and "Writing model shards", datasets' "Generating
train split", GGUF de-quantisation), Python warnings, loggers with their own stderr handlers
(DeepSpeed's accelerator probe, transformers' advisories), C++ code and child processes (Ray's
raylet and GCS) - and each library has its own switch, when it has one. Pointing descriptors 1
and 2 at a log file catches all of them at once, including output of processes started while
the gate is open; ftl's own lines reach the terminal through ``out()`` and ``err()``, which
write to copies of the original descriptors. ``ftl run --verbose`` leaves the descriptors
alone and shows everything.

The captured text is kept in a temporary file until the run folder exists, then moved to
``<run>/logs/launcher.log``, where the rest of the command's library output is appended.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from launcher.core.errors import JobFailed, Preempted, UserError

#: (stdout, stderr) that reach the user while a gate is open; innermost last.
_TERMINALS: list[tuple[TextIO, TextIO]] = []


def out() -> TextIO:
    """Where ftl's own standard output goes (the terminal, also while library output is logged)."""
    return _TERMINALS[-1][0] if _TERMINALS else sys.stdout


def err() -> TextIO:
    """Where ftl's own messages, progress and errors go."""
    return _TERMINALS[-1][1] if _TERMINALS else sys.stderr


def _real_fd(stream: TextIO) -> int | None:
    """The descriptor behind ``stream``, or None for an in-memory stream (a test's CliRunner)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class LibraryOutputLog:
    """Descriptors 1 and 2 redirected to a log file (see the module docstring)."""

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix="ftl-launcher-", suffix=".log")
        os.close(handle)
        self.path = Path(name)
        self._saved: list[tuple[int, int]] = []
        self._opened: list[TextIO] = []
        self._moved = False

    def start(self) -> None:
        terminal = []
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stream.flush()
            self._saved.append((fd, os.dup(fd)))
            if _real_fd(stream) == fd:  # the real terminal: write through a copy of its descriptor
                copy = open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None),  # noqa: SIM115
                            errors="replace")
                self._opened.append(copy)
                terminal.append(copy)
            else:
                terminal.append(stream)
        _TERMINALS.append((terminal[0], terminal[1]))
        self._point_at(self.path)

    def _point_at(self, path: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)

    def move_to(self, path: Path) -> None:
        """Continue in ``path`` (the run's log), with what was captured so far at its start."""
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        with path.open("ab") as dst, self.path.open("rb") as src:
            dst.write(src.read())
        self._point_at(path)
        self.path.unlink(missing_ok=True)
        self.path, self._moved = path, True

    def stop(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved:
            os.dup2(saved, fd)
            os.close(saved)
        for stream in self._opened:
            stream.close()
        _TERMINALS.pop()
        if not self._moved:
            self.path.unlink(missing_ok=True)

    def keep(self) -> None:
        """Leave the captured file in place when the gate closes."""
        self._moved = True

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def library_output_to_log(enabled: bool = True) -> Iterator[LibraryOutputLog | None]:
    """Open the gate for one command; an unexpected error shows the captured tail, so a crash
    inside a library is never silent."""
    if not enabled:
        yield None
        return
    gate = LibraryOutputLog()
    gate.start()
    try:
        yield gate
    except (SystemExit, KeyboardInterrupt, UserError, JobFailed, Preempted):
        raise  # ftl's own messages say what happened
    except Exception:
        tail = gate.tail()
        if tail:
            gate.keep()  # the message names the file
            err().write(f"ftl: library output before the error ({gate.path}):\n{tail}\n")
        raise
    finally:
        gate.stop()
