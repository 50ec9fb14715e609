#!/usr/bin/env python3
"""Packing on variable-length chats: ftl ``sft`` against TRL's ``SFTTrainer``, packed and padded.

    python scripts/bench_packing.py [--repeats 3] [--steps 30] [--max-length 256]

Why a separate benchmark: ``bench_trl.py`` uses the reverse task, whose chats are all ~27
tokens, so padding costs little and packing has nothing to win. Real chat data mixes one-line
answers with long ones; padded to the longest chat of the batch, most of the compute goes to
padding. Here the chats' lengths are spread log-uniformly from ~16 tokens to ``max_length``
(a mix of long answers and long prompts with one-token answers), the regime packing is for.

Four trainers, same model (builtin tiny-llama-256, fp32, sdpa, 2 torch threads), same data,
loss on assistant tokens only, alternated run by run (the machine is shared):

- ftl padded: ``data.packing: false``, 16 chats per step padded to the longest;
- TRL padded: ``packing=False``, the same 16 chats per step;
- ftl packed: ``data.packing: true`` (best fit decreasing into ``max_length`` rows, TRL's
  packer; position ids restart, transformers builds a block-diagonal mask per row);
- TRL packed: ``packing=True`` with TRL's default ``packing_strategy='bfd'``, which forces
  ``padding_free``: the step's bins are flattened into one ``[1, rows*max_length]`` sequence
  with restarting position ids (the same per-example attention and labels as ftl).

Packed runs take as many rows per step as carry the same real tokens as 16 padded chats (from
each packer's measured fill), so every trainer does about the same useful work per step. The
figure is real (non-padding) tokens per second over the steps after 5 warm-up steps. Before
timing, a loss check feeds the same 48 chats through all four data paths at the initial
weights: equal losses prove the labels, masks and positions mean the same thing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_common import Contention, append_section, prepare, replayed_rows, run_loop, wait_quiet

MODEL = "builtin:tiny-llama-256"
CHATS_PER_STEP = 24
NUM_ROWS = 2000
SKIP = 5
SEED = 42
SAVED_ARGS = ("repeats", "steps", "max_length", "max_wait", "max_other", "retries")
THREADS = 2
LETTERS = "abcdefghij"
# Chat template overhead of one user + one assistant turn (ChatML): 18 tokens with a one-letter
# copy; each further letter is one token in the prompt and (copy/reverse) one in the answer.
OVERHEAD = 18


def variable_chats(num: int, max_length: int, seed: int = 0) -> list[dict]:
    """Deterministic chats whose tokenized lengths are log-uniform in [~16, max_length].

    Half are copy/reverse tasks (answer as long as the prompt: long assistant turns), half
    'first'/'count' questions over long letter strings (long prompt, one-token answer), so both
    the prompt and the trained part vary. Letters are single tokens in the builtin tokenizer.
    """
    rng = random.Random(f"bench-packing:{seed}")
    rows = []
    for _ in range(num):
        target = math.exp(rng.uniform(math.log(OVERHEAD - 2), math.log(max_length)))
        letters = [rng.choice(LETTERS) for _ in range(max(1, int(target) - OVERHEAD - 1))]
        kind = rng.choice(("copy", "reverse", "first", "count"))
        if kind in ("copy", "reverse"):
            letters = letters[: max(1, len(letters) // 2 + 1)]
            answer = " ".join(letters if kind == "copy" else reversed(letters))
        elif kind == "first":
            answer = letters[0]
        else:
            answer = str(len(letters) % 10)
        rows.append({"messages": [{"role": "user", "content": f"{kind}: {' '.join(letters)}"},
                                  {"role": "assistant", "content": answer}]})
    return rows


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


def _ftl_cfg(name: str, data: Path, steps: int, max_length: int, packing: bool, micro: int) -> dict:
    return {"name": name, "method": "sft", "model": {"path": MODEL},
            "data": {"train": {"path": str(data)}, "max_length": max_length, "packing": packing},
            "train": {"max_steps": steps, "micro_batch_size": micro, "lr": 1e-3, "schedule": "constant",
                      "max_grad_norm": 1.0, "seed": SEED},
            "resources": {"num_workers": 1, "cpus_per_worker": THREADS},
            "checkpoint": {"dir": "runs", "save_final": False},
            "logging": {"every_steps": 1, "wandb": {"mode": "disabled"}}, "eval": {"at_start": False}}


def _ftl_parts(run: Path) -> tuple[Any, Any, Any]:
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
    run = prepare(work, name, _ftl_cfg(name, data, steps, max_length, packing, micro))
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


def _trl_args(work: Path, steps: int, max_length: int, packing: bool, batch: int, accum: int = 1) -> Any:
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

    trainer = Counting(model=AutoModelForCausalLM.from_pretrained(path), args=_trl_args(
        work, steps, max_length, packing, batch, accum), train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(path), callbacks=[Timer()])
    trainer.train()
    step_s = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
    tokens = [sum(micro_tokens[i:i + accum]) for i in range(0, len(micro_tokens), accum)]
    return RunResult(step_s[SKIP:steps], tokens[SKIP:steps], losses[0] if losses else float("nan"))


def loss_check(work: Path, rows: list[dict], max_length: int) -> dict[str, float]:
    """Mean loss per trained token of the same chats at the initial weights, through each data
    path. Equal values mean same labels (assistant tokens incl. ``<|im_end|>``), same per-example
    attention and positions; cross-example attention or shifted positions would change them."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from launcher.models.tiny import resolve_model_path
    from strategies.base import causal_lm_loss

    path = resolve_model_path(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    # At the builtin init (std 0.02) every logit is ~0 and the loss is ln(vocab) whatever the
    # attention sees; large random weights make each token's loss depend on its context.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=gen)
    out: dict[str, float] = {}
    data = work / "check.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for packing in (False, True):
        name = f"check-{'packed' if packing else 'padded'}"
        run = prepare(work, name, _ftl_cfg(name, data, 1, max_length, packing, 4))
        cfg, _, strategy = _ftl_parts(run)
        features = [strategy.tokenize(r, "messages") for r in rows]
        if packing:
            features = strategy.pack_dataset(features)
        total, count = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(features), 4):
                lo = causal_lm_loss(model, strategy.collate(features[i:i + 4]))
                total, count = total + float(lo.loss_sum), count + float(lo.count)
        out[f"ftl {'packed' if packing else 'padded'}"] = total / count
        if packing:  # negative control: the same packed rows, one causal mask over the whole row
            total, count = 0.0, 0.0
            with torch.no_grad():
                for i in range(0, len(features), 4):
                    batch = strategy.collate(features[i:i + 4])
                    batch["attention_mask"] = (batch.pop("position_ids") >= 0).long()
                    lo = causal_lm_loss(model, batch)
                    total, count = total + float(lo.loss_sum), count + float(lo.count)
            out["control: packed rows without per-example attention"] = total / count
        trainer = SFTTrainer(model=model, args=_trl_args(work, 1, max_length, packing, 4),
                             train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=AutoTokenizer.from_pretrained(path))
        ds = trainer.train_dataset
        total, count = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(ds), 4):
                batch = trainer.data_collator([ds[j] for j in range(i, min(i + 4, len(ds)))])
                n = float((batch["labels"][:, 1:] != -100).sum())
                total, count = total + float(trainer.compute_loss(model, batch)) * n, count + n
        out[f"TRL {'packed (bfd, padding-free)' if packing else 'padded'}"] = total / count
    return out


