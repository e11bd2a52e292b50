"""A faster CPU attention for DeBERTa-v2/v3 sequence classifiers: same weights, same maths.

transformers' eager `DisentangledSelfAttention` spends most of a bf16 forward pass on the CPU outside
the matrix products: per layer it re-projects the relative-position embeddings and copies them once
per sequence of the batch (`.repeat`), gathers two (batch x heads, L, L) tables through an expanded
int64 index, and makes half a dozen more full passes over (batch x heads, L, L) tensors (scale,
transpose, add, mask, softmax). Here, per layer:

* the relative-position keys and queries (`key_proj` / `query_proj` of the normalised relative
  embeddings, or `pos_key_proj` / `pos_query_proj`), pre-multiplied by the attention scale, depend
  on the weights only: computed once and cached (checked against the weights' identity and version
  and the embeddings' values);
* per sequence length L, the bucketed relative position of each distance d = i - j (2L - 1 of them)
  is computed once, shared by all layers and calls;
* content->position and position->content are plain batched matmuls against the position
  keys/queries expanded to one row per distance, whose results hold every (i, j) on a diagonal band;
  a strided view ("skew") reads them as (L, L) tables, so there is no (L, L) gather at all;
* the two tables are summed into one additive bias (padded keys at -inf, put into the p2c table's
  rows before the sum), then `baddbmm_` adds the scaled q.k in place, softmax (fp32 accumulation),
  and one bmm with the values; one head at a time, so a head's (B, L, L) tensors stay in cache.

`torch.nn.functional.scaled_dot_product_attention` with the bias as a float mask (its CPU flash
kernel in bf16) was measured too, and was slower at these shapes (benchmarks/RESULTS.md).

`accelerate_for_cpu(model)` installs it on a loaded DeBERTa-v2/v3 model on the CPU (anything else is
returned unchanged); `FI_EVALS_ACCELERATION=off` turns it off. Padded query rows get different (unused) values
than in eager mode, where they attend uniformly; they never reach an unpadded token's output: padded
keys are masked for every query, and the classifier reads token 0. Training, `output_attentions`,
gradients and cross-attention (`query_states`) run the eager forward.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch

from .config import acceleration

HEAD_GROUP = 1  # heads per step of the attention loop: one head's (B, L, L) tensors stay in cache


def fast_path_enabled() -> bool:
    """False when `FI_EVALS_ACCELERATION` is off (the one switch of every accelerated path)."""
    return acceleration() != "off"


def supports(model: Any) -> bool:
    """Whether `model` is a DeBERTa-v2/v3 encoder on the CPU whose attention this module can replace."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "deberta-v2":
        return False
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return False
    if device.type != "cpu":
        return False
    pos_att = set(config.pos_att_type or [])
    if not pos_att <= {"c2p", "p2c"} or not getattr(config, "relative_attention", False):
        return False
    return bool(_attention_modules(model))


def accelerate_for_cpu(model: Any) -> Any:
    """Install the fast attention on every DeBERTa-v2 self-attention of `model` (in place) and return it.

    A no-op (the model is returned as is) when `FI_EVALS_ACCELERATION=off`, when the model is not a
    DeBERTa-v2/v3 model, or when it is not on the CPU. Sets `model._fi_cpu_fast = True` when installed.
    """
    if not fast_path_enabled() or not supports(model):
        return model
    cache: dict[Any, Any] = {}  # per model: bucket tables per sequence length
    for module in _attention_modules(model):
        if getattr(module, "_fi_eager_forward", None) is None:
            module._fi_eager_forward = module.forward
        module._fi_shared = cache
        module._fi_pos = None
        module.forward = types.MethodType(_fast_forward, module)
    model._fi_cpu_fast = True
    return model


def restore_eager(model: Any) -> Any:
    """Undo `accelerate_for_cpu`."""
    for module in _attention_modules(model):
        eager = getattr(module, "_fi_eager_forward", None)
        if eager is not None:
            module.forward = eager
            del module._fi_eager_forward
    model._fi_cpu_fast = False
    return model


def _attention_modules(model: Any) -> list[Any]:
    try:
        from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
    except ImportError:  # pragma: no cover - transformers without DeBERTa-v2
        return []
    return [m for m in model.modules() if isinstance(m, DisentangledSelfAttention)]


