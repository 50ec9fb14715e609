"""Run-folder files read back safely: a cut-off metrics line, a growing Slurm log, sacct's
truncated state names (parts of issue #20)."""

from __future__ import annotations

import json
import logging
import os

from cluster.slurm import TERMINAL, ByteFollower, job_state
from launcher.metrics.jsonl import JsonlSink, read_metrics


def test_a_metrics_line_cut_off_mid_write_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "train/lo')
    with caplog.at_level(logging.WARNING, logger="ftl.metrics"):
        assert read_metrics(path) == rows
    assert f"{path}:4: skipped a line that is not JSON" in caplog.text
    sink = JsonlSink(path, resume_step=2)  # a resume keeps what came before its checkpoint
    sink.log(3, {"train/loss": 0.5})
    sink.close()
    assert read_metrics(path) == rows[:2] + [{"step": 3, "train/loss": 0.5}]


def test_sacct_truncated_states_are_whole_and_terminal():
    assert job_state("OUT_OF_ME+") == "OUT_OF_MEMORY" and "OUT_OF_MEMORY" in TERMINAL
    assert job_state("CANCELLED+") == "CANCELLED"
    assert job_state("RUNNING") == "RUNNING"


def test_log_follower_keeps_a_split_character_for_the_next_poll(tmp_path):
    path = tmp_path / "slurm-1.out"
    text = "step 1: loss 0.5 — ok ✓\n"
    data = text.encode()
    cut = data.index("✓".encode()) + 1  # inside the 3-byte character
    follower = ByteFollower(path)
    assert follower.read_new() == ""  # not there yet
    path.write_bytes(data[:cut])
    first = follower.read_new()
    with path.open("ab") as fh:
        fh.write(data[cut:])
    assert follower.behind()
    assert first + follower.read_new() == text
    assert not follower.behind()


def test_export_into_a_folder_with_files_is_refused_and_leaves_them(tmp_path):
    from click.testing import CliRunner

    from launcher.cli import cli
    from tests.helpers.ftl import tiny_config, write_config

    run = tmp_path / "run"
    run.mkdir()
    write_config(run, tiny_config(), name="config.yaml")
    out = tmp_path / "model"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights of another export")
    result = CliRunner().invoke(cli, ["export", str(run), "--to", str(out)])
    assert result.exit_code == 2, result.output
    assert f"--to: {out} is not empty" in result.stderr
    assert "--overwrite" in result.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights of another export"


def test_the_cli_leaves_no_ds_accelerator_for_sbatch_and_workers_get_it_from_the_config(tmp_path):
    import subprocess
    import sys

    from launcher.config.load import validate_config
    from launcher.run.driver import worker_env
    from tests.helpers.ftl import ROOT, tiny_config, write_config

    path = write_config(tmp_path, tiny_config(sharding={"backend": "zero2"}))  # imports DeepSpeed
    probe = ("import os, sys; from launcher.cli import main; sys.argv = ['ftl', 'validate', sys.argv[1]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('DS_ACCELERATOR=' + str(os.environ.get('DS_ACCELERATOR')))")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok:" in proc.stdout and "DS_ACCELERATOR=None" in proc.stdout
    assert worker_env(validate_config(tiny_config()))["DS_ACCELERATOR"] == "cpu"
    gpu = validate_config(tiny_config(resources={"num_workers": 2, "gpus_per_worker": 1}))
    assert "DS_ACCELERATOR" not in worker_env(gpu)


# -- atomic writes (item 3 of #20)

READER = """
import json, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
reads = bad = 0
end = time.time() + seconds
while time.time() < end:
    try:
        text = open(path).read()
    except FileNotFoundError:  # a rename is never observed as a missing file either
        bad += 1
        continue
    reads += 1
    try:
        whole = json.loads(text)["last"] == "whole"
    except ValueError:
        whole = False
    bad += not whole
print(reads, bad)
"""