def profile_layouts(work: Path, rows: list[dict], max_length: int, ftl_rows: int, trl_rows: int,
                    repeats: int = 7) -> dict[str, Any]:
    """Forward + backward of one step's batch in each layout, alternated, median ms; then
    torch.profiler's top ops of the packed layouts. Separates the packer (how full the rows
    are) from the layout (rows of ``max_length`` vs one flattened sequence whose sdpa mask is
    ``(rows*max_length)^2``): "ftl layout, TRL's bins" feeds TRL's best-fit-decreasing bins
    through ftl's collate and loss."""
    import datasets
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from launcher.models.tiny import resolve_model_path

    torch.set_num_threads(THREADS)
    path = resolve_model_path(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path).train()
    data = work / "profile.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = prepare(work, "profile", _ftl_cfg("profile", data, 1, max_length, True, ftl_rows))
    _, _, strategy = _ftl_parts(run)
    feats = [strategy.tokenize(r, "messages") for r in rows]
    packed = strategy.pack_dataset(feats)
    trainer = SFTTrainer(model=model, args=_trl_args(work, 1, max_length, True, trl_rows),
                         train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(path))
    bins = [trainer.train_dataset[i] for i in range(trl_rows)]
    as_ftl = [{"input_ids": b["input_ids"], "labels": b["labels"],
               "position_ids": [p for n in b["seq_lengths"] for p in range(n)]} for b in bins]
    padded = SFTTrainer(model=model, args=_trl_args(work, 1, max_length, False, CHATS_PER_STEP),
                        train_dataset=datasets.Dataset.from_list(rows[:CHATS_PER_STEP]),
                        processing_class=AutoTokenizer.from_pretrained(path))

    def ftl_step(batch: dict) -> None:
        out = strategy.loss(model, batch)
        (out.loss_sum / out.count).backward()

    def trl_step(batch: dict, which: Any = trainer) -> None:
        which.compute_loss(model, batch).backward()

    cases = {
        "ftl padded": (ftl_step, strategy.collate(feats[:CHATS_PER_STEP])),
        "TRL padded": (lambda b: trl_step(b, padded),
                       padded.data_collator([padded.train_dataset[i] for i in range(CHATS_PER_STEP)])),
        "ftl packed": (ftl_step, strategy.collate(packed[:ftl_rows])),
        "TRL packed": (trl_step, trainer.data_collator(bins)),
        "ftl layout, TRL's bins": (ftl_step, strategy.collate(as_ftl)),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(repeats + 1):
        for name, (fn, batch) in cases.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn(batch)
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    result: dict[str, Any] = {}
    pad = trainer.processing_class.pad_token_id  # never inside a chat: non-pad tokens are real
    for name, (_, batch) in cases.items():
        real = int((batch["input_ids"] != pad).sum())
        ms = statistics.median(times[name]) * 1000
        result[name] = {"shape": list(batch["input_ids"].shape), "real_tokens": real,
                        "fwd_bwd_ms": round(ms, 1), "real_tokens_per_s": round(real / ms * 1000)}
    for name in ("ftl packed", "TRL packed"):
        fn, batch = cases[name]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(batch)
        result[f"{name} top ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
    return result


def fills(rows: list[dict], max_length: int) -> dict[str, float]:
    """Chat lengths and the mean real tokens per packed row of each packer (ftl's rows, TRL's
    bins; both best fit decreasing), from the packers' own code on the real token lengths."""
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    from launcher.data.batching import pack_examples
    from launcher.models.tiny import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in rows]
    if max(lengths) > max_length:  # truncation would cut answers, and TRL drops fully cut chats
        raise ValueError(f"a chat has {max(lengths)} tokens, over max_length {max_length}")
    feats = [{"input_ids": [0] * n, "labels": [0] * n} for n in lengths]
    ftl_rows = pack_examples(feats, max_length)
    trl_bins = pack_dataset(datasets.Dataset.from_list(feats), max_length, "bfd")
    return {"mean_len": statistics.mean(lengths), "min_len": min(lengths), "max_len": max(lengths),
            "median_len": statistics.median(lengths), "ftl_row": sum(lengths) / len(ftl_rows),
            "trl_row": sum(lengths) / len(trl_bins)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-append", action="store_true", help="print the section, leave BENCHMARKS.md")
    parser.add_argument("--check-only", action="store_true", help="only the loss check and the fills")
    parser.add_argument("--max-wait", type=float, default=300.0,
                        help="seconds to wait for a quiet machine before each run")
    parser.add_argument("--max-other", type=float, default=0.1,
                        help="rerun a run during which other processes took more than this share of the CPUs")
    parser.add_argument("--retries", type=int, default=2, help="reruns at most, keeping the least disturbed")
    parser.add_argument("--profile", action="store_true", help="also profile one step of each packed layout")
    parser.add_argument("--raw", type=Path, help="per-step data of every run are written here (JSON)")
    parser.add_argument("--from-raw", type=Path, help="no runs: make the section from a --raw file")
    args = parser.parse_args()
    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
        results = {k: [RunResult(**r) for r in v] for k, v in raw.pop("results").items()}
        attempts = {k: [RunResult(**r) for r in v] for k, v in raw.pop("attempts").items()}
        saved = argparse.Namespace(**{**raw.pop("args"), "no_append": args.no_append})
        print(section(saved, results, attempts, raw["fill"], raw["ftl_rows"], raw["trl_rows"], raw["check"]))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    rows = variable_chats(NUM_ROWS, args.max_length)
    fill = fills(rows, args.max_length)
    target = CHATS_PER_STEP * fill["mean_len"]
    ftl_rows, trl_rows = round(target / fill["ftl_row"]), round(target / fill["trl_row"])
    print(json.dumps({**fill, "ftl_rows_per_step": ftl_rows, "trl_rows_per_step": trl_rows}), flush=True)
    base = Path(tempfile.mkdtemp(prefix="ftl-bench-packing-"))
    check = loss_check(base, rows[:48], args.max_length)
    print(json.dumps({"loss_check": check}), flush=True)
    if args.profile:
        wait_quiet(max_wait_s=args.max_wait)
        for k, v in profile_layouts(base, rows, args.max_length, ftl_rows, trl_rows).items():
            print(k, v if isinstance(v, str) else json.dumps(v), flush=True)
    if args.check_only:
        return
    data = base / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runners = {
        "ftl padded": lambda w: ftl_run(w, data, args.steps, args.max_length, False, CHATS_PER_STEP),
        "TRL padded": lambda w: trl_run(w, ftl_order(rows, args.steps, CHATS_PER_STEP), args.steps,
                                        args.max_length, False, CHATS_PER_STEP),
        "ftl packed": lambda w: ftl_run(w, data, args.steps, args.max_length, True, ftl_rows),
        "TRL packed": lambda w: trl_run(w, rows, args.steps, args.max_length, True, trl_rows),
    }
    results: dict[str, list[RunResult]] = {k: [] for k in runners}
    attempts: dict[str, list[RunResult]] = {k: [] for k in runners}
    for rep in range(args.repeats):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for name in order:
            best: RunResult | None = None
            for attempt in range(args.retries + 1):
                waited = wait_quiet(max_wait_s=args.max_wait)
                work = base / f"rep{rep}-{name.replace(' ', '-')}-{attempt}"
                work.mkdir()
                with Contention() as busy:
                    res = runners[name](work)
                res.extra = {"other_share": busy.other_share, "waited_s": waited, "attempt": attempt}
                attempts[name].append(res)
                print(json.dumps({"repeat": rep, "trainer": name, "tokens_per_s": round(res.tokens_per_s),
                                  "median_step_ms": round(res.median_step_ms, 1),
                                  "tokens_per_step": round(statistics.mean(res.tokens)),
                                  "first_loss": round(res.first_loss, 4), **res.extra}), flush=True)
                if best is None or res.extra["other_share"] < best.extra["other_share"]:
                    best = res
                if res.extra["other_share"] <= args.max_other:
                    break
            assert best is not None
            results[name].append(best)
            if args.raw:
                args.raw.write_text(json.dumps({
                    "args": {k: v for k, v in vars(args).items() if k in SAVED_ARGS},
                    "fill": fill, "ftl_rows": ftl_rows, "trl_rows": trl_rows, "check": check,
                    "results": {k: [asdict(r) for r in v] for k, v in results.items()},
                    "attempts": {k: [asdict(r) for r in v] for k, v in attempts.items()}}))
    print(section(args, results, attempts, fill, ftl_rows, trl_rows, check))


def best_per_step(runs: list[RunResult]) -> float:
    """Real tokens/s from the fastest time seen for each step over all runs of one trainer.

    Every run of a trainer sees the same batches step by step (seeded samplers), and other
    jobs can only slow a step down, so the per-step minimum is the least disturbed estimate of
    that trainer's speed on this batch sequence (``timeit``'s rule) when the machine is busy.
    """
    if any(r.tokens != runs[0].tokens for r in runs):
        raise ValueError("runs of one trainer saw different batches")
    fastest = [min(times) for times in zip(*(r.step_s for r in runs))]
    return sum(runs[0].tokens) / sum(fastest)


def section(args: argparse.Namespace, results: dict[str, list[RunResult]],
            attempts: dict[str, list[RunResult]], fill: dict[str, float], ftl_rows: int, trl_rows: int,
            check: dict[str, float]) -> str:
    """The BENCHMARKS.md section (appended unless --no-append)."""
    tps = {k: statistics.median(r.tokens_per_s for r in v) for k, v in results.items()}
    best = {k: best_per_step(v) for k, v in attempts.items()}
    others = [r.extra["other_share"] for v in results.values() for r in v]
    reruns = sum(r.extra.get("attempt", 0) for v in results.values() for r in v)
    layout = {"ftl padded": f"{CHATS_PER_STEP} chats, padded to the longest",
              "TRL padded": f"{CHATS_PER_STEP} chats, padded to the longest",
              "ftl packed": f"{ftl_rows} rows x {args.max_length} (bfd), one row each",
              "TRL packed": f"{trl_rows} bins (bfd) flattened to 1 x {trl_rows * args.max_length}"}
    table = []
    for name, runs in results.items():
        table.append([name, layout[name], f"{statistics.mean(runs[0].tokens):,.0f}",
                      f"{statistics.median(r.median_step_ms for r in runs):.0f}", f"{tps[name]:,.0f}",
                      f"{tps[name] / tps['TRL padded']:.2f}", f"{best[name]:,.0f}",
                      f"{best[name] / best['TRL padded']:.2f}",
                      f"{statistics.median(r.first_loss for r in runs):.4f}",
                      " ".join(f"{r.tokens_per_s:,.0f}" for r in runs)])

    def ratio(a: str, b: str) -> str:
        return f"{tps[a] / tps[b]:.2f} (best per step: {best[a] / best[b]:.2f})"

    ratios = (f"Ratios, medians of runs (and best per step): **ftl packed / TRL packed = "
              f"{ratio('ftl packed', 'TRL packed')}**; **ftl packed / TRL padded = "
              f"{ratio('ftl packed', 'TRL padded')}** (the goal >= 1.5: packing's win for a user coming from "
              f"padded TRL); ftl padded / TRL padded = {ratio('ftl padded', 'TRL padded')}; ftl packed / ftl "
              f"padded = {ratio('ftl packed', 'ftl padded')}; TRL packed / TRL padded = "
              f"{ratio('TRL packed', 'TRL padded')}.")
    notes = (
        f"{ratios}\n\nData: {NUM_ROWS} synthetic chats (`variable_chats` in the script: copy/reverse with "
        f"long answers, first/count with long prompts and one-token answers), lengths log-uniform from "
        f"{fill['min_len']} to {fill['max_len']} tokens (mean {fill['mean_len']:.1f}, median "
        f"{fill['median_len']:.0f}); max_length {args.max_length}. Model {MODEL} (4 layers, hidden 256), "
        f"fp32, sdpa, constant LR 1e-3, {THREADS} torch threads, loss on assistant tokens only on both "
        "sides; TRL set to `bf16=False, gradient_checkpointing=False` (TRL 1.16's SFTConfig defaults to bf16 "
        "autocast and gradient checkpointing, even on CPU; ftl's default is fp32 without checkpointing). "
        "The padded runs see identical batches (TRL gets the chats in ftl's sampler order with "
        "`train_sampling_strategy='sequential'`), hence the identical step-1 loss. "
        f"Packed runs take as many rows per step as carry the real tokens of {CHATS_PER_STEP} chats: ftl's "
        f"rows hold {fill['ftl_row']:.0f} real tokens on average, TRL's bins "
        f"{fill['trl_row']:.0f}. Real tokens/s of a run = median over steps {SKIP + 1}..{args.steps} of the "
        "step's non-padding tokens / its time; 'median' is the median over runs, 'best per step' the real "
        f"tokens of steps {SKIP + 1}.. over the sum of each step's fastest time in all runs and reruns of "
        "that trainer (its batches are the same in every run; other jobs only add time). TRL's step time "
        "leaves out its batch prefetch (ftl's includes its collation). "
        f"Shared machine: each run waits (at most {args.max_wait:.0f} s) for 5 quiet seconds, and is "
        f"rerun (at most {args.retries} times, the least disturbed attempt kept) when other processes took "
        f"more than {args.max_other:.0%} of the {os.cpu_count()} cores during it; share taken by others in "
        f"the kept runs: median {statistics.median(others):.0%}, max {max(others):.0%} ({reruns} reruns); "
        "runs alternate. Same-chats loss check at the "
        "initial weights (48 chats through each data path, mean loss per trained token): "
        + ", ".join(f"{k} {v:.6f}" for k, v in check.items()) + ".")
    header = ["trainer", "rows per step", "real tokens/step", "median step (ms)", "real tokens/s (median)",
              "vs TRL padded", "real tokens/s (best per step)", "vs TRL padded", "loss at step 1",
              "per-run tokens/s"]
    title = "ftl sft vs TRL SFTTrainer with packing, variable-length chats (CPU, one process)"
    command = (f"python scripts/bench_packing.py --repeats {args.repeats} --steps {args.steps} "
               f"--max-length {args.max_length} --retries {args.retries} --max-other {args.max_other} "
               f"--max-wait {args.max_wait:.0f}")
    if args.no_append:
        return json.dumps({"table": [header, *table], "notes": notes})
    return append_section(title, command, header, table, notes)


if __name__ == "__main__":
    main()
