"""Validate manifests against KubeRay's CRD schema (../shared/kuberay), strictly.

``additionalProperties: false`` is added to every object that lists ``properties``, which
mimics the API server's strict field validation (unknown fields rejected).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from tests.helpers.ftl import ROOT

CRD_DIR = ROOT.parent / "shared" / "kuberay"


def crd_available() -> bool:
    return (CRD_DIR / "ray.io_rayjobs.yaml").exists()


def _strict(node):
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def rayjob_schema() -> dict:
    crd = yaml.safe_load((CRD_DIR / "ray.io_rayjobs.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def validate_rayjob(manifest: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(manifest)]


@functools.cache
def _validator():
    """Built once per process: reading and compiling the CRD takes seconds."""
    import jsonschema

    return jsonschema.Draft7Validator(rayjob_schema())


__all__ = ["Path", "crd_available", "validate_rayjob"]
