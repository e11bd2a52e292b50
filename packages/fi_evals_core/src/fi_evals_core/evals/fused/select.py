"""Which checkpoints the fused path takes, and when it is chosen. No torch or triton import here:
`fi_evals_core.evals.scorer` may call these on every load."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..config import acceleration

# model_type -> (attribute of the base model on the *ForSequenceClassification, family)
ABSOLUTE_FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}
RELATIVE_FAMILIES = {"deberta-v2": "deberta-v2"}
_BASE_ATTR = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "deberta-v2": "deberta"}


def family(model: Any) -> str | None:
    """'bert', 'roberta' or 'deberta-v2' when `model` is a sequence classifier the fused encoder
    reproduces exactly; None otherwise (the reason is `unsupported_reason(model)`)."""
    if unsupported_reason(model):
        return None
    return {**ABSOLUTE_FAMILIES, **RELATIVE_FAMILIES}[model.config.model_type]


def unsupported_reason(model: Any) -> str | None:
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in _BASE_ATTR:
        return f"model_type {kind!r} is not one of {sorted(_BASE_ATTR)}"
    if not hasattr(model, _BASE_ATTR[kind]) or not hasattr(model, "classifier"):
        return f"{type(model).__name__} is not a {kind} sequence classifier"
    if getattr(config, "hidden_act", None) != "gelu":
        return f"hidden_act {config.hidden_act!r} (the fused FFN implements the exact erf 'gelu')"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder / cross-attention configurations are not encoders"
    if kind in ABSOLUTE_FAMILIES:
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            return f"position_embedding_type {config.position_embedding_type!r}"
    else:
        if getattr(config, "conv_kernel_size", 0) > 0:
            return "DeBERTa-v2 with a convolution layer (conv_kernel_size > 0)"
        if getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
            return "DeBERTa-v2 with an embedding projection (embedding_size != hidden_size)"
        if getattr(config, "pooler_hidden_size", config.hidden_size) != config.hidden_size:
            return "DeBERTa-v2 with pooler_hidden_size != hidden_size"
    if config.hidden_size % config.num_attention_heads:
        return "hidden_size is not a multiple of num_attention_heads"
    if getattr(model, "training", False):
        return "the model is in training mode (the fused path has no dropout): call model.eval()"
    return None


def fused_forward_available(model: Any) -> bool:
    """True when `FusedEncoder(model)` can run this checkpoint (whatever the device)."""
    return unsupported_reason(model) is None and importlib.util.find_spec("triton") is not None


def use_fused(model: Any, device: Any) -> bool:
    """Whether the scorer should run `model` through the fused path on `device`.

    `FI_EVALS_ACCELERATION=off` forces the PyTorch path; unset (or `auto`), the fused path is chosen
    on CUDA for supported checkpoints; `on` also asks for it on the CPU, which is honoured only under
    Triton's interpreter (`TRITON_INTERPRET=1`, for tests: interpreted kernels are slow). On the CPU
    without `TRITON_INTERPRET` the fused path is never chosen.
    """
    setting = acceleration()
    if setting == "off":
        return False
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind == "cuda":
        return fused_forward_available(model)
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if kind == "cpu" and setting == "on" and interpreted:
        return fused_forward_available(model)
    return False
