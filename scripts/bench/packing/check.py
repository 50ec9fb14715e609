"""Before timing: the same chats through all four data paths (equal losses), the packers'
fills, and an optional profile of one step in each layout."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from scripts.bench.common import prepare
from scripts.bench.packing.chats import CHATS_PER_STEP, MODEL, THREADS
from scripts.bench.packing.runners import ftl_cfg, ftl_parts, trl_args


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
        run = prepare(work, name, ftl_cfg(name, data, 1, max_length, packing, 4))
        cfg, _, strategy = ftl_parts(run)
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
        trainer = SFTTrainer(model=model, args=trl_args(work, 1, max_length, packing, 4),
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
    run = prepare(work, "profile", ftl_cfg("profile", data, 1, max_length, True, ftl_rows))
    _, _, strategy = ftl_parts(run)
    feats = [strategy.tokenize(r, "messages") for r in rows]
    packed = strategy.pack_dataset(feats)
    trainer = SFTTrainer(model=model, args=trl_args(work, 1, max_length, True, trl_rows),
                         train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(path))
    bins = [trainer.train_dataset[i] for i in range(trl_rows)]
    as_ftl = [{"input_ids": b["input_ids"], "labels": b["labels"],
               "position_ids": [p for n in b["seq_lengths"] for p in range(n)]} for b in bins]
    padded = SFTTrainer(model=model, args=trl_args(work, 1, max_length, False, CHATS_PER_STEP),
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
