#!/usr/bin/env bash
# Install batchwire with its test extras and run the whole test suite, in both protobuf
# worlds. This is the README's test command; CI (.ci/run) calls it on a clean clone.
#
# Venvs (each reused when present):
#   .venv              the server with every test extra: protobuf 6 and the newest
#                      tritonclient (which pins protobuf < 7). The whole suite runs here.
#   .venv-client       `pip install batchwire` alone: the torch-free client.
#   .venv-tritonclient the newest tritonclient[grpc] alone, as a client service has it.
#   .venv-perf         Triton's perf_analyzer (scripts/install-perf-analyzer.sh).
#   .venv-pb7          the server on protobuf 7 (grpcio >= 1.82's world): the client-facing
#                      tests, then tritonclient installed after batchwire, as a user would.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch is pinned to the CPU build for machines without a GPU (TORCH_SPEC overrides it).
TORCH=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

venv() { [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"; }
leg() { echo "test.sh: $1 took $((SECONDS - leg_start)) s"; leg_start=$SECONDS; }
leg_start=$SECONDS

venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH" -e ".[test]"
# The newest tritonclient, not just one that satisfies the extra's lower bound.
.venv/bin/python -m pip install -q --upgrade "tritonclient[grpc]"
.venv/bin/python -m pip check
venv .venv-client
.venv-client/bin/python -m pip install -q -e .
.venv-client/bin/python -m pip check
venv .venv-tritonclient
.venv-tritonclient/bin/python -m pip install -q --upgrade "tritonclient[grpc]"
bash scripts/install-system-deps.sh
bash scripts/install-perf-analyzer.sh
leg "installing (.venv, .venv-client, .venv-tritonclient, .venv-perf)"

# The venv's tools (ruff, grpcurl, batchwire) first on PATH, as an activated venv has them.
export PATH="$PWD/.venv/bin:$PATH"
export BATCHWIRE_PERF_ANALYZER="${BATCHWIRE_PERF_ANALYZER:-$PWD/.venv-perf/perf_analyzer}"
export BATCHWIRE_CLIENT_PYTHON="$PWD/.venv-client/bin/python"
export BATCHWIRE_TRITONCLIENT_PYTHON="$PWD/.venv-tritonclient/bin/python"
# The short protobuf 7 leg first, so that the whole suite's summary closes the output.
bash scripts/test-protobuf7.sh
leg "the protobuf 7 leg"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# mypy follows no import hook, so it cannot see the editable install's folder mapping
# (pyproject's package-dir): it checks batchwire through links laid out as installed.
rm -rf build/mypy-tree && mkdir -p build/mypy-tree/batchwire
ln -s "$PWD"/batchwire/*.py "$PWD"/{core,protos,server,batching,clients,examples,loadtest,bench,telemetry} build/mypy-tree/batchwire/
.venv/bin/mypy
# import-linter, likewise, reads the package from that tree (the layering contracts).
(cd build/mypy-tree && ../../.venv/bin/lint-imports ../../pyproject.toml --no-cache)
.venv/bin/python -m pytest "$@"
leg "lint and the whole suite on protobuf $(.venv/bin/python -c 'import google.protobuf as p; print(p.__version__)')"
