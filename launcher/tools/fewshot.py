"""Few-shot exact match (``ftl eval``): a base model's K-shot score next to a fine-tuned one.

Fine-tuning is only worth its cost if it beats prompting the base model with a few solved
examples, so both are scored here the same way: K support examples drawn (seeded) from a
support set that never contains the query's own question, placed before the query as chat
turns (or as ``Q: ...\\nA: ...`` text when the tokenizer has no chat template), then greedy
generation and exact match after ``strip()``.

For one query the K-shot supports are the first K of one seeded draw, so the 1-shot prompt's
example is also in the 4-shot prompt: scores for several K differ only by the shots added.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.core.registry import BUILTIN_PREFIX

BUILTIN_SUPPORT_ROWS = 256  # train-split rows generated as the support set of a builtin task


@dataclass(frozen=True)
class Example:
    """One question (the chat turns before the answer) and its reference answer."""

    prompt: tuple[tuple[str, str], ...]  # (role, content) turns, system first if any
    answer: str

    @property
    def key(self) -> str:
        """Identity of the question: a support example with the same key is never shown."""
        return json.dumps([list(t) for t in self.prompt if t[0] != "system"])

    def question_text(self) -> str:
        return "\n".join(content for role, content in self.prompt if role != "system")


@dataclass
class LoadedModel:
    label: str
    model: Any
    tokenizer: Any


# ---------------------------------------------------------------- data


def parse_shots(text: str) -> list[int]:
    """``"0,1,4"`` -> ``[0, 1, 4]`` (order kept, duplicates dropped)."""
    shots: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise UserError(Problem("--shots", f"expected non-negative integers, got {text!r}",
                                    "e.g. --shots 0 or --shots 0,1,4"))
        if int(part) not in shots:
            shots.append(int(part))
    return shots


def _row_example(row: dict, fmt: str, where: str) -> Example:
    if fmt == "messages":
        messages = row.get("messages") or []
        if not messages or messages[-1].get("role") != "assistant":
            raise UserError(Problem(where, "the last message must be the assistant's answer",
                                    "few-shot eval scores the final assistant turn"))
        prompt = tuple((m["role"], str(m["content"])) for m in messages[:-1])
        return Example(prompt, str(messages[-1]["content"]))
    prompt, completion = row.get("prompt"), row.get("completion")
    turns = (tuple((m["role"], str(m["content"])) for m in prompt) if isinstance(prompt, list)
             else (("user", str(prompt)),))
    answer = completion[-1]["content"] if isinstance(completion, list) else completion
    return Example(turns, str(answer))


def load_examples(spec: str, option: str, *, split: str, num: int | None) -> list[Example]:
    """Rows of a file, folder, hub dataset or ``builtin:<task>`` split as ``Example``s.

    Builtin tasks are generated with seed 0, as a config's ``data.eval: builtin:<task>`` is:
    the questions are those a run scored as ``eval/exact_match``, whatever ``--seed`` is."""
    if spec.startswith(BUILTIN_PREFIX):
        from launcher.data.synthetic import SYNTHETIC_TASKS, generate

        task = spec[len(BUILTIN_PREFIX):]
        SYNTHETIC_TASKS.get(task, option)  # unknown task -> did-you-mean
        rows = generate(task, num or BUILTIN_SUPPORT_ROWS, 0, split)
        return [_row_example(r, "messages", f"{spec}: row {i + 1}") for i, r in enumerate(rows)]
    from launcher.config.schema import DataSource
    from launcher.data.sources import FORMAT_COLUMNS, load_source, row_location

    local = Path(spec).expanduser()
    if not local.exists() and (spec.startswith((".", "/", "~")) or local.suffix):
        raise UserError(Problem(f"{option} {spec}", "file not found",
                                "paths are relative to the directory you run ftl from"))
    import datasets

    datasets.disable_progress_bars()
    source = DataSource(path=spec)
    ds = load_source(source, option)
    columns = set(ds.column_names)
    fmt = next((f for f in ("messages", "prompt_completion") if set(FORMAT_COLUMNS[f]) <= columns), "")
    if not fmt:
        raise UserError(Problem(row_location(source, 0), "missing column: few-shot eval needs "
                                f"messages or prompt+completion; the data has {', '.join(sorted(columns))}",
                                "rename the columns"))
    if num is not None and len(ds) > num:
        ds = ds.select(range(num))
    return [_row_example(row, fmt, row_location(source, i)) for i, row in enumerate(ds)]


def draw_supports(queries: list[Example], pool: list[Example], k: int, seed: int) -> list[list[Example]]:
    """For each query, ``k`` support examples from ``pool``, none with the query's question.

    One seeded draw per query (by its index); the j-shot supports are the first j of the
    k-shot ones for the same seed, so scores for several K differ only by the shots added."""
    if k == 0:
        return [[] for _ in queries]
    counts: dict[str, int] = {}
    for ex in pool:
        counts[ex.key] = counts.get(ex.key, 0) + 1
    out = []
    for i, query in enumerate(queries):
        clash = counts.get(query.key, 0)
        if len(pool) - clash < k:
            raise UserError(Problem("--shots", f"{k} shots need {k} support examples other than the "
                                    f"query; the support set has {len(pool) - clash}",
                                    "pass a bigger --support file or fewer --shots"))
        # Draw one index at a time (skipping repeats and the query's question): the sequence
        # depends only on the seed and the pool, so a smaller K gets a prefix of a larger K's
        # supports (random.sample switches algorithms with the sample size).
        rng = random.Random(f"fewshot:{seed}:{i}")
        picked: list[int] = []
        while len(picked) < k:
            j = rng.randrange(len(pool))
            if j not in picked and pool[j].key != query.key:
                picked.append(j)
        out.append([pool[j] for j in picked])
    return out


# ---------------------------------------------------------------- prompts


def build_messages(query: Example, supports: list[Example]) -> list[dict[str, str]]:
    """Chat turns: the query's system prompt, then each support as user/assistant turns,
    then the query's own turns (the model answers next)."""
    system = [{"role": r, "content": c} for r, c in query.prompt if r == "system"]
    turns: list[dict[str, str]] = list(system)
    for ex in supports:
        turns += [{"role": r, "content": c} for r, c in ex.prompt if r != "system"]
        turns.append({"role": "assistant", "content": ex.answer})
    turns += [{"role": r, "content": c} for r, c in query.prompt if r != "system"]
    return turns


