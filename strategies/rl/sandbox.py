"""Run untrusted Python (model-written programs and their tests) in a throwaway subprocess.

Used by the ``code_tests`` verifier: a GRPO run executes thousands of programs a policy wrote,
some of which loop forever, allocate without bound, fork, touch files or open sockets, mostly by
accident. Each program runs as ``python -I -S -B -c PRELUDE`` in its own temporary directory; the
prelude sets the limits, drops privileges and installs an audit hook, then runs the program as
``__main__``. Nothing of it is left afterwards, however the run ended (exit, error, timeout,
an exception in the parent): its process group is SIGKILLed, then every live process of its
session or of its private uid, until none is left, and its directory is removed. (Children that
outlived the program belong to PID 1 once dead, which reaps them; they run nothing meanwhile.)

Defended, first layer (enforced by the kernel):

* **Time**: a wall-clock limit, after which the whole process group (``start_new_session=True``,
  ``os.killpg``) is SIGKILLed, so children die too; ``RLIMIT_CPU`` stops a busy loop even if the
  parent were gone.
* **Memory**: ``RLIMIT_AS`` = ``memory_mb``: a huge allocation fails inside the child
  (``MemoryError``, nonzero exit).
* **Processes**: ``RLIMIT_NPROC`` (``max_processes``, threads included). Root ignores that limit,
  so when the parent is root the child runs as its own unprivileged uid/gid (a random id in a
  high range, one per run: parallel runs neither share the process budget nor can signal each
  other, and every process of the run can be found and killed by uid even if it left the process
  group). Its directory is chowned to that id. A root parent therefore needs an interpreter that
  other users can execute: ``sys.executable`` if it and its standard library are reachable by
  anyone, else ``/usr/bin/python3`` (the sandboxed program only gets the standard library).
* **Network**: as root the child first moves into a new, empty network namespace
  (``unshare(CLONE_NEWNET)``: only a loopback interface that is down). Where the kernel refuses,
  this is skipped silently and the audit hook below is the only network defence.
* **Files**: as an unprivileged uid the child can write only where anyone may (its own directory,
  world-writable ones such as ``/tmp``); ``RLIMIT_FSIZE`` caps every file it writes, including its
  captured stdout/stderr (an output flood fails with EFBIG), ``RLIMIT_NOFILE`` = 256 open files
  and ``RLIMIT_CORE`` = 0.
* **Environment**: ``-I -S`` (no user site, no site-packages, no ``PYTHON*`` variables) and a
  minimal environment, so secrets such as ``HF_TOKEN`` or ``WANDB_API_KEY`` are not inherited.

Second layer (a ``sys.addaudithook`` hook installed just before the program runs): it raises
``PermissionError`` on process creation (``os.fork``/``forkpty``/``posix_spawn``/``exec``/
``system``, ``subprocess.Popen``), signals to any other process, sockets other than AF_UNIX pairs,
``connect``/``bind``/``sendto``, opening files for writing (or changing them) outside the run's
directory, opening another process's ``/proc`` entries, loading ``ctypes`` and the usual
introspection routes to the hook itself (``gc`` referrers, tracing).
This layer is what stops a write into a world-writable directory, and a socket where the network
namespace was refused.

NOT defended: this is not a security boundary against a determined attacker. An audit hook can be
bypassed from Python (frame introspection, patching the modules it calls, native code), the
kernel limits do not hide world-readable files (reads are allowed), and a run without root gets
neither a separate uid nor a network namespace. For hostile code use containers or gVisor.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# Private ids for root-run sandboxes: high, unnamed and (in practice) unused, one drawn per run.
SANDBOX_ID_BASE = 3_000_000_000
SANDBOX_ID_SPAN = 100_000_000
NOBODY = 65534
MAIN_FILE = "main.py"
TAIL_CHARS = 4000
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")

# The hook is compiled in a namespace of its own with a private copy of the builtins, and takes
# every helper it uses as an argument, so the program cannot reach it by patching ``builtins``,
# ``os`` or the prelude's globals (it can by other means: see the module docstring).
AUDIT_HOOK = r'''
def make_hook(root, own_pid, write_flags, realpath, isdir, fsdecode):
    denied = frozenset({
        "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "subprocess.Popen",
        "os.killpg", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
    })
    denied_imports = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
    # event -> (position of a path it changes, whether the call follows a final symlink)
    path_events = {
        "os.mkdir": ((0, False),), "os.remove": ((0, False),), "os.rmdir": ((0, False),),
        "os.rename": ((0, False), (1, False)), "os.link": ((0, True), (1, False)),
        "os.symlink": ((1, False),), "os.chmod": ((0, True),), "os.chown": ((0, True),),
        "os.utime": ((0, True),), "os.truncate": ((0, True),), "os.setxattr": ((0, True),),
        "os.removexattr": ((0, True),),
    }

    def resolve(path, follow=True):
        text = fsdecode(path)
        if not text.startswith("/") and ".." in text.split("/"):
            raise PermissionError("sandbox: relative paths with '..' are not allowed")
        head, sep, name = text.rstrip("/").rpartition("/")
        if follow or name in ("", ".", ".."):
            return realpath(text)
        # the call acts on the entry itself (a symlink is removed, not its target)
        return realpath(head if head else (sep or ".")).rstrip("/") + "/" + name

    def inside(path):
        return path == root or path.startswith(root + "/")

    def check_change(path, follow=True):
        if type(path) is not int and not inside(resolve(path, follow)):
            raise PermissionError("sandbox: changing files outside the sandbox is not allowed")

    def check_open(path, flags):
        if type(path) is int:
            return
        real = resolve(path)
        if flags & write_flags and not inside(real):
            raise PermissionError("sandbox: writing files outside the sandbox is not allowed")
        if not inside(real) and isdir(real):
            raise PermissionError("sandbox: opening a directory outside the sandbox is not allowed")
        parts = real.split("/")
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != own_pid:
            raise PermissionError("sandbox: other processes' /proc entries are not allowed")

    def hook(event, args):
        if event in denied:
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open":
            check_open(args[0], args[2] if type(args[2]) is int else 0)
        elif event in path_events:
            for i, follow in path_events[event]:
                check_change(args[i], follow)
        elif event == "os.kill" and args[0] != own_pid:
            raise PermissionError("sandbox: signals to other processes are not allowed")
        elif event == "socket.__new__" and args[1] != 1:  # AF_UNIX (socketpair, asyncio)
            raise PermissionError("sandbox: network sockets are not allowed")
        elif event == "import" and args[0] in denied_imports:
            raise PermissionError("sandbox: importing " + args[0] + " is not allowed")

    return hook
'''

# Runs in the child as ``python -I -S -B -c PRELUDE CONFIG_JSON``, in the sandbox directory. Any
# failure before the program starts exits nonzero, so the program never runs unconfined.
PRELUDE = r'''
import builtins, json, os, resource, sys, types

def unshare_network():
    """An empty network namespace; False where the kernel refuses (no privilege, seccomp)."""
    try:
        if hasattr(os, "unshare"):
            os.unshare(os.CLONE_NEWNET)
            return True
        import ctypes
        return ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0
    except (OSError, AttributeError):
        return False
    finally:
        for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
            del sys.modules[name]

def set_limits(limits):
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))

def drop_privileges(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SystemExit("sandbox: could not drop privileges")

def block_process_creation():
    """subprocess reaches fork_exec without an audit event of its own: replace it, then deny
    importing a fresh copy (the hook denies the import of _posixsubprocess)."""
    import _posixsubprocess
    def fork_exec(*args, **kwargs):
        raise PermissionError("sandbox: starting processes is not allowed")
    _posixsubprocess.fork_exec = fork_exec

def install_audit_hook(source):
    scope = {"__builtins__": dict(vars(builtins))}
    exec(source, scope)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    sys.addaudithook(scope["make_hook"](os.path.realpath(os.getcwd()), os.getpid(), write_flags,
                                        os.path.realpath, os.path.isdir, os.fsdecode))

def run_main(path):
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    main = types.ModuleType("__main__")
    main.__file__ = path
    sys.modules["__main__"] = main
    sys.argv = [path]
    builtins.exit = builtins.quit = sys.exit  # what site would have added
    exec(code, main.__dict__)

def start(config):
    if config["uid"] is not None:
        unshare_network()
    set_limits(config["limits"])
    if config["uid"] is not None:
        drop_privileges(config["uid"], config["gid"])
    if config["audit_hook"] is not None:
        block_process_creation()
        install_audit_hook(config["audit_hook"])
    run_main(config["main"])

start(json.loads(sys.argv[1]))
'''


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended. ``exit_code`` is negative when a signal killed the program
    (subprocess's convention: -9 after a timeout); ``pid`` is the program's process id, which is
    also its session and process-group id (what tests look for); ``seconds`` is wall time."""

    ok: bool
    exit_code: int
    timed_out: bool
    stdout_tail: str
    stderr_tail: str
    seconds: float
    pid: int | None = None


