#!/usr/bin/env bash
# Triton's perf_analyzer, in its own venv (.venv-perf), for the tests and benchmarks that
# drive batchwire with it. Two sources, the first that runs wins:
#   1. the `perf-analyzer` package, where tritonclient ships perf_analyzer since 2.5x. Its
#      wheels need glibc >= 2.38 (manylinux_2_38), so on older systems (Debian 12 has 2.36)
#      pip finds only a placeholder release without a binary;
#   2. the tritonclient 2.51.0 wheel, the last that carries the binary for older glibc.
# Both load libcudart.so.12 even without a GPU (pip package nvidia-cuda-runtime-cu12), and
# 2. also needs libb64 (Debian package libb64-0d, which install-system-deps.sh installs).
# What this installs is a wrapper script that puts the CUDA runtime on the library path.
# Its own venv, because tritonclient's pins would clash with the test venv's. Never fails:
# it prints why perf_analyzer is unavailable instead, and the tests that need it skip.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-perf
WRAPPER=$VENV/perf_analyzer
if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  exit 0
fi
{ [ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV; } &&
  $VENV/bin/python -m pip install -q "nvidia-cuda-runtime-cu12" ||
  { echo "install-perf-analyzer: could not make $VENV" >&2; exit 0; }
runtime=$($VENV/bin/python -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))') ||
  { echo "install-perf-analyzer: nvidia-cuda-runtime-cu12 has no lib folder" >&2; exit 0; }

write_wrapper() {
  cat >"$WRAPPER" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$runtime\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$PWD/$1" "\$@"
WRAP
  chmod +x "$WRAPPER"
  "$WRAPPER" --version >/dev/null 2>&1
}

# 1. The perf-analyzer package; its binary lives inside the package, not in bin/.
if $VENV/bin/python -m pip install -q perf-analyzer 2>/dev/null; then
  binary=$($VENV/bin/python -c 'import os, perf_analyzer; p = os.path.join(perf_analyzer.__path__[0], "bin", "perf_analyzer"); print(p if os.path.isfile(p) else "")' 2>/dev/null)
  if [ -n "$binary" ] && write_wrapper "${binary#"$PWD"/}"; then
    echo "install-perf-analyzer: using the perf-analyzer package" >&2
    exit 0
  fi
  echo "install-perf-analyzer: the perf-analyzer package has no binary that runs here; using tritonclient 2.51.0's" >&2
  $VENV/bin/python -m pip uninstall -q -y perf-analyzer
fi
# 2. tritonclient 2.51.0.
$VENV/bin/python -m pip install -q "tritonclient==2.51.0" ||
  { echo "install-perf-analyzer: could not install tritonclient 2.51.0" >&2; exit 0; }
write_wrapper "$VENV/bin/perf_analyzer" ||
  echo "install-perf-analyzer: $WRAPPER does not run: $("$WRAPPER" --version 2>&1 | tail -1)" >&2
exit 0
