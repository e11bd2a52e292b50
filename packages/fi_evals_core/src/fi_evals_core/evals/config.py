"""The evaluators' environment variables, read with the project's one parser (`EnvReader`).

`FI_EVALS_MODEL` names the NLI checkpoint (hub id or local path), `FI_EVALS_DEVICE` where it runs,
`FI_EVALS_DTYPE` its weights' precision and `FI_EVALS_LABELS` the meaning of its outputs when the
checkpoint's own `id2label` does not say, `FI_EVALS_PROFILE` the scoring recipe (profiles.py: auto,
default, minicheck, alignscore). Inline evaluation of live traffic: `FI_EVALS_SAMPLE_RATE`
(0 = off), `FI_EVALS_EVALUATORS`, `FI_EVALS_QUEUE_SIZE`, `FI_EVALS_BATCH_SIZE`, `FI_EVALS_COHORT`.
`FI_EVALS_ACCELERATION` (auto/on/off; the older name `FI_EVALS_FUSED` still works) is the one
switch of the scorer's accelerated paths: the fused encoder on GPUs, the oneDNN linears and the
DeBERTa attention on CPUs. A bad value raises `ConfigError` naming the variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..telemetry.config import ConfigError, EnvReader
from .profiles import PROFILE_NAMES

#: Apache-2.0; 3-way NLI (contradiction / entailment / neutral). Model card: 92.38 % accuracy on the
#: SNLI test set, 90.04 % on MNLI mismatched.
DEFAULT_MODEL = "cross-encoder/nli-deberta-v3-base"
DEVICES = "auto, cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: The evaluators by name (evaluators.EVALUATORS holds their classes under these names).
EVALUATOR_NAMES = ("factual_consistency", "faithfulness", "groundedness", "task_completion")
ACCELERATION_VARIABLE = "FI_EVALS_ACCELERATION"


@dataclass(frozen=True)
class EvalsConfig:
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    labels: tuple[str, ...] | None = None
    profile: str = "auto"
    sample_rate: float = 0.0
    evaluators: tuple[str, ...] = ("groundedness",)
    queue_size: int = 1000
    batch_size: int = 16
    cohort: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "EvalsConfig":
        env = EnvReader(environ)
        raw_labels = env.text("FI_EVALS_LABELS")
        labels = tuple(part.strip() for part in raw_labels.split(",")) if raw_labels else None
        if labels is not None and (len(labels) not in (2, 3) or not all(labels)):
            raise ConfigError(
                "FI_EVALS_LABELS", raw_labels,
                "2 or 3 comma-separated label names in the checkpoint's output order, "
                "e.g. 'unsupported,supported' or 'contradiction,entailment,neutral'",
            )
        return cls(
            model=env.text("FI_EVALS_MODEL", DEFAULT_MODEL),
            device=parse_device(env.text("FI_EVALS_DEVICE", "auto"), "FI_EVALS_DEVICE"),
            dtype=env.choice("FI_EVALS_DTYPE", DTYPES, "auto"),
            labels=labels,
            profile=env.choice("FI_EVALS_PROFILE", PROFILE_NAMES, "auto"),
            sample_rate=env.number("FI_EVALS_SAMPLE_RATE", 0.0, low=0.0, high=1.0),
            evaluators=env.names("FI_EVALS_EVALUATORS", EVALUATOR_NAMES, ("groundedness",)),
            queue_size=env.integer("FI_EVALS_QUEUE_SIZE", 1000, low=1),
            batch_size=env.integer("FI_EVALS_BATCH_SIZE", 16, low=1),
            cohort=env.text("FI_EVALS_COHORT"),
        )


def acceleration(environ: Mapping[str, str] | None = None) -> str:
    """`FI_EVALS_ACCELERATION` (or the older `FI_EVALS_FUSED`): "auto", "on" or "off"."""
    return EnvReader(environ).switch(ACCELERATION_VARIABLE, old_name="FI_EVALS_FUSED")


def parse_device(value: str, name: str = "device") -> str:
    """Normalise a device string; `auto` stays `auto` (resolved when the model loads)."""
    device = (value or "auto").strip().lower()
    if device in ("auto", "cpu", "cuda"):
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise ConfigError(name, value, DEVICES)