@dataclass(frozen=True)
class _Identity:
    """Who the child becomes: ``private`` ids belong to this run alone (safe to kill by uid)."""

    uid: int
    gid: int
    private: bool


def run_python(
    code: str,
    *,
    time_limit_s: float,
    memory_mb: int,
    max_processes: int = 16,
    max_file_mb: int = 16,
    audit_hook: bool = True,
    tmp_root: str | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox; ``ok`` iff it exited 0 within the limits.

    ``audit_hook=False`` leaves only the kernel's defences (tests use it to check that layer on
    its own). ``tmp_root`` is where the run's directory is made (default: the system temp dir).
    """
    if time_limit_s <= 0 or memory_mb <= 0 or max_processes < 1:
        raise ValueError("time_limit_s, memory_mb and max_processes must be positive")
    identity = _identity()
    interpreter = python or _default_python(identity is not None)
    workdir = tempfile.mkdtemp(prefix="ftl-sandbox-", dir=tmp_root)
    try:
        _prepare_dir(workdir, code, identity)
        config = {
            "uid": identity.uid if identity else None, "gid": identity.gid if identity else None,
            "main": MAIN_FILE,
            "limits": _limits(time_limit_s, memory_mb, max_processes, max_file_mb),
            "audit_hook": AUDIT_HOOK if audit_hook else None,
        }
        argv = [interpreter, "-I", "-S", "-B", "-c", PRELUDE, json.dumps(config)]
        return _supervise(argv, workdir, time_limit_s, identity)
    finally:
        _remove_tree(workdir)


def run_many(programs: Sequence[str], *, workers: int = 4, **limits: Any) -> list[SandboxResult]:
    """``run_python`` on each program, ``workers`` at a time, each in its own sandbox; results in
    the programs' order. Threads suffice: the work happens in the child processes."""
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs)))) as pool:
        return list(pool.map(functools.partial(run_python, **limits), programs))


