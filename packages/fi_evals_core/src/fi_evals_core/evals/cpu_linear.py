"""Linear layers through oneDNN with pre-packed weights, for CPU inference: same weights, same maths.

Why: on the CPU, an NLI encoder spends most of its time in its linear layers, and `nn.Linear`
re-lays out the weight for the GEMM kernel on every call (and in fp32 this torch build's default
GEMM runs at less than half of oneDNN's rate on these machines). Packing each weight once into
oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the op torch.compile's CPU
"freezing" uses) and calling `torch.ops.mkldnn._linear_pointwise` with it is faster in bf16 and
about twice as fast in fp32 (benchmarks/RESULTS.md), with bitwise the same outputs in bf16. The
FFN's exact-erf GELU runs as the GEMM's post-op (fp32, before rounding).

`pack_linears(model)` installs it on every `nn.Linear` of a model on the CPU (in place); the packed
copy is checked against the weight's storage and version on every call and repacked when the
weights change (fine-tuning, `load_state_dict`). Training, gradients, other devices or dtypes, and
a torch without the op run the original `forward`. `FI_EVALS_ACCELERATION=off` turns it off, like every
accelerated path. The packed copy doubles the linear weights' memory (a base model: ~170 MB in bf16).
"""

from __future__ import annotations

import logging
import types
from typing import Any

from .config import acceleration

logger = logging.getLogger(__name__)


def available(dtype: Any = None) -> bool:
    """Whether this torch, on this CPU, has oneDNN's packed linear for `dtype` (float32 when None;
    checked once per dtype, on a small input). bfloat16 needs CPU support oneDNN checks at run time
    (AVX-512 BW/VL/DQ or AVX-NE-CONVERT): without it, bf16 layers keep the plain forward."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if dtype not in _AVAILABLE:
        _AVAILABLE[dtype] = _probe(dtype)
    return _AVAILABLE[dtype]


_AVAILABLE: dict[Any, bool] = {}


def _probe(dtype: Any) -> bool:
    try:
        import torch

        if not torch.backends.mkldnn.is_available():
            return False
        x = torch.randn(5, 24).to(dtype)
        w = torch.randn(8, 24).to(dtype)
        b = torch.randn(8).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
        return bool(torch.allclose(y.float(), torch.nn.functional.linear(x, w, b).float(), **tolerance))
    except Exception as exc:  # an older or different torch build, or a CPU without the instructions
        logger.debug("oneDNN packed linear unavailable for %s: %r", dtype, exc)
        return False


def pack_linears(model: Any) -> Any:
    """Route every `nn.Linear` of `model` (on the CPU) through packed oneDNN weights, fusing an exact
    GELU that directly follows one (`*Intermediate` blocks of BERT, RoBERTa, DeBERTa); returns `model`.

    A no-op when `FI_EVALS_ACCELERATION=off`, when the model is not on the CPU, or when the op is missing.
    Sets `model._fi_packed_linears` to the number of layers installed.
    """
    import torch

    if acceleration() == "off" or not _on_cpu(model) or not available():
        return model
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and getattr(module, "_fi_linear_forward", None) is None:
            module._fi_linear_forward = module.forward
            module._fi_packed = None
            module.forward = types.MethodType(_packed_forward, module)
            count += 1
        elif _gelu_after_dense(module) and getattr(module, "_fi_block_forward", None) is None:
            module._fi_block_forward = module.forward
            module.forward = types.MethodType(_dense_gelu_forward, module)
    model._fi_packed_linears = count
    return model


def unpack_linears(model: Any) -> Any:
    """Undo `pack_linears` (the packed copies are freed)."""
    for module in model.modules():
        for saved in ("_fi_linear_forward", "_fi_block_forward"):
            original = getattr(module, saved, None)
            if original is not None:
                module.forward = original
                delattr(module, saved)
        if hasattr(module, "_fi_packed"):
            del module._fi_packed
    model._fi_packed_linears = 0
    return model


def _on_cpu(model: Any) -> bool:
    try:
        return next(model.parameters()).device.type == "cpu"
    except (StopIteration, AttributeError):
        return False


def _gelu_after_dense(module: Any) -> bool:
    """A block whose forward is exactly `intermediate_act_fn(dense(x))` with the erf GELU."""
    import torch
    from transformers.activations import GELUActivation

    act = getattr(module, "intermediate_act_fn", None)
    dense = getattr(module, "dense", None)
    if not isinstance(dense, torch.nn.Linear) or type(act) is not GELUActivation:
        return False
    if act.act is not torch.nn.functional.gelu:  # the python erf variant: same maths, but keep it exact
        return False
    return type(module).__name__.endswith("Intermediate") and set(dict(module.named_children())) <= {
        "dense", "intermediate_act_fn"}


def _usable(module: Any, x: Any) -> bool:
    import torch

    weight = module.weight
    return (not torch.is_grad_enabled() and not module.training and x.device.type == "cpu"
            and x.dtype == weight.dtype and weight.dtype in (torch.float32, torch.bfloat16)
            and x.dim() >= 2 and available(weight.dtype))


def _packed_weight(module: Any) -> Any:
    """The packed copy of `module.weight`, repacked when the weight's storage or version changed."""
    import torch

    weight = module.weight
    stamp = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    cached = module._fi_packed
    if cached is None or cached[0] != stamp:
        cached = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        module._fi_packed = cached
    return cached[1]


def _packed_forward(self: Any, x: Any) -> Any:
    if not _usable(self, x):
        return self._fi_linear_forward(x)
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, _packed_weight(self), self.bias, "none", [], "")


def _dense_gelu_forward(self: Any, hidden_states: Any) -> Any:
    dense = self.dense
    if getattr(dense, "_fi_linear_forward", None) is None or not _usable(dense, hidden_states):
        return self._fi_block_forward(hidden_states)
    import torch

    return torch.ops.mkldnn._linear_pointwise(hidden_states, _packed_weight(dense), dense.bias, "gelu", [], "none")
