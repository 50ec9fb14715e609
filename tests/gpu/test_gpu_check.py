"""GPU: the per-rank loop without Ray, bf16 + nccl, every backend (skipped without CUDA)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers.ftl import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_every_backend_trains_on_one_gpu():
    proc = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--steps", "20"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok") == 4
