"""The run folder ``runs/<name>-<timestamp>/``: everything one run writes.

    config.yaml        the resolved config (what ran, after --set overrides)
    plan.json          the planner's output
    launch.json        id of the current launch (a worker-group restart keeps it)
    metrics.jsonl      one JSON object per logged step
    summary.json       steps, timings, eval before/after, peak RSS per rank
    checkpoints/       step-XXXXXXXX folders (atomic, the last K kept)
    final/             the trained model in HF format
    logs/rank-N.log    per-rank logs; failed-rank-N.json when a rank fails
    wandb/             W&B files (offline runs can be synced later with `wandb sync`)
    .lock              the writer lock: who runs this folder now (see ``WriterLock``)

A run folder has one writer at a time. Two ``ftl run --resume`` on one folder would delete
each other's temporary checkpoints and replace each other's metrics.jsonl, so the process
that runs the folder holds its ``.lock`` (``RunFolder.hold_writer_lock``) and a second one is
refused with the holder's pid, host and start time.

``config.yaml`` and the JSON records are written atomically (``atomic_write_text``): a
crash or a full disk leaves the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from launcher.core import terminal
from launcher.core.errors import Problem, UserError

LOCK_FILE = ".lock"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader, or the next run after a crash, sees the
    old content or the new, never a truncated file.

    The text goes to a uniquely named temp file in the same folder (a rename is only atomic
    within one filesystem; a unique name keeps two writers from sharing a temp file), is
    fsynced (else a power loss can publish the name before the data: an empty file), then
    ``os.replace``-d over ``path``; the folder is fsynced so the rename itself survives. The
    temp file is created with mode 0o666 minus the umask, as ``open(path, "w")`` would, so a
    shared run folder stays readable by whoever could read it before."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (best effort: some filesystems refuse a folder fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class WriterLock:
    """An exclusive ``flock`` on ``<run>/.lock``, held while this object lives.

    ``flock`` belongs to the open file, so the kernel drops it when the process exits however
    it exits (a crash or SIGKILL never leaves a stale lock), and children started with
    ``subprocess`` do not inherit it (Python opens files non-inheritable). The holder writes its
    pid, host, start time and command into the file so a refused writer can name it; the file is
    rewritten in place, never replaced, since a replaced file would be a new, unlocked inode.

    Shared filesystems: on Linux, NFS clients (v4, and v3 with the NLM lock manager) map
    ``flock`` to NFS byte-range locks, which the server arbitrates between hosts; a mount with
    ``-o local_lock=flock`` (or ``nolock``) keeps locks on one client, and then two hosts can both
    hold one. Other cluster filesystems (Lustre needs ``-o flock``, GPFS) differ too. A cluster
    job never relies on this lock alone: ``launcher.run.submit`` also asks the target whether the
    run's submitted job still runs."""

    def __init__(self, path: Path, fh: Any):
        self.path, self._fh = path, fh

    @classmethod
    def acquire(cls, folder: Path) -> WriterLock:
        """Take the lock or raise UserError naming the holder (exit 2: nothing was written)."""
        path = Path(folder) / LOCK_FILE
        try:
            fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")  # open while held
        except OSError as exc:
            raise UserError(Problem(str(path), f"cannot open the run folder's lock: {exc.strerror}",
                                    "a run writes its folder: run as a user who may write there")) from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UserError(Problem(str(folder), f"this run folder is in use: {describe_holder(path)}",
                                    "one process writes a run folder at a time (two would delete each "
                                    "other's checkpoints): wait for that run to end, or stop it "
                                    "(Ctrl-C in its terminal, or kill its pid on that host)")) from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a filesystem without locks (some FUSE mounts)
            print(f"warning: {folder}: this filesystem cannot lock files ({exc.strerror}): nothing "
                  "stops a second `ftl run --resume` of this folder while this one runs", file=terminal.err())
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": _command_line()}
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(holder).encode())
        fh.flush()
        os.fsync(fh.fileno())
        return cls(path, fh)

    def release(self) -> None:
        """Give the lock back now (otherwise at garbage collection or process exit)."""
        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _command_line() -> str:
    """This process's command as the user typed it (``ftl run ...``, not ``.../cli.py run ...``)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return " ".join(["ftl" if name in ("ftl", "cli.py") else name, *sys.argv[1:]])


def describe_holder(lock_file: Path) -> str:
    """'pid N on host H since T (command)' from a held lock file. The holder writes it right
    after locking, so a reader that lands in between retries briefly."""
    for _ in range(20):
        try:
            info = json.loads(lock_file.read_text() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and "pid" in info:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("since", 0)))
            return (f"held by pid {info['pid']} on host {info.get('host', '?')} since {since}"
                    + (f" ({info['command']})" if info.get("command") else ""))
        time.sleep(0.05)
    return "held by another process (it has not written its name into the lock file)"


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer_lock: WriterLock | None = None

    @classmethod
    def planned(cls, parent: str | Path, name: str) -> RunFolder:
        """The folder a run started now would get (not created: ``--dry-run`` shows it)."""
        base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = Path(f"{base}-{n}")
        return cls(path)

    @classmethod
    def create(cls, parent: str | Path, name: str) -> RunFolder:
        """A new, empty run folder, its writer lock held by this object."""
        folder = cls.planned(parent, name)
        folder.path.mkdir(parents=True)
        folder.hold_writer_lock()
        return folder

    def hold_writer_lock(self) -> WriterLock:
        """Become the folder's one writer for as long as this object lives (UserError naming the
        holder when another process is). Idempotent."""
        if self._writer_lock is None:
            self._writer_lock = WriterLock.acquire(self.path)
        return self._writer_lock

    def remove_partial_writes(self) -> None:
        """Temp files of record writes a crash cut off (``.<name>.<pid>.<id>.tmp``). Only the
        folder's one writer may call this: another writer's temp file would vanish mid-write."""
        for tmp in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def release_writer_lock(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    # -- files
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=False))

    def load_config(self) -> Any:
        from launcher.config.load import validate_config
        from launcher.core.user_code import add_run_code

        add_run_code(self.path)  # modules the config names, shipped with the run
        data = yaml.safe_load(self.config_file.read_text())
        return validate_config(data, str(self.config_file))

    def raw_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text())

    def write_json(self, name: str, data: Any) -> None:
        """plan.json, launch.json, submission.json, summary.json, ...: whole or not at all."""
        atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str))

    def read_json(self, name: str) -> Any:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json("summary.json", summary)

    def summary(self) -> dict[str, Any] | None:
        return self.read_json("summary.json")

    # -- launches
    def new_launch(self, writer: dict[str, Any] | None = None) -> str:
        """Record a new launch. ``writer``: what its checkpoints are written with
        (``launcher.train.checkpoint.checkpoint_writer``); the checkpoint manager copies it into
        every checkpoint it saves."""
        launch = uuid.uuid4().hex[:12]
        record: dict[str, Any] = {"launch_id": launch, "started": time.time()}
        if writer is not None:
            record["writer"] = writer
        self.write_json("launch.json", record)
        return launch

    def launch_writer(self) -> dict[str, Any] | None:
        data = self.read_json("launch.json")
        return data.get("writer") if data else None

    def launch_id(self) -> str | None:
        data = self.read_json("launch.json")
        return data["launch_id"] if data else None

    def failures(self) -> dict[int, dict[str, Any]]:
        out = {}
        for f in sorted(self.logs.glob("failed-rank-*.json")) if self.logs.exists() else []:
            data = json.loads(f.read_text())
            out[int(data["rank"])] = data
        return out

    def clear_failures(self) -> None:
        if self.logs.exists():
            for f in self.logs.glob("failed-rank-*.json"):
                f.unlink()


def list_runs(parent: str | Path) -> list[RunFolder]:
    root = Path(parent)
    if not root.exists():
        return []
    runs = [RunFolder(p) for p in root.iterdir() if (p / "config.yaml").exists()]
    return sorted(runs, key=lambda r: r.config_file.stat().st_mtime)
