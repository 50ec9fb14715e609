"""``model.cross_entropy: chunked`` through the real per-rank loop on 2 gloo ranks: ZeRO-3 (the
LM head's weight is only gathered inside its own forward/backward hooks) and FSDP2 with LoRA (the
head lives in the root unit), each against the same run with the plain path. One torchrun launch
for the four runs (tests/helpers/run_many.py)."""

from __future__ import annotations

import pytest

from tests.helpers.runs import LORA, losses, matrix_config, prepare, torchrun_many

STEPS = 3


def _config(backend: str, mode: str, lora: bool) -> dict:
    cfg = matrix_config(f"{backend}-{mode}", backend, lora, max_steps=STEPS)
    cfg["checkpoint"] = {"dir": "runs", "every_steps": STEPS, "keep": 1}
    cfg["eval"] = {"at_start": False, "exact_match": False, "max_batches": 1}
    cfg["model"]["cross_entropy"] = mode
    if mode == "chunked":
        cfg["model"]["ce_chunk_tokens"] = 37  # does not divide the micro-batch's labelled tokens
        cfg["model"]["gradient_checkpointing"] = True
        cfg["model"]["activation_offload"] = True  # an identity on CPU: the wiring runs
    if lora:
        cfg["peft"] = LORA
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("chunked")
    runs = {(b, mode): prepare(work, f"{b}-{mode}", _config(b, mode, b == "fsdp2"))
            for b in ("zero3", "fsdp2") for mode in ("plain", "chunked")}
    torchrun_many(list(runs.values()))
    return runs


@pytest.mark.parametrize("backend", ["zero3", "fsdp2"])
def test_chunked_matches_plain_through_the_loop(runs, backend):
    ref, got = losses(runs[(backend, "plain")]), losses(runs[(backend, "chunked")])
    assert sorted(got) == list(range(1, STEPS + 1))
    assert ref[STEPS] < ref[1]  # it trains
    rel = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
    print(f"\n{backend}: loss@1 {got[1]:.6f} loss@{STEPS} {got[STEPS]:.6f} max rel diff vs plain {rel:.2e}")
    assert rel < 1e-5, rel
