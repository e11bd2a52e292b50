"""The evaluators' environment variables, parsed once, in one place.

`FI_EVALS_MODEL` names the NLI checkpoint (hub id or local path), `FI_EVALS_DEVICE` where it runs,
`FI_EVALS_DTYPE` its weights' precision and `FI_EVALS_LABELS` the meaning of its outputs when the
checkpoint's own `id2label` does not say. Inline evaluation of live traffic: `FI_EVALS_SAMPLE_RATE`
(0 = off), `FI_EVALS_EVALUATORS`, `FI_EVALS_QUEUE_SIZE`, `FI_EVALS_BATCH_SIZE`, `FI_EVALS_COHORT`.
A bad value raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..telemetry.config import ConfigError

#: Apache-2.0; 3-way NLI (contradiction / entailment / neutral). Model card: 92.38 % accuracy on the
#: SNLI test set, 90.04 % on MNLI mismatched.
DEFAULT_MODEL = "cross-encoder/nli-deberta-v3-base"
DEVICES = "auto, cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EvalsConfig:
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    labels: tuple[str, ...] | None = None
    sample_rate: float = 0.0
    evaluators: tuple[str, ...] = ("groundedness",)
    queue_size: int = 1000
    batch_size: int = 16
    cohort: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "EvalsConfig":
        env = os.environ if environ is None else environ
        model = env.get("FI_EVALS_MODEL", "").strip() or DEFAULT_MODEL
        device = parse_device(env.get("FI_EVALS_DEVICE", "auto"), "FI_EVALS_DEVICE")
        dtype = env.get("FI_EVALS_DTYPE", "auto").strip().lower() or "auto"
        if dtype not in DTYPES:
            raise ConfigError("FI_EVALS_DTYPE", dtype, "one of " + ", ".join(DTYPES))
        raw_labels = env.get("FI_EVALS_LABELS", "").strip()
        labels = tuple(part.strip() for part in raw_labels.split(",")) if raw_labels else None
        if labels is not None and (len(labels) not in (2, 3) or not all(labels)):
            raise ConfigError(
                "FI_EVALS_LABELS", raw_labels,
                "2 or 3 comma-separated label names in the checkpoint's output order, "
                "e.g. 'unsupported,supported' or 'contradiction,entailment,neutral'",
            )
        rate_text = env.get("FI_EVALS_SAMPLE_RATE", "0").strip() or "0"
        try:
            sample_rate = float(rate_text)
        except ValueError:
            sample_rate = -1.0
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError("FI_EVALS_SAMPLE_RATE", rate_text, "a number from 0 (off) to 1 (every request)")
        names = tuple(n.strip() for n in env.get("FI_EVALS_EVALUATORS", "groundedness").split(",") if n.strip())
        from .evaluators import EVALUATORS  # light: no torch

        unknown = [n for n in names if n not in EVALUATORS]
        if not names or unknown:
            raise ConfigError("FI_EVALS_EVALUATORS", env.get("FI_EVALS_EVALUATORS", ""),
                              "comma-separated evaluator names from " + ", ".join(EVALUATORS))
        return cls(model=model, device=device, dtype=dtype, labels=labels, sample_rate=sample_rate,
                   evaluators=names, queue_size=_positive_int(env, "FI_EVALS_QUEUE_SIZE", 1000),
                   batch_size=_positive_int(env, "FI_EVALS_BATCH_SIZE", 16),
                   cohort=env.get("FI_EVALS_COHORT", "").strip() or None)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(name, text, "a whole number of at least 1")
    return int(text)


def parse_device(value: str, name: str = "device") -> str:
    """Normalise a device string; `auto` stays `auto` (resolved when the model loads)."""
    device = (value or "auto").strip().lower()
    if device in ("auto", "cpu", "cuda"):
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise ConfigError(name, value, DEVICES)
