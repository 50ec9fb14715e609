"""``--target kubernetes`` through the kubernetes client against a stand-in API server
(the only mock in the suite: no Kubernetes can run on this machine). The stand-in plays
KubeRay's RayJob controller (tests/helpers/fake_k8s.py), so ``ftl status``, ``ftl logs -f``
and ``ftl stop`` meet the states the real operator writes: Suspended with no jobStatus after a
suspend, Failed with jobStatus RUNNING past the deadline, Retrying between attempts.

A few commands go through the ``ftl`` executable; the others call the same Click command in
this process (``CliRunner``), which keeps the tests fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster import kubernetes
from cluster.kubernetes import KubernetesTarget
from launcher.cli import cli
from launcher.core.errors import UserError
from launcher.run.rundir import RunFolder
from tests.helpers.fake_k8s import FakeKube
from tests.helpers.ftl import run_dirs, run_ftl, tiny_config, write_config
from tests.helpers.kuberay_schema import crd_available, validate_rayjob

RAYJOBS = "/apis/ray.io/v1/namespaces/ml/rayjobs"
CONFIGMAPS = "/api/v1/namespaces/ml/configmaps"


@pytest.fixture
def kube(monkeypatch, workdir):
    server = FakeKube()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(workdir)))
    monkeypatch.setattr(kubernetes, "POLL_S", 0.01)
    yield server
    server.close()


def k8s_config(workdir, name: str = "t", **k8s):
    k8s = {"namespace": "ml", "runs_pvc": "ftl-runs", "wandb_secret": {"name": "wandb", "key": "api-key"},
           **k8s}
    cfg = tiny_config(name, checkpoint={"dir": str(workdir / "runs")},
                      cluster={"target": "kubernetes", "kubernetes": k8s})
    return write_config(workdir, cfg)


def ftl(*args) -> tuple[int, str, str]:
    """The ``ftl`` command, in this process."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def submit(workdir, name: str = "t", **k8s) -> tuple[Path, str]:
    """``ftl run --detach``; the run folder and its RayJob's name."""
    before = set(run_dirs(workdir))
    code, out, err = ftl("run", k8s_config(workdir, name, **k8s), "--detach")
    assert code == 0, err
    (run,) = set(run_dirs(workdir)) - before
    return run, RunFolder(run).read_json("submission.json")["name"]


