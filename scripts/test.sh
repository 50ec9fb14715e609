#!/usr/bin/env bash
# Install ftl into .venv (if needed), lint, and run the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export FTL_HOME="${FTL_HOME:-$PWD/.cache/ftl}"          # builtin models, compiled ops
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$FTL_HOME/torch_extensions}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_AUTH_MODE=disabled
.venv/bin/ruff check launcher strategies cluster tests scripts
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