def _big_plan(i: int) -> dict:
    """~2 MB, so a write in place takes long enough for a reader to land inside it."""
    return {"version": i, "rows": ["x" * 100] * 20_000, "last": "whole"}


def test_a_reader_never_sees_a_record_being_written(tmp_path):
    """A real second process reads plan.json as fast as it can while it is rewritten: with
    ``write_text`` it sees empty and cut-off files; replaced by rename, it never does."""
    import subprocess
    import sys

    from launcher.run.rundir import RunFolder

    folder = RunFolder(tmp_path)
    folder.write_json("plan.json", _big_plan(0))
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "plan.json"), "4"],
                              stdout=subprocess.PIPE, text=True)
    inodes = set()
    writes = 0
    while reader.poll() is None:
        writes += 1
        folder.write_json("plan.json", _big_plan(writes))
        inodes.add((tmp_path / "plan.json").stat().st_ino)
    reads, bad = map(int, reader.communicate()[0].split())
    assert reader.returncode == 0
    assert writes > 10 and reads > 20, (writes, reads)  # both really ran side by side
    assert bad == 0, f"{bad} of {reads} reads saw a partial or missing plan.json"
    assert len(inodes) > 1  # each write is a new file renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temp file left


def test_config_yaml_is_replaced_not_rewritten_in_place(tmp_path):
    from launcher.run.rundir import RunFolder

    folder = RunFolder(tmp_path)
    folder.write_config({"name": "a"})
    first = folder.config_file.stat().st_ino
    with folder.config_file.open() as old:  # a reader that opened the old file keeps it whole
        folder.write_config({"name": "b"})
        assert old.read() == "name: a\n"
    assert folder.config_file.stat().st_ino != first
    assert folder.raw_config() == {"name": "b"}