def _limits(time_limit_s: float, memory_mb: int, max_processes: int, max_file_mb: int) -> dict[str, int]:
    """The rlimits the prelude sets (soft = hard, so the program cannot raise them again)."""
    return {
        "RLIMIT_CPU": math.ceil(time_limit_s) + 1,
        "RLIMIT_AS": memory_mb * 2**20,
        "RLIMIT_NPROC": max_processes,
        "RLIMIT_FSIZE": max_file_mb * 2**20,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 256,
    }


def _supervise(argv: list[str], workdir: str, time_limit_s: float,
               identity: _Identity | None) -> SandboxResult:
    """Start the child, wait for it up to the limit, then kill whatever of it is left."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=_minimal_env(workdir), stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=True, close_fds=True,
        )
        try:
            finished = _wait_unreaped(proc.pid, start + time_limit_s)
        finally:
            _kill_all(proc.pid, identity)
            exit_code = proc.wait()
        seconds = time.monotonic() - start
        return SandboxResult(
            ok=finished and exit_code == 0, exit_code=exit_code, timed_out=not finished,
            stdout_tail=_tail(out), stderr_tail=_tail(err), seconds=seconds, pid=proc.pid,
        )


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for ``pid`` to exit without reaping it (``WNOWAIT``): while it is an unreaped zombie
    its pid, which is also the process-group id, cannot be reused, so ``killpg`` afterwards hits
    only what is left of the sandbox. True if it exited before ``deadline``."""
    delay = 0.001
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.02)


