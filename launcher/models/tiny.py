"""Builtin tiny models: a real HF folder (config, safetensors, tokenizer) made offline.

No hub download is possible on many machines (CI, air-gapped clusters), yet the whole
loading path must be exercised. ``builtin:<name>`` creates a randomly initialised Llama with a
byte-level BPE tokenizer trained on a fixed corpus, saves it with ``save_pretrained`` and is
then loaded through the very same ``from_pretrained`` code as a real checkpoint. Creation is
deterministic, so every rank (or node) that materializes it gets identical weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.core.paths import ftl_home
from launcher.core.registry import BUILTIN_PREFIX, Registry

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS_WORDS = (
    "the of and to in is was for on that with as by at from it this be are an or which "
    "his her their they we you he she one all were when there can more not been has have had "
    "model train learn data token text reverse copy sort answer question user assistant system "
    "add sum digit number letter word string first last what how why who where please "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z "
    "0 1 2 3 4 5 6 7 8 9 + - * / = ? ! . , : ; ( ) [ ] { } ' \" "
)


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 384
    max_position_embeddings: int = 1024
    seed: int = 0


TINY_MODELS: Registry[TinySpec] = Registry("builtin model")
TINY_MODELS.register("tiny-llama")(TinySpec(128, 256, 2, 4, 2))
TINY_MODELS.register("tiny-llama-256")(TinySpec(256, 512, 4, 8, 4))
# ~94M parameters (375 MB fp32): big enough that holding it whole shows in memory figures.
TINY_MODELS.register("llama-94m")(TinySpec(1024, 2816, 8, 16, 8))

_FORMAT_VERSION = 1


def is_builtin(path: str) -> bool:
    return path.startswith(BUILTIN_PREFIX)


def builtin_dir(name: str) -> Path:
    spec = TINY_MODELS.get(name, "model.path")
    digest = hashlib.sha256(
        json.dumps({"v": _FORMAT_VERSION, **asdict(spec)}, sort_keys=True).encode()
    ).hexdigest()[:10]
    return ftl_home() / "models" / f"{name}-{digest}"


def resolve_model_path(path: str) -> str:
    """Turn ``builtin:<name>`` into a materialized folder; other paths pass through."""
    if not is_builtin(path):
        return path
    name = path[len(BUILTIN_PREFIX):]
    from launcher.models.packaged import PACKAGED

    if name in PACKAGED:
        return PACKAGED.get(name, "model.path").path()
    folder = builtin_dir(name)
    if not (folder / "config.json").exists():
        _materialize(name, folder)
    return str(folder)


def build_tokenizer(vocab_size: int):
    """Byte-level BPE trained on a fixed corpus, with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    # Digits stay single tokens so arithmetic-style tasks see one token per digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = _CORPUS_WORDS.split()
    corpus = [_CORPUS_WORDS] * 8 + [" ".join(words[i:] + words[:i]) for i in range(50)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def save_random_model(config: Any, tokenizer: Any, folder: Path, seed: int = 0) -> None:
    """Initialise ``config``'s causal LM from ``seed`` and save it with ``tokenizer`` into
    ``folder`` atomically (temp folder + rename). Deterministic, so when ranks or nodes race,
    the loser's identical folder is simply dropped."""
    import torch
    from transformers import AutoModelForCausalLM

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _materialize(name: str, folder: Path) -> None:
    from transformers import LlamaConfig

    spec = TINY_MODELS.get(name, "model.path")
    tokenizer = build_tokenizer(spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    save_random_model(config, tokenizer, folder, spec.seed)
