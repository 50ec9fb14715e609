"""``sharding.sp_size``: config errors name the field and give a hint; batch sizes count
data-parallel groups; a batch's shard keeps every label once, at the global positions."""

from __future__ import annotations

import pytest
import torch

from launcher.config.load import load_config
from launcher.core.errors import UserError
from launcher.run.preflight import Notes, check_sequence_parallel
from launcher.train.sequence_parallel import SPGroup, shard_batch
from tests.helpers.ftl import tiny_config, write_config


def problems(exc: UserError) -> list[str]:
    return [p.render() for p in exc.problems]


@pytest.mark.parametrize("change, needle", [
    ({"sharding": {"sp_size": 3}}, "sharding.sp_size: 3 does not divide resources.num_workers (2)"),
    ({"method": "dpo"}, "sharding.sp_size: sequence parallelism supports methods full, sft, not 'dpo'"),
    ({"resources": {"num_workers": 2, "min_workers": 1}},
     "sequence parallelism (sharding.sp_size 2) cannot run elastic"),
    ({"model": {"path": "builtin:tiny-llama", "attn_implementation": "eager"}},
     "model.attn_implementation: 'eager' with sharding.sp_size 2"),
])
def test_bad_sequence_parallel_configs_name_the_field(tmp_path, change, needle):
    cfg = tiny_config(sharding={"backend": "fsdp2", "sp_size": 2})
    for section, values in change.items():
        cfg[section] = {**cfg[section], **values} if isinstance(values, dict) else values
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, cfg))
    found = [text for text in problems(err.value) if needle in text]
    assert found, problems(err.value)
    assert "HINT" in found[0] or "hint" in found[0].lower()


def test_global_batch_counts_data_parallel_groups(tmp_path):
    # 4 workers, sp 2: two groups take different samples, each micro-batch of 4 rows
    cfg = load_config(write_config(tmp_path, tiny_config(
        sharding={"sp_size": 2}, resources={"num_workers": 4}, train={"global_batch_size": 16})))
    assert (cfg.data_parallel_size, cfg.grad_accum, cfg.global_batch) == (2, 2, 16)
    assert cfg.grad_accum_for(4) == 2
    bad = tiny_config(sharding={"sp_size": 2}, resources={"num_workers": 4}, train={"global_batch_size": 12})
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, bad))
    assert "train.micro_batch_size x resources.num_workers / sharding.sp_size (8)" in problems(err.value)[0]


def test_heads_must_divide_and_kv_heads_are_replicated(tmp_path):
    # builtin:tiny-llama: 4 attention heads, 2 KV heads
    three = load_config(write_config(tmp_path, tiny_config(sharding={"sp_size": 3},
                                                           resources={"num_workers": 3})))
    (problem,) = check_sequence_parallel(three, Notes())
    assert "sharding.sp_size: 3 does not divide the model's 4 attention heads" in problem.render()
    four = load_config(write_config(tmp_path, tiny_config(sharding={"sp_size": 4},
                                                          resources={"num_workers": 4})))
    notes = Notes()
    assert check_sequence_parallel(four, notes) == []
    assert "does not divide the model's 2 KV heads" in notes.warnings[0]
    two = load_config(write_config(tmp_path, tiny_config(sharding={"sp_size": 2})))
    notes = Notes()
    assert check_sequence_parallel(two, notes) == [] and notes.warnings == []


def _group(rank: int, size: int = 2) -> SPGroup:
    return SPGroup(size=size, rank=rank, group=None, dp_rank=0, dp_world=1)


def test_shard_shifts_before_slicing_and_pads_odd_lengths():
    ids = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0]])
    labels = torch.tensor([[-100, 12, 13, 14, 15], [-100, 22, 23, -100, -100]])
    batch = {"input_ids": ids, "labels": labels, "attention_mask": (labels != -100) | (ids > 0)}
    shards = [shard_batch(batch, _group(r), pad_id=0) for r in range(2)]
    for local, segments in shards:
        assert segments is None
        assert set(local) == {"input_ids", "position_ids", "shift_labels"}
        assert local["input_ids"].shape == (2, 3)  # 5 tokens padded to 6, 3 per rank
    ids0, ids1 = shards[0][0]["input_ids"], shards[1][0]["input_ids"]
    assert torch.equal(torch.cat([ids0, ids1], 1)[:, :5], ids)
    shift = torch.cat([s[0]["shift_labels"] for s in shards], 1)
    # the token predicting 14 (position 2) sits on rank 0, its target on rank 1: counted once
    assert shift.tolist() == [[12, 13, 14, 15, -100, -100], [22, 23, -100, -100, -100, -100]]
    assert (shift != -100).sum() == (labels[:, 1:] != -100).sum()
    assert shards[1][0]["position_ids"].tolist() == [[3, 4, 5], [3, 4, 5]]  # global positions


def test_packed_shard_gets_example_ids_over_the_whole_row():
    ids = torch.arange(1, 8).expand(1, 7)
    labels = ids.clone()
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1]])  # three examples in one row
    local, segments = shard_batch({"input_ids": ids, "labels": labels, "position_ids": positions},
                                  _group(1), pad_id=0)
    assert segments.tolist() == [[1, 1, 1, 2, 2, 3, 3, 4]]  # the padding tail is its own example
    assert local["position_ids"].tolist() == [[1, 0, 1, 0]]  # tokens 4..7 of [0,1,2,0,1,0,1,pad 0]
