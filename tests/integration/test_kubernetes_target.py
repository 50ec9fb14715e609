"""``--target kubernetes`` through the kubernetes client against a stand-in API server
(the only mock in the suite: no Kubernetes can run on this machine)."""

from __future__ import annotations

import pytest

from tests.conftest import run_dirs, run_ftl, tiny_config, write_config
from tests.helpers.fake_k8s import FakeKube
from tests.helpers.kuberay_schema import crd_available, validate_rayjob


@pytest.fixture
def kube():
    server = FakeKube()
    yield server
    server.close()


def k8s_config(workdir):
    cfg = tiny_config(checkpoint={"dir": str(workdir / "runs")},
                      cluster={"target": "kubernetes",
                               "kubernetes": {"namespace": "ml", "runs_pvc": "ftl-runs",
                                              "wandb_secret": {"name": "wandb", "key": "api-key"}}})
    return write_config(workdir, cfg)


def test_submit_status_logs_stop_through_the_api(kube, workdir):
    env = {"KUBECONFIG": str(kube.kubeconfig(workdir)), "WANDB_API_KEY": "wandb-secret-xyz"}
    proc = run_ftl(["run", k8s_config(workdir), "--detach"], workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(workdir)
    posts = [(path, body) for method, path, body in kube.requests if method == "POST"]
    assert [p for p, _ in posts] == ["/api/v1/namespaces/ml/configmaps",
                                     "/apis/ray.io/v1/namespaces/ml/rayjobs"]
    configmap, rayjob = posts[0][1], posts[1][1]
    assert "name: t" in configmap["data"]["config.yaml"]  # the run's resolved config seeds the job
    if crd_available():
        assert validate_rayjob(rayjob) == []
    assert "wandb-secret-xyz" not in str(kube.requests)  # only a secretKeyRef travels
    name = rayjob["metadata"]["name"]

    assert run_ftl(["status", run], workdir, env=env).stdout.strip() == "RUNNING"
    logs = run_ftl(["logs", run], workdir, env=env)
    assert "ftl driver: run folder" in logs.stdout
    assert any(m == "GET" and "labelSelector=job-name%3D" + name in p for m, p, _ in kube.requests)
    stopped = run_ftl(["stop", run], workdir, env=env)
    assert stopped.stdout.strip() == "STOPPED"
    assert ("PATCH", f"/apis/ray.io/v1/namespaces/ml/rayjobs/{name}", {"spec": {"suspend": True}}) \
        in kube.requests


def test_dry_run_prints_manifests_without_a_cluster(workdir):
    proc = run_ftl(["run", k8s_config(workdir), "--dry-run"], workdir, env={"KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert "kind: RayJob" in proc.stdout and "secretKeyRef" in proc.stdout
    assert run_dirs(workdir) == []


def test_missing_kubeconfig_is_a_user_error(workdir):
    proc = run_ftl(["run", k8s_config(workdir), "--detach"], workdir, env={"KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 2
    assert "no usable kubeconfig" in proc.stderr
    assert run_dirs(workdir) == []
