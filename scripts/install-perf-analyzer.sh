#!/usr/bin/env bash
# Triton's perf_analyzer, in its own venv (.venv-perf), for the tests and benchmarks that
# drive batchwire with it. It comes from the tritonclient 2.51.0 wheel: later wheels ship
# no binary or need a newer glibc, and its pins would clash with the test venv's. It
# needs libb64 (Debian package libb64-0d, which install-system-deps.sh installs) and
# libcudart.so.12 even without a GPU (pip package nvidia-cuda-runtime-cu12), so what it
# installs is a wrapper script that puts that library on the path. Never fails: prints why perf_analyzer is unavailable instead,
# and the tests that need it skip.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-perf
WRAPPER=$VENV/perf_analyzer
if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  exit 0
fi
{ [ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV; } &&
  $VENV/bin/python -m pip install -q "tritonclient==2.51.0" "nvidia-cuda-runtime-cu12" ||
  { echo "install-perf-analyzer: could not install tritonclient 2.51.0" >&2; exit 0; }
runtime=$($VENV/bin/python -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))') ||
  { echo "install-perf-analyzer: nvidia-cuda-runtime-cu12 has no lib folder" >&2; exit 0; }
cat >"$WRAPPER" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$runtime\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$PWD/$VENV/bin/perf_analyzer" "\$@"
WRAP
chmod +x "$WRAPPER"
"$WRAPPER" --version >/dev/null 2>&1 ||
  echo "install-perf-analyzer: $WRAPPER does not run: $("$WRAPPER" --version 2>&1 | tail -1)" >&2
exit 0
