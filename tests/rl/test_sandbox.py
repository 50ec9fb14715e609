"""The sandbox that runs model-written programs (``strategies.rl.sandbox``) and ``code_tests``.

Every misbehaving program must score 0, end within its time limit plus a few seconds, and leave
nothing: no process in its session (or child of this test process) and no entry in the folder its
temporary directory was made in. Hostile programs run with the default defences; a few run with
``audit_hook=False`` too, to show the kernel layer (process limit, network namespace, process-group
kill) holding on its own. No Ray: these tests do not use the package's ``ray_session`` fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest

from strategies.rl.sandbox import SandboxResult, run_python
from strategies.rl.verifiers import code_tests

LIMIT_S = 1.5   # the programs' time limit
SLACK_S = 4.0   # start-up, clean-up and a busy 2-core machine
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
LOOP = "while True:\n    pass\n"
HUGE = "x = bytearray(10**11)\n"
GROWING = "x = []\nwhile True:\n    x.append(' ' * 10**6)\n"


@pytest.fixture
def root() -> Iterator[str]:
    """Where the sandboxes make their temporary directories: a folder of this test's own, so that
    'nothing new appeared' does not race with other users of /tmp. Others may traverse it (the
    sandbox runs as an unprivileged uid when the tests run as root)."""
    path = tempfile.mkdtemp(prefix="ftl-sandbox-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def target() -> Iterator[str]:
    """A world-writable folder outside the sandbox, the kind the kernel layer cannot protect."""
    path = tempfile.mkdtemp(prefix="ftl-sandbox-target-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 that sandboxed programs try to reach; it must see no connection."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def session_members(sid: int, *, live_only: bool = False) -> list[int]:
    """Pids of processes whose session id is ``sid`` (the sandbox's pid); with ``live_only``
    zombies are left out."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and not (live_only and proc.info["status"] == psutil.STATUS_ZOMBIE):
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def assert_nothing_left(result: SandboxResult, root: str, *, allow_zombies: bool = False) -> None:
    """No process of the sandbox and no directory of it remain.

    ``allow_zombies`` is for programs run without the audit hook that really forked: their
    children are SIGKILLed, but once the program itself has exited they belong to PID 1, which
    reaps them in its own time (here within a couple of seconds); until then they are zombies,
    dead and holding no memory, still listed in the session.
    """
    assert os.listdir(root) == []
    assert result.pid not in {c.pid for c in psutil.Process().children(recursive=True)}
    assert session_members(result.pid, live_only=allow_zombies) == []


def run(code: str, root: str, *, allow_zombies: bool = False, **options) -> SandboxResult:
    """``run_python`` with the test limits; checks the time bound and that nothing is left."""
    options = {"time_limit_s": LIMIT_S, "memory_mb": 256, **options}
    start = time.monotonic()
    result = run_python(code, tmp_root=root, **options)
    assert time.monotonic() - start < options["time_limit_s"] + SLACK_S
    assert_nothing_left(result, root, allow_zombies=allow_zombies)
    return result


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


# --- programs that are fine or just wrong --------------------------------------------------------


def test_correct_program_passes(root):
    result = run("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('done')\n", root)
    assert (result.ok, result.exit_code, result.timed_out) == (True, 0, False)
    assert result.stdout_tail == "done\n"


def test_wrong_program_fails(root):
    result = run("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n", root)
    assert (result.ok, result.exit_code, result.timed_out) == (False, 1, False)
    assert "AssertionError" in result.stderr_tail


def test_ordinary_stdlib_use_still_works(root):
    """The hook must not break everyday programs: files in its own folder, subprocess and asyncio
    imports (asyncio makes an AF_UNIX socket pair), exit()."""
    code = ("import asyncio, json, os, subprocess\n"
            "os.mkdir('d'); open('d/x.json', 'w').write(json.dumps([1, 2]))\n"
            "os.rename('d/x.json', 'd/y.json'); assert json.load(open('d/y.json')) == [1, 2]\n"
            "assert asyncio.run(asyncio.sleep(0, result=7)) == 7\n"
            "exit(0)\n")
    assert run(code, root).ok


def test_runs_in_own_directory_with_minimal_environment(root, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    code = "import os, sys\nprint(os.getcwd(), os.getuid(), sorted(os.environ), sys.path, sep='\\n')\n"
    result = run(code, root)
    cwd, uid, env, path = result.stdout_tail.splitlines()
    assert os.path.dirname(cwd) == os.path.realpath(root)  # made in root, gone afterwards
    assert "HF_TOKEN" not in env and "WANDB_API_KEY" not in env and "/somewhere/else" not in path
    if os.geteuid() == 0:
        assert int(uid) != 0  # dropped privileges, so RLIMIT_NPROC binds


def test_limits_are_set_in_the_child(root):
    code = ("import resource as r\n"
            "print([r.getrlimit(getattr(r, n)) for n in ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_CPU')])\n")
    result = run(code, root, memory_mb=300, max_processes=8, time_limit_s=2.5)
    assert result.stdout_tail.strip() == str([(300 * 2**20,) * 2, (8, 8), (4, 4)])


# --- hostile programs ----------------------------------------------------------------------------


def test_infinite_loop_is_killed_at_the_time_limit(root):
    result = run(LOOP, root, time_limit_s=1.0)
    assert (result.ok, result.timed_out, result.exit_code) == (False, True, -9)
    assert 1.0 <= result.seconds < 1.0 + SLACK_S


def test_timeout_kills_the_programs_children_too(root):
    """Without the hook a program can fork: the child, in the same process group, dies with it."""
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(1000)\n"
    code += "print(os.getpid(), flush=True)\n" + LOOP
    result = run(code, root, time_limit_s=1.0, audit_hook=False, allow_zombies=True)
    assert result.timed_out and not result.ok
    assert int(result.stdout_tail) == result.pid  # the child is checked by run(): none alive


@pytest.mark.parametrize("audit_hook", [True, False], ids=["hook", "kernel-only"])
def test_fork_bomb_fails_and_leaves_nothing(root, audit_hook):
    result = run(FORK_BOMB, root, audit_hook=audit_hook, allow_zombies=not audit_hook)
    assert not result.ok and result.exit_code != 0
    expected = "PermissionError" if audit_hook else "BlockingIOError"  # the hook, or RLIMIT_NPROC
    assert expected in result.stderr_tail


def test_output_flood_is_cut_by_the_file_size_limit(root):
    result = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", root, max_file_mb=1)
    assert (result.ok, result.timed_out, result.exit_code) == (False, False, 1)
    assert "File too large" in result.stderr_tail  # Python ignores SIGXFSZ: the write fails
    assert len(result.stdout_tail) <= 4000


@pytest.mark.parametrize("code", [HUGE, GROWING], ids=["bytearray", "growing-list"])
def test_memory_limit_stops_allocation(root, code):
    result = run(code, root, memory_mb=200)
    assert (result.ok, result.timed_out) == (False, False)
    assert "MemoryError" in result.stderr_tail


@pytest.mark.parametrize("how", [
    "open(T + '/pwned', 'w').write('x')",
    "os.close(os.open(T + '/pwned', os.O_WRONLY | os.O_CREAT))",
    "open('mine', 'w').close(); os.rename('mine', T + '/pwned')",
    "os.symlink(T, 'link'); open('link/pwned', 'w').write('x')",
    "os.chdir(T); open('pwned', 'w').write('x')",
], ids=["open", "os.open", "rename", "symlink", "chdir"])
def test_writing_outside_its_directory_is_refused(root, target, how):
    result = run(f"import os\nT = {target!r}\n{how}\n", root)
    assert not result.ok and "PermissionError" in result.stderr_tail
    assert os.listdir(target) == []


def test_socket_to_localhost_is_refused(root, listener):
    port = listener.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", root)
    assert not result.ok and "PermissionError" in result.stderr_tail
    assert_no_connection(listener)


def test_network_namespace_alone_blocks_localhost(root, listener):
    """As root the child also gets an empty network namespace, if the kernel allows one here."""
    probe = run("import socket\nprint([name for _, name in socket.if_nameindex()])\n", root, audit_hook=False)
    if os.geteuid() != 0 or probe.stdout_tail.strip() != "['lo']":
        pytest.skip("no network namespace here (not root, or unshare refused): the hook is the only guard")
    port = listener.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", root,
                 audit_hook=False)
    assert not result.ok and "unreachable" in result.stderr_tail
    assert_no_connection(listener)


# --- code_tests: several sandboxes at once -------------------------------------------------------


def fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}```\nIt works."


def test_code_tests_scores_each_row_in_order_in_parallel(root, target, listener, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", root)  # the sandboxes' directories go to root
    port = listener.getsockname()[1]
    solution = "def square(x):\n    return x * x\n"
    completions = [
        fenced(solution),
        fenced("def square(x):\n    return x + x\n"),
        fenced(solution + LOOP),
        fenced(solution + FORK_BOMB),
        fenced(solution + HUGE),
        fenced(solution + f"open({target!r} + '/pwned', 'w')\n"),
        fenced(solution + f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n"),
        solution,  # no fence: the whole completion is the program
    ]
    tests = ["assert square(3) == 9\nassert square(-2) == 4\n"] * len(completions)
    start = time.monotonic()
    scores = code_tests([""] * len(completions), completions, tests=tests, time_limit_s=LIMIT_S,
                        memory_mb=256, workers=4)
    assert scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert time.monotonic() - start < LIMIT_S + SLACK_S
    assert os.listdir(root) == [] and os.listdir(target) == []
    assert_no_connection(listener)


def test_code_tests_partial_credit_runs_each_test_separately(root, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", root)
    completion = fenced("def f(x):\n    return 1 if x == 2 else x\n")
    tests = [["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]]
    assert code_tests([""], [completion], tests=tests, partial_credit=True, time_limit_s=LIMIT_S) == [2 / 3]
    assert code_tests([""], [completion], tests=tests, time_limit_s=LIMIT_S) == [0.0]
    assert os.listdir(root) == []
