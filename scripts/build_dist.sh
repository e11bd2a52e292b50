#!/usr/bin/env bash
# Build the wheel and sdist of each package into OUTDIR (default dist/): `make dist`, and the
# wheel-install test (tests/integration/test_wheel_install.py) builds them the same way.
#   scripts/build_dist.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-dist}")"
python="${PYTHON:-.venv/bin/python}"
mkdir -p "$out"
for package in fi_evals_core traceai_huggingface traceai_vllm; do
  "$python" -m build --sdist --wheel --outdir "$out" "packages/$package" >/dev/null
done
ls "$out"