def _kill_all(pid: int, identity: _Identity | None) -> None:
    """SIGKILL the sandbox's process group, then every live process of its session (a program
    may leave its group) or of its private uid (it may leave its session), until none is left:
    a SIGKILLed process still runs until it is scheduled, so the group kill alone is not the end."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    uid = identity.uid if identity is not None and identity.private else None
    for _ in range(200):
        live = _live_members(pid, uid)
        if not live:
            return
        for other in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(other, signal.SIGKILL)
        time.sleep(0.005)


def _live_members(session: int, uid: int | None) -> list[int]:
    """Pids of processes in ``session`` or owned by ``uid``, zombies left out (they run nothing;
    reaping orphans is the init process's job)."""
    live = []
    for entry in os.listdir("/proc"):
        info = _process_info(entry) if entry.isdigit() else None
        if info is None or info[0] in ("Z", "X"):
            continue
        if info[1] == session or (uid is not None and info[2] == uid):
            live.append(int(entry))
    return live


def _process_info(pid: str) -> tuple[str, int, int] | None:
    """State letter, session id and real uid of a process from ``/proc``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, _ppid, _pgrp, session = f.read().rsplit(")", 1)[1].split()[:4]
        with open(f"/proc/{pid}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        return state, int(session), int(uid)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _tail(f) -> str:
    """The last ``TAIL_CHARS`` characters (roughly: bytes, decoded leniently) of a capture file."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_CHARS))
    return f.read().decode("utf-8", errors="replace")


def _minimal_env(workdir: str) -> dict[str, str]:
    """A fresh environment: nothing of the parent's (tokens, API keys, PYTHON* settings)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _prepare_dir(workdir: str, code: str, identity: _Identity | None) -> None:
    """Write the program and hand the directory to the sandbox's uid (the file stays readable)."""
    with open(os.path.join(workdir, MAIN_FILE), "w", encoding="utf-8") as f:
        f.write(code)
    if identity is not None:
        os.chown(workdir, identity.uid, identity.gid)


def _remove_tree(path: str) -> None:
    """Remove the run's directory even if the program made parts of it unreadable (which only
    stops a non-root parent: root's removal cannot fail that way). Symlinks are never followed."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    os.chmod(path, 0o700)
    for top, dirs, _files in os.walk(path):
        for name in dirs:
            sub = os.path.join(top, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _identity() -> _Identity | None:
    """Who the child runs as: None (the caller's own uid) unless the caller is root, which the
    process limit would not bind. Then a private id, or ``nobody`` where the id range is not
    mapped in this user namespace."""
    if os.geteuid() != 0:
        return None
    if _ids_mapped(SANDBOX_ID_BASE, SANDBOX_ID_SPAN):
        uid = SANDBOX_ID_BASE + secrets.randbelow(SANDBOX_ID_SPAN)
        return _Identity(uid=uid, gid=uid, private=True)
    return _Identity(uid=NOBODY, gid=NOBODY, private=False)


@functools.cache
def _ids_mapped(first: int, count: int) -> bool:
    """Whether uids and gids ``first .. first+count-1`` exist in this user namespace."""
    for kind in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/self/{kind}") as f:
                ranges = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
        except OSError:
            return False
        if not any(inside <= first and first + count <= inside + n for inside, _out, n in ranges):
            return False
    return True


@functools.cache
def _default_python(unprivileged: bool) -> str:
    """The interpreter for the child. An unprivileged child needs one that any user can execute
    together with its standard library; a venv under ``/root`` is not, the system one is."""
    if not unprivileged:
        return sys.executable
    stdlib = os.path.dirname(os.__file__)
    if _usable_by_anyone(sys.executable) and _usable_by_anyone(stdlib, read=True):
        return sys.executable
    for candidate in SYSTEM_PYTHONS:
        if os.path.exists(candidate) and _usable_by_anyone(candidate):
            return candidate
    raise RuntimeError(
        f"the sandbox runs programs as an unprivileged user, who cannot use {sys.executable} or "
        f"any of {', '.join(SYSTEM_PYTHONS)}; pass python= an interpreter that others can execute"
    )


def _usable_by_anyone(path: str, read: bool = False) -> bool:
    """True if a user who is neither owner nor in the group can reach ``path`` and execute (or,
    with ``read``, list) it: 'other' permission bits along the resolved path."""
    real = os.path.realpath(path)
    try:
        need = stat.S_IXOTH | (stat.S_IROTH if read else 0)
        if os.stat(real).st_mode & need != need:
            return False
        parent = os.path.dirname(real)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False
