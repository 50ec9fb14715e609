#!/usr/bin/env bash
# Install ftl into .venv (if needed), lint, and run the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh --with-vllm   # tests exercise vLLM rollout workers
# Real Slurm daemons for the slurm target's tests (Debian packages; needs root and apt).
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends slurmctld slurmd slurm-client munge) >/dev/null \
      || echo "test.sh: could not install Slurm; its tests will be skipped" >&2
  fi
fi
# Headless Chromium renders the HTML run report in its browser test (Debian package; root and apt).
if ! command -v chromium >/dev/null && ! command -v chromium-headless-shell >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium) >/dev/null \
      || echo "test.sh: could not install chromium; the report's browser test will be skipped" >&2
  fi
fi
export FTL_HOME="${FTL_HOME:-$PWD/.cache/ftl}"          # builtin models, compiled ops
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$FTL_HOME/torch_extensions}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_AUTH_MODE=disabled
.venv/bin/ruff check launcher strategies cluster tests scripts
.venv/bin/lint-imports --no-cache   # import contracts: [tool.importlinter] in pyproject.toml
# Two pytest workers, one test file each at a time (module fixtures such as a Ray session or a
# Slurm cluster stay in one process): most tests wait on Ray, Slurm or a child process more than
# they compute, so two at once use this 2-core machine's CPUs. FTL_TEST_WORKERS=0 runs serially.
workers=${FTL_TEST_WORKERS:-2}
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "${parallel[@]}" "$@"