# -- relative positions -------------------------------------------------------------------------

def bucket_position(relative: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """transformers' `make_log_bucket_position` (same float ops, so the same buckets)."""
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.tensor(mid - 1).type_as(relative),
                          torch.abs(relative))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative.type_as(log_pos), log_pos * sign).to(torch.long)


def _distance_index(module: Any, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For d = i - j from -(L-1) to L-1: the row of the (2 * span) position table that eager attention
    uses for content->position at distance d, listed for the c2p skew (d descending) and for the p2c
    skew (d ascending). Cached per (L, buckets, max positions, span)."""
    key = ("dist", length, module.position_buckets, module.max_relative_positions, module.pos_ebd_size)
    hit = module._fi_shared.get(key)
    if hit is None:
        span = module.pos_ebd_size
        d = torch.arange(-(length - 1), length, dtype=torch.long)  # ascending
        if module.position_buckets > 0 and module.max_relative_positions > 0:
            d = bucket_position(d, module.position_buckets, module.max_relative_positions)
        rows = torch.clamp(d + span, 0, 2 * span - 1)
        hit = (rows.flip(0).contiguous(), rows)
        if len(module._fi_shared) >= 2048:  # bounded: at most a few kB per length
            module._fi_shared.clear()
        module._fi_shared[key] = hit
    return hit


def _position_projections(module: Any, rel_embeddings: torch.Tensor, scale: float
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(heads, 2 * span, head_dim) position keys (for c2p) and queries (for p2c), times `scale`,
    cached per layer."""
    span = module.pos_ebd_size
    if module.share_att_key:
        key_lin = module.key_proj if "c2p" in module.pos_att_type else None
        query_lin = module.query_proj if "p2c" in module.pos_att_type else None
    else:
        key_lin = getattr(module, "pos_key_proj", None) if "c2p" in module.pos_att_type else None
        query_lin = getattr(module, "pos_query_proj", None) if "p2c" in module.pos_att_type else None
    params = [p for lin in (key_lin, query_lin) if lin is not None for p in lin.parameters()]
    # The encoder hands every layer a freshly normalised copy of its relative embeddings on each
    # call, so the cache is checked against their values (a 2*span x hidden compare, ~0.1 ms).
    stamp = (scale, *((p.data_ptr(), p._version) for p in params))
    cached = module._fi_pos
    if (cached is not None and cached[0] == stamp and cached[1].shape == rel_embeddings.shape
            and cached[1].dtype == rel_embeddings.dtype and torch.equal(cached[1], rel_embeddings)):
        return cached[2]
    rel = rel_embeddings[: span * 2]
    heads = module.num_attention_heads

    def project(lin: Any) -> torch.Tensor | None:
        if lin is None:
            return None
        return (lin(rel) * scale).view(rel.size(0), heads, -1).transpose(0, 1).contiguous()

    out = (project(key_lin), project(query_lin))
    module._fi_pos = (stamp, rel_embeddings.clone(), out)
    return out


def _skew(table: torch.Tensor, width: int) -> torch.Tensor:
    """From (..., R, width + R - 1) contiguous `table`, the (..., R, width) view whose (r, c) is
    table[r, c + R - 1 - r]: row r's diagonal band, as a strided view (no copy)."""
    *lead, rows, cols = table.shape
    assert cols == width + rows - 1 and table.is_contiguous()
    strides = list(table.stride())
    strides[-2] = cols - 1
    return table.as_strided((*lead, rows, width), tuple(strides), table.storage_offset() + rows - 1)


def _relative_bias(module: Any, q: torch.Tensor, k: torch.Tensor, pos_key: torch.Tensor | None,
                   pos_query: torch.Tensor | None, padded: torch.Tensor | None) -> torch.Tensor:
    """c2p + p2c (already scaled) as one contiguous (H, B, L, L) tensor; -inf at padded keys when p2c is on.

    c2p[i, j] = q_i . pos_key[row(i - j)]. With E the position keys expanded to one row per distance
    (2L - 1 rows, a small row gather), `q @ E^T` holds every c2p[i, j] on row i's diagonal band, read
    as an (L, L) strided view: no (L, L) gather. Likewise p2c[i, j] = k_j . pos_query[row(i - j)] on
    row j of `k @ E'^T`, read transposed.
    """
    heads, batch, length, head_dim = q.shape
    c2p_rows, p2c_rows = _distance_index(module, length)
    flat = (heads, batch * length, head_dim)
    wide = (heads, batch, length, 2 * length - 1)
    bias = None
    if pos_query is not None:
        table = torch.bmm(k.reshape(flat), pos_query.index_select(1, p2c_rows).transpose(1, 2)).view(wide)
        if padded is not None:  # row j of the table holds every p2c[., j]: -inf for a padded key
            for b in padded.any(dim=1).nonzero().flatten().tolist():
                table[:, b].index_fill_(1, padded[b].nonzero().flatten(), float("-inf"))
        bias = _skew(table, length).transpose(-1, -2)
    if pos_key is not None:
        table = torch.bmm(q.reshape(flat), pos_key.index_select(1, c2p_rows).transpose(1, 2)).view(wide)
        c2p = _skew(table, length)
        bias = c2p.contiguous() if bias is None else torch.add(c2p, bias)
    if bias is None:
        return torch.zeros((heads, batch, length, length), dtype=q.dtype)
    return bias if bias.is_contiguous() else bias.contiguous()


# -- the forward --------------------------------------------------------------------------------

def _fast_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False,
                  query_states: torch.Tensor | None = None, relative_pos: torch.Tensor | None = None,
                  rel_embeddings: torch.Tensor | None = None):
    if (output_attentions or query_states is not None or self.training or rel_embeddings is None
            or torch.is_grad_enabled()
            or not self.relative_attention or hidden_states.device.type != "cpu"):
        return self._fi_eager_forward(hidden_states, attention_mask, output_attentions, query_states=query_states,
                                      relative_pos=relative_pos, rel_embeddings=rel_embeddings)
    batch, length, _ = hidden_states.shape
    heads = self.num_attention_heads

    # Heads-major layout, (H, B, L, D) contiguous: every batched product below runs over H * B
    # matrices, and the position tables, shared by the batch, need no broadcast copies.
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, length, heads, -1).permute(2, 0, 1, 3).contiguous()

    q = split(self.query_proj(hidden_states))
    k = split(self.key_proj(hidden_states))
    v = split(self.value_proj(hidden_states))
    head_dim = q.size(-1)
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    inv_scale = 1.0 / math.sqrt(head_dim * scale_factor)

    # Eager attention masks with the (B, 1, L, L) outer product of the padding mask. Only its key
    # side matters to unpadded queries (padded query rows are never read by them), so padded keys
    # get -inf and padded query rows stay finite.
    mask = attention_mask.bool()
    if mask.dim() == 4:
        key_mask = mask.any(dim=-2).view(batch, -1)
    elif mask.dim() == 3:
        key_mask = mask.any(dim=-2)
    else:
        key_mask = mask
    padded = None if bool(key_mask.all()) else ~key_mask

    pos_key, pos_query = _position_projections(self, rel_embeddings, inv_scale)
    context = torch.empty_like(q)
    group = max(1, min(HEAD_GROUP, heads))
    for h0 in range(0, heads, group):  # a few heads at a time: their (B, L, L) tensors stay in cache
        h1 = min(h0 + group, heads)
        qg, kg, vg = q[h0:h1], k[h0:h1], v[h0:h1]
        bias = _relative_bias(self, qg, kg, None if pos_key is None else pos_key[h0:h1],
                              None if pos_query is None else pos_query[h0:h1], padded)
        if padded is not None and pos_query is None:  # else the p2c tables carry the mask
            bias.masked_fill_(padded.view(1, batch, 1, length), float("-inf"))
        scores = bias.view(-1, length, length)
        scores.baddbmm_(qg.view(-1, length, head_dim), kg.view(-1, length, head_dim).transpose(1, 2), alpha=inv_scale)
        probs = torch.softmax(scores, dim=-1)  # accumulates in fp32 for bf16 inputs
        torch.bmm(probs, vg.view(-1, length, head_dim), out=context[h0:h1].view(-1, length, head_dim))
    context = context.view(heads, batch, length, head_dim).permute(1, 2, 0, 3).reshape(batch, length, -1)
    return (context, None)
