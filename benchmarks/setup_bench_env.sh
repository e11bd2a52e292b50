#!/usr/bin/env bash
# Create (idempotently) the benchmark virtualenv /work/main/.venv-bench.
#
# It holds the same stack as the project's .venv (torch CPU, transformers, OpenTelemetry SDK, the project
# packages installed editable) plus the peer instrumentations the overhead benchmark compares against:
#   - opentelemetry-instrumentation-transformers  (OpenLLMetry / traceloop)
#   - openlit
# They live in their own venv because they pull in dependencies the project's venv must not carry.
#
# Usage:  bash benchmarks/setup_bench_env.sh            # create or top up
#         FORCE=1 bash benchmarks/setup_bench_env.sh    # recreate from scratch
# Environment knobs: PYTHON (interpreter to base the venv on), VENV (target directory),
#                    TORCH_VERSION / TRANSFORMERS_VERSION / OTEL_SDK_VERSION / OTEL_CONTRIB_VERSION
#                    (pins; empty = let pip choose).
# Only pip is used (no uv). Re-running is cheap: a stamp file records the last successful install and the
# script exits early when the requirements have not changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-bench}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then
        # same interpreter as the project's venv (the venv's base python, not the venv itself)
        PYTHON="$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
    else
        PYTHON="$(command -v python3)"
    fi
fi
TORCH_VERSION="${TORCH_VERSION-2.13.0}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION-5.24.0}"
# openlit depends on every opentelemetry-instrumentation-{aiohttp-client,django,flask,...} package; the newest
# of those on PyPI (0.66b1) pins opentelemetry-semantic-conventions==0.66b1, which only opentelemetry-sdk
# 1.45.1 accepts (1.45.2 wants 0.66b2). Without these pins pip backtracks through old openlit releases for
# a very long time. Bump all three together when the contrib packages catch up.
OTEL_SDK_VERSION="${OTEL_SDK_VERSION-1.45.1}"
OTEL_CONTRIB_VERSION="${OTEL_CONTRIB_VERSION-0.66b1}"

pin() { if [[ -n "$2" ]]; then echo "$1==$2"; else echo "$1"; fi; }
REQS=(
    "$(pin torch "$TORCH_VERSION")"
    "$(pin transformers "$TRANSFORMERS_VERSION")"
    "$(pin opentelemetry-sdk "$OTEL_SDK_VERSION")"
    "$(pin opentelemetry-semantic-conventions "$OTEL_CONTRIB_VERSION")"
    "$(pin opentelemetry-instrumentation "$OTEL_CONTRIB_VERSION")"
    opentelemetry-instrumentation-transformers
    openlit
)
EDITABLE=(-e "$ROOT/packages/fi_evals_core" -e "$ROOT/packages/traceai_huggingface")
STAMP="$VENV/.stamp-bench"
WANT="$("$PYTHON" -c 'import sys; print(sys.version)') | ${REQS[*]} | ${EDITABLE[*]}"

if [[ "${FORCE:-0}" == 1 && -d "$VENV" ]]; then
    rm -rf "$VENV"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "[setup_bench_env] $VENV is up to date"
    exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup_bench_env] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip setuptools wheel
# torch first, alone, so that the CPU wheel is chosen before anything else can pull in a CUDA build.
"${PIP[@]}" install "${REQS[0]}"
# Everything else in one resolver run. The torch pin is repeated so that no peer can move it.
"${PIP[@]}" install "${REQS[@]}" "${EDITABLE[@]}"
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version
for name in ("torch", "transformers", "opentelemetry-sdk", "opentelemetry-api",
             "opentelemetry-instrumentation", "opentelemetry-instrumentation-transformers",
             "openlit", "traceai-huggingface", "fi-evals-core"):
    try:
        print(f"  {name:45s} {version(name)}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {name:45s} MISSING ({exc})")
EOF
echo "$WANT" > "$STAMP"
echo "[setup_bench_env] ready: $VENV"
