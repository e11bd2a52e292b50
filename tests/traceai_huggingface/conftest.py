"""Fixtures for the traceai-huggingface tests only (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def t5(model_dirs):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(model_dirs["t5"]), AutoTokenizer.from_pretrained(model_dirs["t5"])
