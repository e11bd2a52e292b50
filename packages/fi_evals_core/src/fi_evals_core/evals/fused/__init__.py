"""The fused GPU path of the NLI scorer: packed variable-length encoders.

- `FusedEncoder(model)(input_ids, cu_seqlens=None, token_type_ids=None) -> logits [n_seqs, n_labels]`
  runs a BERT / RoBERTa / XLM-R sequence classifier (the checkpoint's own weights, read from the
  loaded Hugging Face model) over sequences concatenated without padding, and a DeBERTa-v2/v3 one
  with everything but its disentangled attention core packed (see `encoder.py`).
- `use_fused(model, device)`: the scorer's choice (CUDA and a supported family; `FI_EVALS_ACCELERATION=off`
  forces the PyTorch path). `fused_forward_available(model)`: the family check alone.

Importing this package imports neither torch nor triton; `FusedEncoder` imports the kernels on
first use. Triton's interpreter (`TRITON_INTERPRET=1`) runs it all on the CPU.
"""

from __future__ import annotations

from typing import Any

from .select import family, fused_forward_available, unsupported_reason, use_fused

__all__ = ["FusedEncoder", "family", "fused_forward_available", "pack", "unsupported_reason", "use_fused"]


def __getattr__(name: str) -> Any:
    if name in ("FusedEncoder", "pack", "Packed"):
        from . import encoder

        return getattr(encoder, name)
    raise AttributeError(name)
