"""Every registered plugin honours its contract.

Registries name implementations by dotted string (so ``ftl validate`` needs no torch); a typo,
a class that lost a method in a refactor or one registered under the wrong kind would only
fail inside a worker. Here each entry of every registry (methods, sharding backends, cluster
targets, builtin data and models) is imported and checked against its contract: the expected
ABC, nothing left abstract, options typed as the registry says, optional parts declared as
capabilities exactly when they are defined. Cheap ones are built and used.
"""

from __future__ import annotations

import inspect
import random

import pytest
import torch
from transformers import AutoTokenizer

from cluster import TARGETS
from cluster.base import SubmittingTarget, Target, TargetCapability
from launcher.backends import BACKENDS
from launcher.backends.base import Backend
from launcher.config.load import validate_config
from launcher.core.capabilities import Capability, Capable, undeclared
from launcher.core.lazy import load_object
from launcher.data.sources import FORMAT_COLUMNS
from launcher.data.synthetic import SYNTHETIC_TASKS
from launcher.metrics.jsonl import JsonlSink
from launcher.metrics.sink import MetricSink, SinkCapability
from launcher.metrics.wandb_sink import WandbSink
from launcher.models.packaged import PACKAGED, PackagedModel
from launcher.models.tensor_layout import WHOLE
from launcher.models.tiny import TINY_MODELS, TinySpec, resolve_model_path
from launcher.train.dist import RankContext
from strategies import STRATEGIES
from strategies.base import DataSpec, ModelSpec, Strategy, StrategyCapability
from tests.helpers.ftl import tiny_config

#: the smallest valid section of methods whose options have required fields
REQUIRED = {"classify": {"labels": ["a", "b"]},
            "ppo": {"reward": {"function": "strategies.rl.verifiers:numeric_answer"}},
            "grpo": {"reward": {"function": "strategies.rl.verifiers:numeric_answer"}}}
CPU = RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), launcher="single")


def method_config(method: str, **sections):
    extra = {method: REQUIRED[method]} if method in REQUIRED else {}
    return validate_config(tiny_config(method=method, **extra, **sections))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny-llama"))


# ------------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_method_impl_is_a_concrete_strategy_with_its_options(name, tokenizer):
    spec = STRATEGIES.get(name)
    impl = load_object(spec.impl)
    # The per-rank loop trains a Strategy; a controller-driven method registers the DataSpec
    # of its policy (preflight reads its rows, export rebuilds its model).
    expected = DataSpec if spec.controller else Strategy
    assert isinstance(impl, type) and issubclass(impl, expected), spec.impl
    assert not inspect.isabstract(impl), f"{spec.impl} leaves {sorted(impl.__abstractmethods__)} abstract"
    declared = impl.options_type()
    assert declared is not None and issubclass(spec.options, declared), (spec.options, declared)
    assert undeclared(impl, StrategyCapability) == []
    built = impl(method_config(name), tokenizer)
    assert isinstance(built.options, spec.options) and built.tokenizer is tokenizer


def test_ppo_models_are_model_specs_without_a_loss():
    from strategies.ppo.models import CriticModel, PolicyModel

    for impl in (PolicyModel, CriticModel):
        assert issubclass(impl, ModelSpec) and not issubclass(impl, Strategy)
        assert not inspect.isabstract(impl) and not hasattr(impl, "loss")
    assert not issubclass(CriticModel, DataSpec) and CriticModel.peft_task_type == "TOKEN_CLS"


def test_only_the_contrastive_strategy_evaluates_sets_itself():
    offering = {n for n, s in STRATEGIES.items()
                if load_object(s.impl).supports(StrategyCapability.EVALUATE_SET)}
    assert offering == {"contrastive"}


# ------------------------------------------------------------------------------- backends


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_impl_is_a_concrete_backend(name):
    impl = load_object(BACKENDS.get(name).impl)
    if inspect.isfunction(impl):  # auto: a factory that chooses, then builds, a backend
        built = impl(method_config("sft", sharding={"backend": name}), CPU)
        assert isinstance(built, Backend)
        impl = type(built)
    assert issubclass(impl, Backend)
    assert not inspect.isabstract(impl), f"{impl} leaves {sorted(impl.__abstractmethods__)} abstract"
    assert isinstance(inspect.getattr_static(impl, "module"), property)


def test_ddp_backend_builds_the_spec_it_is_given_and_steps(tokenizer):
    """One rank, no process group: the spec is passed to load_model (no backend.strategy), the
    default full_state_dict works, and the layout of a whole model is the plain one."""
    from launcher.backends.ddp import DDPBackend
    from launcher.models.load import count_parameters
    from launcher.train.optim import make_optimizer, make_scheduler
    from strategies import build_strategy

    cfg = method_config("sft")
    strategy = build_strategy(cfg, tokenizer)
    backend = DDPBackend(cfg, CPU)
    model = backend.load_model(strategy)
    assert type(model).__name__ == "LlamaForCausalLM"
    backend.setup(model, lambda m: make_optimizer(m, cfg.train), lambda o: make_scheduler(o, cfg.train))
    assert backend.module is model
    assert count_parameters(model, backend) == count_parameters(model, WHOLE)
    assert count_parameters(model)[0] == sum(p.numel() for p in model.parameters())
    assert all(backend.local_tensor(p) is p for p in model.parameters())
    ids = torch.tensor([tokenizer("reverse: a b c")["input_ids"]])
    out = strategy.loss(backend.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                        "labels": ids.clone()})
    backend.backward(out.loss_sum / out.count)
    assert torch.isfinite(torch.tensor(backend.step()))
    state = backend.full_state_dict()
    assert set(state) == set(model.state_dict())


