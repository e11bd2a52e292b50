"""Fixtures of the vLLM tests only."""

from __future__ import annotations

import pytest

LORA_NAME = "adapter-a"  # the adapter's name, offline (LoRARequest) and served (--lora-modules)


@pytest.fixture(scope="session")
def llama_lora(model_dirs, tmp_path_factory):
    """A random rank-8 LoRA adapter (q_proj, v_proj) of the tiny Llama, in PEFT's format."""
    from fi_evals_core.testing.tiny_models import build_llama_lora

    return build_llama_lora(tmp_path_factory.mktemp("lora") / LORA_NAME, model_dirs["llama"])
