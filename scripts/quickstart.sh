#!/usr/bin/env bash
# Install ftl into .venv (if needed) and run the quickstart: a tiny Llama learns to reverse
# letters with 2 Ray workers on this machine. Extra arguments go to `ftl run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/ftl run configs/quickstart.yaml "$@"