# ------------------------------------------------------------------------------- targets


@pytest.mark.parametrize("name", TARGETS.names())
def test_every_target_impl_is_a_concrete_target_declaring_what_it_offers(name):
    impl = load_object(TARGETS.get(name).impl)
    assert issubclass(impl, Target) and not inspect.isabstract(impl)
    assert undeclared(impl, TargetCapability) == []
    target = impl()
    # a job system (submit, status, logs, stop) or none: ftl status/logs/stop need all four
    assert target.capabilities in (frozenset(), frozenset(TargetCapability))
    assert target.supports(TargetCapability.SUBMIT) == isinstance(target, SubmittingTarget)


def test_only_the_local_target_runs_attached_only():
    attached_only = {n for n, s in TARGETS.items()
                     if not load_object(s.impl).supports(TargetCapability.SUBMIT)}
    assert attached_only == {"local"}


# ------------------------------------------------------------------------------- metric sinks


def test_metric_sinks_declare_summary_exactly_when_they_have_one(tmp_path):
    for impl in (JsonlSink, WandbSink):
        assert issubclass(impl, MetricSink) and not inspect.isabstract(impl)
        assert undeclared(impl, SinkCapability) == []
    assert WandbSink.supports(SinkCapability.SUMMARY) and not JsonlSink.supports(SinkCapability.SUMMARY)
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.log(1, {"loss": 0.5})
    sink.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'


def test_metric_sinks_hand_the_summary_to_sinks_that_declare_it(tmp_path):
    """MetricSinks.close calls ``summary`` on the declaration, not on a method's presence."""
    import logging

    from launcher.metrics.sinks import MetricSinks

    class Recording(MetricSink):
        capabilities = frozenset({SinkCapability.SUMMARY})

        def __init__(self):
            self.events: list = []

        def log(self, step, metrics):
            self.events.append(("log", step))

        def summary(self, values):
            self.events.append(("summary", values))

        def close(self):
            self.events.append(("close",))

    class Undeclared(Recording):
        capabilities = frozenset()

    sinks = MetricSinks(validate_config(tiny_config()), None, 0, logging.getLogger("ftl.test"), writes=False)
    declared, silent = Recording(), Undeclared()
    sinks.sinks += [declared, silent]
    sinks.emit(3, {"loss": 1.0})
    sinks.close({"steps": 3})
    assert declared.events == [("log", 3), ("summary", {"steps": 3}), ("close",)]
    assert silent.events == [("log", 3), ("close",)]


# ------------------------------------------------------------------------------- capabilities


def test_a_declared_capability_without_its_method_fails_at_class_definition():
    class Kind(Capability):
        FLY = "fly"

    class Plugin(Capable):
        pass

    with pytest.raises(TypeError, match="declares fly"):
        type("Bird", (Plugin,), {"capabilities": frozenset({Kind.FLY})})
    bird = type("Bird", (Plugin,), {"capabilities": frozenset({Kind.FLY}), "fly": lambda self: "up"})
    assert bird.supports(Kind.FLY) and bird().fly() == "up"
    penguin = type("Penguin", (Plugin,), {"fly": lambda self: "no"})
    assert not penguin.supports(Kind.FLY) and undeclared(penguin, Kind) == ["fly"]


# ------------------------------------------------------------------------------- builtin data, models


@pytest.mark.parametrize("name", SYNTHETIC_TASKS.names())
def test_every_builtin_dataset_makes_rows_a_method_reads(name):
    key, row = SYNTHETIC_TASKS.get(name)(random.Random(0))
    assert isinstance(key, str) and key and isinstance(row, dict)
    read = {f for s in STRATEGIES.items() for f in s[1].formats}
    formats = [f for f in read if set(FORMAT_COLUMNS[f]) <= set(row)]
    assert formats, f"{name}: columns {sorted(row)} match no format a method reads"


def test_every_builtin_model_is_a_buildable_spec():
    for name, spec in TINY_MODELS.items():
        assert isinstance(spec, TinySpec), name
        assert spec.hidden_size % spec.num_attention_heads == 0, name
        assert spec.num_attention_heads % spec.num_key_value_heads == 0, name
    for name, packaged in PACKAGED.items():
        assert isinstance(packaged, PackagedModel) and packaged.module.isidentifier(), name
        assert callable(packaged.folder), name
