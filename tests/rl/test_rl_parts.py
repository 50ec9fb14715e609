"""The pieces of the RL roles without Ray: token layout and masks, prompts, weight sync, config.

The layout test is the one that guards every log-prob in PPO: a row scored inside a left-padded
batch must get exactly the log-probs it gets alone, or the policy ratio is wrong from step 1.
"""

from __future__ import annotations

import pytest
import torch

from launcher.config.load import apply_overrides, validate_config
from launcher.core.errors import UserError
from strategies.ppo.batch import collate_rollouts, policy_forward, response_mask, truncate_at_eos
from strategies.ppo.models import pack, unpack
from strategies.ppo.prompts import step_prompts
from strategies.ppo.rewards import letter_a_fraction
from tests.helpers.rl import letters_config

EOS = 2


@pytest.fixture(autouse=True)
def one_thread():
    """As in the role actors: with the machine shared, 2 spinning OpenMP threads per tiny matmul
    cost more than they give (seen as 4 s vs 20 s for the same test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_response_mask_stops_after_the_first_eos():
    responses = torch.tensor([[5, EOS, 7, EOS], [5, 6, 7, 8], [EOS, 9, 9, 9]])
    assert response_mask(responses, [EOS]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    lengths = torch.tensor([4, 2, 4])
    assert response_mask(responses, [EOS], lengths).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert truncate_at_eos([5, EOS, 7, EOS], [EOS]) == ([5, EOS], True)
    assert truncate_at_eos([5, 6], [EOS]) == ([5, 6], False)


def test_collate_left_pads_prompts_and_counts_positions_over_real_tokens():
    batch = collate_rollouts([[11, 12, 13], [14]], [[21, EOS, 99], [22]], pad_id=0, eos_ids=[EOS])
    assert batch.prompt_ids.tolist() == [[11, 12, 13], [0, 0, 14]]
    assert batch.response_ids.tolist() == [[21, EOS, 99], [22, 0, 0]]
    assert batch.response_mask.tolist() == [[1, 1, 0], [1, 0, 0]]  # 99 came after EOS
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 1, 1]]
    with pytest.raises(ValueError, match="prompt 0 has no tokens"):
        collate_rollouts([[]], [[1]], pad_id=0, eos_ids=[EOS])


def test_logprobs_in_a_padded_batch_equal_each_row_alone():
    from transformers import AutoModelForCausalLM

    from launcher.models.tiny import resolve_model_path
    from strategies.rl.math import logprobs_from_logits

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-llama")).eval()
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    responses = [[20, 21, 22, 23], [30, 31]]
    batch = collate_rollouts(prompts, responses, pad_id=3, eos_ids=[EOS])
    with torch.no_grad():
        batched, entropy = policy_forward(model, batch, temperature=0.7, with_entropy=True)
        for row, (p, r) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([p + r])
            logits = model(input_ids=ids).logits[:, len(p) - 1:-1] / 0.7
            alone = logprobs_from_logits(logits, torch.tensor([r]))[0]
            torch.testing.assert_close(batched[row, : len(r)], alone, rtol=1e-5, atol=1e-5)
    assert entropy.shape == batched.shape and bool((entropy[batch.response_mask.bool()] > 0).all())


def test_step_prompts_take_every_prompt_once_per_pass_and_repeat_exactly():
    first_pass = [i for step in range(4) for i in step_prompts(step, 5, 20, seed=3)]
    assert sorted(first_pass) == list(range(20))
    assert step_prompts(2, 5, 20, seed=3) == step_prompts(2, 5, 20, seed=3)
    assert step_prompts(4, 5, 20, seed=3) != step_prompts(0, 5, 20, seed=3)  # a new shuffle per pass
    assert len(step_prompts(3, 7, 20, seed=3)) == 7  # a step that straddles two passes


def test_letter_a_fraction_is_bounded_and_ignores_spaces():
    assert letter_a_fraction(["p"] * 4, ["a a a", "abcd", "", "  "]) == [1.0, 0.25, 0.0, 0.0]


def test_packed_weights_round_trip_without_loss():
    state = {"w": torch.randn(3, 4), "b": torch.randn(4).to(torch.bfloat16), "i": torch.arange(5)}
    back = unpack(pack(state))
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype
        torch.testing.assert_close(back[name], tensor, rtol=0, atol=0)


def _problems(data: dict) -> str:
    with pytest.raises(UserError) as info:
        validate_config(data)
    return info.value.render()


def test_bad_rl_config_names_the_field():
    cfg = letters_config("ppo", "bad")
    both = {**cfg, "ppo": {**cfg["ppo"], "reward": {"function": cfg["ppo"]["reward"]["function"],
                                                    "model": "some-org/reward-model"}}}
    assert "set exactly one of reward.model and reward.function" in _problems(both)
    missing = {**cfg, "ppo": {**cfg["ppo"], "reward": {"function": "no_such_module:score"}}}
    text = _problems(missing)
    assert "ppo.reward.function" in text and "cannot import 'no_such_module:score'" in text
    folder = validate_config({**cfg, "ppo": {**cfg["ppo"], "reward": {"model": "./no/such/run/final"}}})
    from launcher.run.preflight import Notes, check_method_models

    (problem,) = check_method_models(folder, Notes())  # preflight: a cluster path is only a note
    assert problem.where == "ppo.reward.model" and "folder not found: ./no/such/run/final" in problem.message
    notes = Notes()
    assert check_method_models(folder, notes, remote=True) == [] and "not checked" in notes[0]
    uneven = {**cfg, "ppo": {**cfg["ppo"], "minibatches": 5}}
    assert "minibatches (5) must divide the 32 sequences" in _problems(uneven)
    typo = {**cfg, "ppo": {**cfg["ppo"], "rollout": {"num_worker": 2}}}
    text = _problems(typo)
    assert "ppo.rollout.num_worker: unknown key" in text and "did you mean 'num_workers'" in text
    grpo = letters_config("grpo", "bad")
    grpo["grpo"]["num_generations"] = 1
    assert "grpo.num_generations" in _problems(grpo)


def test_async_key_and_its_override():
    cfg = letters_config("grpo", "a")
    cfg["grpo"]["async"] = True
    assert validate_config(cfg).grpo.async_ is True
    data = apply_overrides(letters_config("grpo", "a"), ["grpo.async_=true"])
    parsed = validate_config(data)
    assert parsed.grpo.async_ is True
    assert validate_config(apply_overrides(cfg, ["grpo.async_=false"])).grpo.async_ is False
    assert parsed.grpo.model_dump()["async"] is True  # config.yaml in the run folder says `async`


def test_minibatch_split_over_trainer_ranks_is_checked():
    from strategies.ppo.schedule import update_schedule

    cfg = validate_config(letters_config("ppo", "split"))  # 32 sequences, 2 minibatches
    sched = update_schedule(cfg, world_size=4)
    assert (sched.per_rank, sched.micro, sched.accum, sched.steps_per_rl_step) == (4, 4, 1, 4)
    with pytest.raises(UserError, match="does not split over 3 trainer ranks"):
        update_schedule(cfg, world_size=3)


def test_adapter_sync_makes_a_rollout_copy_equal_to_the_trainer(monkeypatch):
    """LoRA: after an update only the adapter tensors travel, and the rollout copy then gives the
    trainer's log-probs exactly (it differs before the sync)."""
    import torch.distributed as dist

    from launcher.train.dist import init_distributed
    from strategies.ppo.generation import HFEngine
    from strategies.ppo.learner import Learner
    from strategies.ppo.models import sync_state
    from strategies.ppo.objectives import Experience
    from strategies.ppo.schedule import learner_config

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    data = letters_config("grpo", "lora")
    data["peft"] = {"r": 4, "alpha": 8}
    data["train"]["lr"] = 5e-2
    cfg = validate_config(data)
    ctx = init_distributed(use_gpu=False)
    try:
        learner = Learner(learner_config(cfg, "policy", 1), "policy", ctx)
        engine = HFEngine(cfg)
        prompts = [[5, 6, 7]] * 32
        out = engine.generate(prompts, seed=0)
        batch = collate_rollouts(prompts, out["responses"], engine.pad_id, engine.eos_ids)
        old = learner.forward(batch)
        advantages = torch.linspace(-1, 1, len(batch))
        learner.update(Experience(batch, old, advantages), step=0)
        state = sync_state(learner.full_weights(), "adapters")
        assert state and all("lora_" in name for name in state)
        full = sum(t.numel() for t in learner.backend.module.state_dict().values())
        assert sum(t.numel() for t in state.values()) < full / 5
        trained = learner.forward(batch)
        before = policy_forward(engine.model, batch, engine.generation_config.temperature)[0]
        assert not torch.allclose(before, trained, atol=1e-4)
        engine.load_weights([pack(state)], version=1)
        after = policy_forward(engine.model, batch, engine.generation_config.temperature)[0]
        torch.testing.assert_close(after * batch.response_mask, trained * batch.response_mask)
        # merged (what a vLLM engine gets): the plain model with the adapters folded in
        from transformers import AutoModelForCausalLM

        from launcher.models.tiny import resolve_model_path

        merged = sync_state(learner.full_weights(), "merged", lora_scaling=8 / 4)
        plain = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.path))
        assert set(merged) == set(plain.state_dict())
        plain.load_state_dict(merged)
        folded = policy_forward(plain.eval(), batch, engine.generation_config.temperature)[0]
        torch.testing.assert_close(folded * batch.response_mask, trained * batch.response_mask,
                                   atol=1e-5, rtol=1e-5)
    finally:
        dist.destroy_process_group()