def test_a_writer_killed_before_its_rename_leaves_the_previous_record(tmp_path):
    """A real process is SIGKILLed in the middle of write_json (its new plan.json fully written
    to the temp file, not yet renamed): plan.json still holds the previous plan, whole."""
    import signal
    import subprocess
    import sys

    from launcher.run.rundir import RunFolder

    folder = RunFolder(tmp_path)
    folder.write_json("plan.json", {"workers": 2})
    before = (tmp_path / "plan.json").read_bytes()
    child = ("import os, sys, time\n"
             "from launcher.run.rundir import RunFolder\n"
             "def stuck(src, dst):\n"
             "    print('renaming', flush=True); time.sleep(600)\n"
             "os.replace = stuck\n"
             "RunFolder(sys.argv[1]).write_json('plan.json', {'workers': 64, 'pad': 'x' * 100000})\n")
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "renaming"
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".plan.json.")]
        assert len(temps) == 1 and temps[0].stat().st_size > 100000  # the new plan was written...
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (tmp_path / "plan.json").read_bytes() == before  # ...and the record is the old one
    assert folder.read_json("plan.json") == {"workers": 2}
    folder.hold_writer_lock()  # the next writer (a resume) drops the cut-off temp file
    folder.remove_partial_writes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "plan.json"]
    folder.release_writer_lock()


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    """A full disk surfaces at fsync: the error reaches the caller, the previous config stays."""
    import errno

    from launcher.run.rundir import RunFolder

    folder = RunFolder(tmp_path)
    folder.write_config({"name": "before"})
    before = folder.config_file.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    try:
        folder.write_config({"name": "after"})
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the write did not fail")
    assert folder.config_file.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_records_keep_the_permissions_a_plain_write_would_give(tmp_path):
    """Temp files are not 0600 (mkstemp's mode): others who could read a shared run folder still can."""
    from launcher.run.rundir import RunFolder

    umask = os.umask(0o022)
    try:
        RunFolder(tmp_path).write_json("summary.json", {"steps": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


# -- one writer per run folder (item 1 of #20)

HOLDER = ("import sys\n"
          "from launcher.run.rundir import RunFolder\n"
          "folder = RunFolder(sys.argv[1])\n"
          "folder.hold_writer_lock()\n"
          "print('held', flush=True)\n"
          "sys.stdin.read()\n")


def test_a_second_writer_is_refused_naming_the_holder_until_the_holder_dies(tmp_path):
    """A real process holds the run folder; `ftl run --resume` on it exits 2 naming that pid and
    host and changes nothing. SIGKILL the holder (a crash): the lock is free at once."""
    import signal
    import socket
    import subprocess
    import sys

    from launcher.run.rundir import RunFolder
    from tests.helpers.ftl import run_ftl, tiny_config, write_config

    run = tmp_path / "runs" / "t-1"
    run.mkdir(parents=True)
    write_config(run, tiny_config(), name="config.yaml")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        files = {p.name: p.read_bytes() for p in run.iterdir()}
        proc = run_ftl(["run", "--resume", run], tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"{run}: this run folder is in use: held by pid {holder.pid} on host " \
               f"{socket.gethostname()} since " in proc.stderr
        assert "Traceback" not in proc.stderr
        assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # nothing written
        try:
            RunFolder(run).hold_writer_lock()  # this process too, while the holder lives
        except Exception as exc:
            assert f"pid {holder.pid}" in str(exc)
        else:
            raise AssertionError("a second lock was granted")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    folder = RunFolder(run)
    lock = folder.hold_writer_lock()  # no stale lock after a crash
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    RunFolder(run).hold_writer_lock().release()  # released means free for the next one


def refused(folder) -> str:
    from launcher.core.errors import UserError
    from launcher.run.submit import refuse_while_job_active

    try:
        refuse_while_job_active(folder)
    except UserError as exc:
        return exc.render()
    raise AssertionError("the resume was not refused")


def test_resume_is_refused_while_the_submitted_cluster_job_runs(tmp_path, monkeypatch):
    """The writer of a cluster run is its remote driver: a resume asks the target the folder was
    submitted to (here Kubernetes, through the stand-in API server) whether that job still runs,
    whichever target the resume names."""
    from launcher.run.rundir import RunFolder
    from launcher.run.submit import refuse_while_job_active
    from tests.helpers.fake_k8s import FakeKube
    from tests.helpers.ftl import run_ftl, tiny_config, write_config

    kube = FakeKube()
    try:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        run = tmp_path / "runs" / "t-1"
        run.mkdir(parents=True)
        write_config(run, tiny_config(), name="config.yaml")
        folder = RunFolder(run)
        folder.write_json("submission.json", {"target": "kubernetes", "namespace": "ml", "name": "t-1"})
        path = "/apis/ray.io/v1/namespaces/ml/rayjobs/t-1"
        kube.objects[path] = {"metadata": {"name": "t-1"}, "spec": {"shutdownAfterJobFinishes": True},
                              "status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}
        files = {p.name: p.read_bytes() for p in run.iterdir()}

        proc = run_ftl(["run", "--resume", run, "--target", "local"], tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"{run}: RayJob ml/t-1 is RUNNING: it writes this run folder" in proc.stderr
        assert f"`ftl stop {run}`" in proc.stderr
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == files

        kube.objects[path]["status"] = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
        refuse_while_job_active(folder)  # ended: the resume may go on
        kube.objects[path]["spec"]["suspend"] = True
        kube.objects[path]["status"] = {"jobDeploymentStatus": "Suspended"}
        refuse_while_job_active(folder)
        kube.objects[path]["status"] = {"jobDeploymentStatus": "Unknown"}
        assert "still runs: its state is UNKNOWN" in refused(folder)
        del kube.objects[path]  # deleted: refused too (its pods may still be terminating)
        text = refused(folder)
        assert "cannot tell whether RayJob ml/t-1, which this folder was submitted to, still runs: " \
               f"{run}: RayJob ml/t-1 no longer exists" in text
        assert f"remove {run / 'submission.json'}" in text
    finally:
        kube.close()
