"""The fused GPU path of the NLI scorer: packed variable-length encoders and one fused head.

- `FusedEncoder(model)(input_ids, cu_seqlens=None, token_type_ids=None) -> logits [n_seqs, n_labels]`
  runs a BERT / RoBERTa / XLM-R sequence classifier (the checkpoint's own weights, read from the
  loaded Hugging Face model) over sequences concatenated without padding, and a DeBERTa-v2/v3 one
  with everything but its disentangled attention core packed (see `encoder.py`).
- `nli_head(logits, ...)`: softmax -> support / contradiction -> per-claim maximum over chunks ->
  per-response aggregate, one Triton kernel (`nli_head_reference` is the same in PyTorch).
- `use_fused(model, device)`: the scorer's choice (CUDA and a supported family; `FI_EVALS_FUSED=0`
  forces the PyTorch path). `fused_forward_available(model)`: the family check alone.

Importing this package imports neither torch nor triton; `FusedEncoder` and `nli_head` import
the kernels on first use. Triton's interpreter (`TRITON_INTERPRET=1`) runs it all on the CPU.
"""

from __future__ import annotations

from typing import Any

from .select import family, fused_forward_available, unsupported_reason, use_fused

__all__ = ["FusedEncoder", "HeadOutput", "family", "fused_forward_available", "nli_head",
           "nli_head_reference", "pack", "unsupported_reason", "use_fused"]


def __getattr__(name: str) -> Any:
    if name in ("FusedEncoder", "pack", "Packed"):
        from . import encoder

        return getattr(encoder, name)
    if name in ("nli_head", "nli_head_reference", "HeadOutput"):
        from . import head

        return getattr(head, name)
    raise AttributeError(name)