def build_text(query: Example, supports: list[Example]) -> str:
    """Plain-text few-shot prompt for tokenizers without a chat template."""
    system = "\n".join(c for r, c in query.prompt if r == "system")
    parts = [system + "\n\n"] if system else []
    parts += [f"Q: {ex.question_text()}\nA: {ex.answer}\n\n" for ex in supports]
    parts.append(f"Q: {query.question_text()}\nA:")
    return "".join(parts)


def prompt_ids(tokenizer: Any, query: Example, supports: list[Example]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(build_messages(query, supports), tokenize=True,
                                            add_generation_prompt=True, return_dict=True)
        return list(enc["input_ids"])
    return list(tokenizer(build_text(query, supports), add_special_tokens=True)["input_ids"])


def clean_answer(text: str, chat: bool) -> str:
    """Text prompts go on with the next ``Q:``; only the first answer counts."""
    if not chat:
        text = text.split("\n\n")[0].split("\nQ:")[0]
    return text.strip()


# ---------------------------------------------------------------- models


def _resolve_base(path: str) -> str:
    from launcher.models.tiny import resolve_model_path

    return resolve_model_path(path)


def load_model(spec: str) -> LoadedModel:
    """An HF folder, ``builtin:<name>``, a run folder (its ``final/``), a LoRA adapter folder
    (base + adapter) or a hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    base_hint: str | None = None
    if spec.startswith(BUILTIN_PREFIX):
        from launcher.models.tiny import TINY_MODELS

        TINY_MODELS.get(spec[len(BUILTIN_PREFIX):], "MODEL_OR_RUN")
        folder: Path | None = Path(_resolve_base(spec))
    else:
        folder = Path(spec).expanduser()
        if folder.is_dir() and (folder / "config.yaml").exists() and not (folder / "config.json").exists():
            import yaml

            base_hint = ((yaml.safe_load((folder / "config.yaml").read_text()) or {})
                         .get("model") or {}).get("path")
            if not (folder / "final").is_dir():
                raise UserError(Problem(spec, "this run has no final/ model",
                                        "the run is still going, failed, or had checkpoint.save_final: "
                                        "false; `ftl export RUN --to DIR` writes one from a checkpoint"))
            folder = folder / "final"
        elif not folder.exists():
            if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
                raise UserError(Problem(spec, "no such model folder, run folder or builtin model",
                                        "pass an HF folder, a run folder (runs/<name>-<time>) "
                                        "or builtin:<name>"))
            folder = None  # a hub id
    try:
        if folder is None:
            tok = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
        elif (folder / "adapter_config.json").exists():
            import warnings

            from peft import PeftModel

            # peft reads a deprecated transformers attribute while loading: noise, not news.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

            adapter = json.loads((folder / "adapter_config.json").read_text())
            base = _resolve_base(base_hint or adapter.get("base_model_name_or_path") or "")
            has_tok = any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
            tok = AutoTokenizer.from_pretrained(folder if has_tok else base)
            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder)
        elif (folder / "config.json").exists():
            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        else:
            raise UserError(Problem(spec, "not a model folder (no config.json or adapter_config.json) "
                                    "and not a run folder (no config.yaml)"))
    except UserError:
        raise
    except Exception as exc:  # transformers/peft raise many types; all mean "cannot load"
        raise UserError(Problem(spec, f"cannot load the model: {exc}".splitlines()[0])) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return LoadedModel(spec, model, tok)


# ---------------------------------------------------------------- scoring


def generate_answers(lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int,
                     batch_size: int) -> list[str]:
    """Greedy answers, left-padded batches (as the training-time exact match does)."""
    import torch

    from launcher.data.batching import pad_rows

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    chat = bool(getattr(tok, "chat_template", None))
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start:start + batch_size]
            ids, mask = pad_rows(rows, pad, left=True)
            longest = ids.shape[1]
            out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id)
            for gen in out[:, longest:]:
                answers.append(clean_answer(tok.decode(gen, skip_special_tokens=True), chat))
    return answers


def evaluate_fewshot(models: list[str], data: str, shots: list[int], *, num: int = 100,
                     support: str | None = None, max_new_tokens: int = 32, seed: int = 0,
                     batch_size: int = 16) -> list[dict[str, Any]]:
    """One row per (model, K): ``{model, data, shots, n, correct, exact_match, prompt}``.

    Data and supports are loaded (and checked) before any model, so a bad path fails fast."""
    queries = load_examples(data, "--data", split="eval", num=num)
    if not queries:
        raise UserError(Problem(f"--data {data}", "no rows to evaluate"))
    if support:
        pool = load_examples(support, "--support", split="train", num=None)
    elif data.startswith(BUILTIN_PREFIX):
        pool = load_examples(data, "--data", split="train", num=BUILTIN_SUPPORT_ROWS)
    else:
        pool = load_examples(data, "--data", split="train", num=None)
    drawn = {k: draw_supports(queries, pool, k, seed) for k in shots}
    rows = []
    for spec in models:
        lm = load_model(spec)
        chat = bool(getattr(lm.tokenizer, "chat_template", None))
        for k in shots:
            prompts = [prompt_ids(lm.tokenizer, q, s) for q, s in zip(queries, drawn[k])]
            answers = generate_answers(lm, prompts, max_new_tokens, batch_size)
            correct = sum(a == q.answer.strip() for a, q in zip(answers, queries))
            rows.append({"model": spec, "data": data, "shots": k, "n": len(queries), "correct": correct,
                         "exact_match": correct / len(queries), "prompt": "chat" if chat else "text"})
    return rows


def render_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"few-shot exact match on {rows[0]['data']}" if rows else "few-shot exact match")
    for col, justify in (("model", "left"), ("K", "right"), ("N", "right"), ("exact match", "right"),
                         ("prompt", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["model"], str(r["shots"]), str(r["n"]),
                      f"{r['exact_match']:.3f} ({r['correct']}/{r['n']})", r["prompt"])
    Console().print(table)
