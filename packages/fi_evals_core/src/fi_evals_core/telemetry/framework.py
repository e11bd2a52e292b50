"""Framework attributes of a PyTorch model: framework, versions, dtype, device, quantization.

Computed once per (model, device) by the instrumentors and reused for every request.
"""

from __future__ import annotations

from typing import Any

from . import attributes as A


def torch_framework_attributes(
    *,
    engine: str,
    engine_version: str | None,
    dtype: Any = None,
    device: Any = None,
    quantization: str | None = None,
    architecture: str | None = None,
) -> dict[str, Any]:
    import torch

    attrs: dict[str, Any] = {
        A.MODEL_FRAMEWORK: "pytorch",
        # a plain str: torch's TorchVersion would make whoever unpickles it import torch
        A.MODEL_FRAMEWORK_VERSION: str(torch.__version__),
        A.MODEL_ENGINE: engine,
    }
    if engine_version:
        attrs[A.MODEL_ENGINE_VERSION] = engine_version
    if dtype is not None:
        attrs[A.MODEL_DTYPE] = str(dtype).removeprefix("torch.")
    if device is not None:
        attrs[A.MODEL_DEVICE] = str(device)
    if quantization:
        attrs[A.MODEL_QUANTIZATION] = quantization
    if architecture:
        attrs[A.MODEL_ARCHITECTURE] = architecture
    return attrs
