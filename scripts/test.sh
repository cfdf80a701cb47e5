#!/usr/bin/env bash
# Install batchwire with its test extras into ./.venv and run the whole test suite.
# This is the README's test command; CI (.ci/run) calls it on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is pinned to the CPU build for machines without a GPU (TORCH_SPEC overrides it).
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" -e ".[test]"
bash scripts/install-system-deps.sh
# Triton's perf_analyzer in .venv-perf: the tests that drive the server with it.
bash scripts/install-perf-analyzer.sh
export BATCHWIRE_PERF_ANALYZER="${BATCHWIRE_PERF_ANALYZER:-$PWD/.venv-perf/perf_analyzer}"
ruff check .
ruff format --check .
python -m pytest "$@"