def test_submit_status_logs_stop_through_the_api(kube, workdir):
    env = {"KUBECONFIG": str(kube.kubeconfig(workdir)), "WANDB_API_KEY": "wandb-secret-xyz"}
    proc = run_ftl(["run", k8s_config(workdir), "--detach"], workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(workdir)
    posts = [(path, body) for method, path, body in kube.requests if method == "POST"]
    assert [p for p, _ in posts] == [RAYJOBS, CONFIGMAPS]  # the RayJob first: it owns the ConfigMap
    rayjob, configmap = posts[0][1], posts[1][1]
    assert "name: t" in configmap["data"]["config.yaml"]  # the run's resolved config seeds the job
    if crd_available():
        assert validate_rayjob(rayjob) == []
    assert "wandb-secret-xyz" not in str(kube.requests)  # only a secretKeyRef travels
    name = rayjob["metadata"]["name"]
    uid = kube.rayjob(name)["metadata"]["uid"]
    assert configmap["metadata"]["ownerReferences"] == [
        {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": name, "uid": uid}]
    volumes = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "ftl-run", "configMap": {"name": configmap["metadata"]["name"]}} in volumes

    kube.settle()
    assert ftl("status", run)[:2] == (0, "RUNNING\n")
    assert "ftl driver: run folder" in ftl("logs", run)[1]
    assert any(m == "GET" and "labelSelector=job-name%3D" + name in p for m, p, _ in kube.requests)
    stopped = run_ftl(["stop", run], workdir, env=env)
    assert stopped.stdout.strip() == "STOPPED"
    assert ("PATCH", f"{RAYJOBS}/{name}", {"spec": {"suspend": True}}) in kube.requests
    assert kube.rayjob(name)["status"] == {"jobDeploymentStatus": "Suspended", "failed": 0, "succeeded": 0}


@pytest.mark.timeout(120)
def test_suspended_rayjob_ends_stop_status_and_follow(kube, workdir):
    run, name = submit(workdir)
    kube.settle()
    code, out, _ = ftl("stop", run)
    assert (code, out) == (0, "STOPPED\n")
    # KubeRay went Running -> Suspending -> Suspended and cleared jobStatus; stop waited for it
    assert "jobStatus" not in kube.rayjob(name)["status"]
    assert ftl("status", run)[:2] == (0, "STOPPED\n")
    code, out, _ = ftl("logs", run, "--follow")
    assert code == 0 and out.endswith(f"ftl: RayJob ml/{name} STOPPED\n")


@pytest.mark.timeout(120)
def test_deadline_exceeded_ends_stop_status_and_follow(kube, workdir):
    run, name = submit(workdir, active_deadline_seconds=60)
    kube.settle()
    kube.deadline_exceeded = True
    kube.settle()
    assert kube.rayjob(name)["status"]["jobStatus"] == "RUNNING"  # what KubeRay leaves there
    assert ftl("status", run)[:2] == (0, "FAILED\n")
    code, out, _ = ftl("logs", run, "-f")
    assert code == 0 and "ftl driver: attempt 0\n" in out
    assert out.endswith(f"ftl: RayJob ml/{name} FAILED after 1 failed attempt (DeadlineExceeded: "
                        "The RayJob has passed the activeDeadlineSeconds. ActiveDeadlineSeconds: 60)\n")
    patches = len([r for r in kube.requests if r[0] == "PATCH"])
    assert ftl("stop", run)[:2] == (0, "FAILED\n")
    assert len([r for r in kube.requests if r[0] == "PATCH"]) == patches  # an ended job is left alone


@pytest.mark.timeout(120)
def test_attached_run_past_its_deadline_exits_1_with_the_reason(kube, workdir):
    kube.deadline_exceeded = True  # and no retry after DeadlineExceeded, whatever backoffLimit says
    code, _, err = ftl("run", k8s_config(workdir, active_deadline_seconds=60), "--no-progress")
    assert code == 1
    assert "job failed: RayJob ml/" in err and "FAILED: after 1 failed attempt (DeadlineExceeded" in err


@pytest.mark.timeout(120)
def test_preempted_attempt_is_retried_and_followed_to_the_end(kube, workdir):
    kube.outcomes = ["FAILED", "SUCCEEDED"]  # the driver exits 75 once, then the resumed run ends
    code, _, err = ftl("run", k8s_config(workdir), "--no-progress")
    assert code == 0, err
    (run,) = run_dirs(workdir)
    name = RunFolder(run).read_json("submission.json")["name"]
    first, second = err.index("ftl driver: attempt 0"), err.index("ftl driver: attempt 1")
    assert first < err.index(f"ftl: ml/{name} was resubmitted; the log of submitter pod") < second
    assert err.endswith(f"ftl: RayJob ml/{name} SUCCEEDED after 1 failed attempt\n")
    assert kube.rayjob(name)["status"]["succeeded"] == 1


@pytest.mark.timeout(120)
def test_retries_run_out_and_the_run_fails(kube, workdir):
    kube.outcomes = ["FAILED"]
    code, _, err = ftl("run", k8s_config(workdir, backoff_limit=1), "--no-progress")
    assert code == 1
    assert "FAILED: after 2 failed attempts (AppFailed: Job entrypoint command failed" in err


@pytest.mark.timeout(120)
def test_long_named_launches_get_distinct_rayjobs(kube, workdir):
    long = "llama-3.1-70b-instruct-dpo-lora-ultrafeedback-binarized-cleaned-v2"
    first, first_name = submit(workdir, long)
    second, second_name = submit(workdir, long)
    assert first_name != second_name and max(len(first_name), len(second_name)) <= 47
    assert len([r for r in kube.requests if r[0] == "POST" and r[1] == RAYJOBS]) == 2
    kube.settle()
    assert ftl("stop", first)[:2] == (0, "STOPPED\n")
    assert [r[1] for r in kube.requests if r[0] == "PATCH"] == [f"{RAYJOBS}/{first_name}"]
    assert ftl("status", second)[:2] == (0, "RUNNING\n")  # the other launch runs on


@pytest.mark.timeout(120)
def test_a_launch_submitted_twice_is_a_clear_error(kube, workdir):
    run, name = submit(workdir)
    with pytest.raises(UserError) as err:
        KubernetesTarget().submit(RunFolder(run))
    assert f"RayJob ml/{name} already exists" in err.value.render()
    assert [r[1] for r in kube.requests if r[0] == "POST"] == [RAYJOBS, CONFIGMAPS, RAYJOBS]


@pytest.mark.timeout(120)
def test_a_reused_name_is_not_taken_for_the_submitted_rayjob(kube, workdir):
    run, name = submit(workdir)
    path = f"{RAYJOBS}/{name}"
    kube.objects[path]["metadata"]["uid"] = "other"  # deleted, and the name reused by someone
    code, _, err = ftl("stop", run)
    assert code == 2 and f"RayJob ml/{name} is not the one this run submitted (uid other" in err
    assert not [r for r in kube.requests if r[0] == "PATCH"]


@pytest.mark.timeout(120)
def test_rayjob_on_an_existing_cluster_is_stopped_by_deleting_it(kube, workdir):
    # KubeRay refuses `suspend` with clusterSelector (the stand-in would say ValidationFailed)
    run, name = submit(workdir, runs_pvc=None, cluster_selector={"ray.io/cluster": "shared"})
    kube.settle()
    assert ftl("stop", run)[:2] == (0, "STOPPED\n")
    assert ("DELETE", f"{RAYJOBS}/{name}", None) in kube.requests
    assert not [r for r in kube.requests if r[0] == "PATCH"]
    assert ftl("status", run)[:2] == (0, "STOPPED\n")


def test_missing_runs_pvc_is_refused_before_anything_exists(kube, workdir):
    code, _, err = ftl("run", k8s_config(workdir, runs_pvc=None), "--detach")
    assert code == 2
    assert "cluster.kubernetes.runs_pvc: required" in err and "hint: create a ReadWriteMany" in err
    assert run_dirs(workdir) == [] and kube.requests == []


def test_runs_dir_outside_the_pvc_mount_is_refused(kube, workdir):
    elsewhere = workdir / "elsewhere"
    for extra in (["--detach"], ["--dry-run"]):
        code, _, err = ftl("run", k8s_config(workdir), "--runs-dir", elsewhere, *extra)
        assert code == 2
        assert f"--runs-dir: the run folder {elsewhere}/t-" in err and "the pods cannot see it" in err
    assert not elsewhere.exists() and run_dirs(workdir) == [] and kube.requests == []


def test_dry_run_prints_manifests_without_a_cluster(workdir):
    proc = run_ftl(["run", k8s_config(workdir), "--dry-run"], workdir, env={"KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert "kind: RayJob" in proc.stdout and "secretKeyRef" in proc.stdout and "preStop" in proc.stdout
    assert run_dirs(workdir) == []


def test_missing_kubeconfig_is_a_user_error(workdir):
    proc = run_ftl(["run", k8s_config(workdir), "--detach"], workdir, env={"KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 2
    assert "no usable kubeconfig" in proc.stderr
    assert run_dirs(workdir) == []
