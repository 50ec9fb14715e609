"""One timed run of each trainer: ftl's per-rank loop (padded or packed) and TRL's SFTTrainer."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.bench.common import prepare, replayed_rows, run_loop
from scripts.bench.packing.chats import MODEL, SEED, SKIP, THREADS


@dataclass
class RunResult:
    """One timed run: per-step seconds and real tokens, after the warm-up steps."""

    step_s: list[float]
    tokens: list[int]
    first_loss: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """Median over steps of the step's real tokens / its seconds. Other jobs on a shared
        machine only ever slow steps down; the median ignores up to half the steps being hit,
        where total tokens / total time would not."""
        return statistics.median(t / s for t, s in zip(self.tokens, self.step_s))

    @property
    def median_step_ms(self) -> float:
        return statistics.median(self.step_s) * 1000


def ftl_cfg(name: str, data: Path, steps: int, max_length: int, packing: bool, micro: int) -> dict:
    return {"name": name, "method": "sft", "model": {"path": MODEL},
            "data": {"train": {"path": str(data)}, "max_length": max_length, "packing": packing},
            "train": {"max_steps": steps, "micro_batch_size": micro, "lr": 1e-3, "schedule": "constant",
                      "max_grad_norm": 1.0, "seed": SEED},
            "resources": {"num_workers": 1, "cpus_per_worker": THREADS},
            "checkpoint": {"dir": "runs", "save_final": False},
            "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False}}


def ftl_parts(run: Path) -> tuple[Any, Any, Any]:
    """(config, tokenizer, strategy) built the way ``launcher.train.loop`` builds them."""
    from launcher.models.load import load_tokenizer
    from launcher.run.rundir import RunFolder
    from strategies import build_strategy

    cfg = RunFolder(run).load_config()
    tok = load_tokenizer(cfg)
    strategy = build_strategy(cfg, tok)
    return cfg, tok, strategy


_FTL_TOKENS: dict[tuple[bool, int, int], list[int]] = {}


def ftl_real_tokens(run: Path, packing: bool, micro: int, steps: int) -> list[int]:
    """Non-padding tokens of each step, replaying ftl's own data pipeline and sampler.

    Counted here from the packed rows the sampler picks, independently of the loop's own
    ``train/tokens`` (which counted padding in packed batches before it was fixed).
    """
    key = (packing, micro, steps)
    if key not in _FTL_TOKENS:
        _FTL_TOKENS[key] = [sum(len(r["input_ids"]) for r in rows) for rows in replayed_rows(run, steps)]
    return _FTL_TOKENS[key]


def ftl_run(work: Path, data: Path, steps: int, max_length: int, packing: bool, micro: int) -> RunResult:
    name = f"ftl-{'packed' if packing else 'padded'}"
    run = prepare(work, name, ftl_cfg(name, data, steps, max_length, packing, micro))
    by_step = run_loop(run, THREADS)
    tokens = ftl_real_tokens(run, packing, micro, steps)
    keep = range(SKIP + 1, steps + 1)
    return RunResult([by_step[s]["train/step_s"] for s in keep], [tokens[s - 1] for s in keep],
                     by_step[1]["train/loss"])


def ftl_order(rows: list[dict], steps: int, batch: int) -> list[dict]:
    """The chats in the order ftl's sampler feeds them (step after step). Given to TRL with
    ``train_sampling_strategy='sequential'``, the padded runs of both see the very same
    batches, so the same padding: the padded comparison is of speed, not of luck in batching."""
    from launcher.data.sampler import StepSampler

    return [rows[i] for i in StepSampler([len(rows)], [1.0], SEED).take(0, steps * batch)]


def trl_args(work: Path, steps: int, max_length: int, packing: bool, batch: int, accum: int = 1) -> Any:
    """TRL's settings, matched to ftl's run: fp32, no checkpointing, constant LR, same seed."""
    from trl import SFTConfig

    return SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accum, learning_rate=1e-3, lr_scheduler_type="constant",
                     max_grad_norm=1.0, logging_steps=10**6, logging_first_step=True, save_strategy="no",
                     report_to=[], use_cpu=True, max_length=max_length, assistant_only_loss=True,
                     packing=packing, packing_strategy="bfd", seed=SEED, dataloader_num_workers=0,
                     train_sampling_strategy="random" if packing else "sequential",
                     # TRL 1.x defaults to bf16 autocast and gradient checkpointing; ftl's run is fp32
                     # without checkpointing, so TRL is set the same (see BENCHMARKS.md).
                     bf16=False, gradient_checkpointing=False)


def trl_run(work: Path, rows: list[dict], steps: int, max_length: int, packing: bool, batch: int,
            accum: int = 1) -> RunResult:
    """TRL's SFTTrainer in this process. Step time runs from ``on_step_begin`` to ``on_step_end``:
    it leaves out TRL's batch prefetch and collation (ftl's step time includes its collation),
    so any bias favours TRL."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    from launcher.models.tiny import resolve_model_path

    torch.set_num_threads(THREADS)
    path = resolve_model_path(MODEL)
    marks: list[float] = []
    micro_tokens: list[int] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class Counting(SFTTrainer):
        """Records each micro-batch's real tokens (padded: the attention mask; padding-free: the
        flattened length, which has no padding as ``pad_to_multiple_of`` is None on CPU)."""

        def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> Any:
            if "attention_mask" in inputs:
                micro_tokens.append(int(inputs["attention_mask"].sum()))
            else:
                micro_tokens.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counting(model=AutoModelForCausalLM.from_pretrained(path), args=trl_args(
        work, steps, max_length, packing, batch, accum), train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(path), callbacks=[Timer()])
    trainer.train()
    step_s = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
    tokens = [sum(micro_tokens[i:i + accum]) for i in range(0, len(micro_tokens), accum)]
    return RunResult(step_s[SKIP:steps], tokens[SKIP:steps], losses[0] if losses else float("nan"))
