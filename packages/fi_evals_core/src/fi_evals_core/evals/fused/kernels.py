"""Triton kernels of the fused NLI path, and the Python launchers that size their grids.

Everything here computes in fp32 whatever the storage type (fp32, bf16, fp16): loads are widened,
reductions and softmax statistics stay in fp32, stores narrow back to the output's type.

`@triton.jit` decides at decoration time whether it compiles for a GPU or runs in Triton's
interpreter (`TRITON_INTERPRET=1`, CPU tensors): so `TRITON_INTERPRET` must be set before this
module is first imported, and this module is imported only when a fused path is actually built
(`fi_evals_core.evals.fused` itself stays free of triton imports).

Kernels
- `varlen_attention`: flash-style attention over packed sequences (no padding): one program per
  (query block, head, sequence), online softmax with fp32 statistics and accumulator, keys of other
  sequences never loaded. Reads Q, K and V straight out of the fused QKV projection's output.
  (Triton 3.9's interpreter computes `tl.dot` of bf16 operands wrongly — seen: errors of 1e10 —
  so under the interpreter bf16/fp16 operands are widened to fp32 first, which is exact; P is
  still rounded to the storage type before P.V, as on the GPU.)
- `bias_gelu`: `gelu(x + b)` in place, the exact erf GELU BERT and RoBERTa use.
- `bias_residual_layernorm`: `LayerNorm(x + b + residual)` per row (the bias of the matmul before it
  folded in); with neither bias nor residual it is a plain LayerNorm.
- `embed_layernorm`: word + position + token-type embedding rows gathered per packed token and
  normalized, in one pass.

The CPU tests compile them all for sm_90 (H100) and sm_80 (A100) with Triton's bundled ptxas, no
GPU needed (`python -m fi_evals_core.testing.triton_aot`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

INTERPRETED = bool(int(__import__("os").environ.get("TRITON_INTERPRET", "0") or "0"))

_LOG2E = 1.4426950408889634


def _pow2(n: int, least: int = 1) -> int:
    return max(least, triton.next_power_of_2(int(n)))


# -- attention --------------------------------------------------------------------------------


@triton.jit
def _varlen_attention_kernel(QKV, OUT, CU, stride_qkv, stride_out, hidden, qk_scale,
                             HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    m_block = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    start = tl.load(CU + seq).to(tl.int64)  # int64 offsets: tokens x 3 * hidden may pass 2^31
    length = (tl.load(CU + seq + 1) - tl.load(CU + seq)).to(tl.int32)

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < length
    q_ptrs = QKV + (start + offs_m)[:, None] * stride_qkv + head * HEAD_DIM + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    # A query block past the end of its sequence loops over nothing and stores nothing.
    n_end = tl.where(m_block * BLOCK_M < length, length, 0)
    for n0 in range(0, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < length
        kv_rows = (start + offs_n)[:, None] * stride_qkv + head * HEAD_DIM + offs_d[None, :]
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(QKV + hidden + kv_rows, mask=kv_mask, other=0.0)
        v = tl.load(QKV + 2 * hidden + kv_rows, mask=kv_mask, other=0.0)
        if UPCAST:  # the interpreter's tl.dot gets bf16 operands wrong; widening is exact
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=PRECISION)
        else:
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        s = s * qk_scale  # log2 domain
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        p = p.to(v.dtype)  # P.V in the storage type (bf16/fp16 tensor cores), fp32 accumulator
        if UPCAST:
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision=PRECISION)
        else:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = OUT + (start + offs_m)[:, None] * stride_out + head * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, heads: int,
                     out: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Self-attention of packed sequences. `qkv` is [tokens, 3 * hidden] (Q | K | V, heads
    contiguous inside each), `cu_seqlens` int32 [n_seqs + 1]; returns [tokens, hidden]."""
    tokens, three_hidden = qkv.shape
    hidden = three_hidden // 3
    head_dim = hidden // heads
    if out is None:
        out = torch.empty(tokens, hidden, device=qkv.device, dtype=qkv.dtype)
    n_seqs = cu_seqlens.numel() - 1
    if n_seqs == 0 or tokens == 0:
        return out
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    meta = attention_meta(head_dim, qkv.dtype, INTERPRETED)
    grid = (triton.cdiv(max(int(max_len), 1), meta["BLOCK_M"]), heads, n_seqs)
    _varlen_attention_kernel[grid](qkv, out, cu_seqlens, qkv.stride(0), out.stride(0), hidden,
                                   scale * _LOG2E, **meta)
    return out


def attention_meta(head_dim: int, dtype: torch.dtype, interpreted: bool) -> dict:
    """Block sizes and launch options of the attention kernel (tiny blocks in the interpreter, so
    short test sequences still cross query and key blocks; fp32 is the correctness path)."""
    if interpreted:
        block_m = block_n = 16
        warps, stages = 1, 1
    elif dtype == torch.float32:
        block_m, block_n, warps, stages = 64, 32, 4, 2
    else:
        block_m, block_n = (128, 64) if head_dim <= 64 else (64, 64)
        warps, stages = 8, 2
    return {"HEAD_DIM": head_dim, "D_PAD": _pow2(head_dim, 16), "BLOCK_M": block_m, "BLOCK_N": block_n,
            "PRECISION": "ieee" if dtype == torch.float32 or interpreted else "tf32",
            "UPCAST": interpreted and dtype != torch.float32, "num_warps": warps, "num_stages": stages}


# -- bias + GELU --------------------------------------------------------------------------------


@triton.jit
def _bias_gelu_kernel(X, BIAS, n_elements, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(BIAS + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(X + offs, y.to(X.dtype.element_ty), mask=mask)


def bias_gelu_(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`x = gelu(x + bias)` in place (exact erf GELU) on a contiguous [rows, cols] tensor."""
    assert x.is_contiguous()
    n = x.numel()
    if n == 0:
        return x
    meta = gelu_meta(INTERPRETED)
    _bias_gelu_kernel[(triton.cdiv(n, meta["BLOCK"]),)](x, bias, n, x.shape[-1], **meta)
    return x


def gelu_meta(interpreted: bool) -> dict:
    return {"BLOCK": 1024 if interpreted else 2048, "num_warps": 4}


# -- (bias +) (residual +) LayerNorm ----------------------------------------------------------------


@triton.jit
def _layernorm_kernel(X, BIAS, RES, W, B, OUT, n_rows, stride_x, stride_res, stride_out, n_cols, eps,
                      HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    col_mask = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        x += tl.load(RES + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = _normalize(x, col_mask, W, B, cols, n_cols, eps)
    tl.store(OUT + rows[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _normalize(x, col_mask, W, B, cols, n_cols, eps):
    """LayerNorm of the rows of an fp32 [ROWS, BLOCK] tile whose columns past n_cols are zero."""
    mean = tl.sum(x, axis=1) / n_cols
    xc = tl.where(col_mask[None, :], x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    return xc * rstd[:, None] * w[None, :] + b[None, :]


def rows_meta(cols: int, interpreted: bool) -> dict:
    """Rows per program, column block and warps of the row kernels: many rows per program in the
    interpreter (its cost is per program), one or two rows of up to 1024 columns on the GPU."""
    block = _pow2(cols)
    if interpreted:
        return {"ROWS": 32, "BLOCK": block, "num_warps": 1}
    rows = max(1, 2048 // block)
    return {"ROWS": rows, "BLOCK": block, "num_warps": min(16, max(1, rows * block // 256))}


def bias_residual_layernorm(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                            weight: torch.Tensor, beta: torch.Tensor, eps: float,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """`LayerNorm(x + bias + residual)` row by row (bias and residual optional)."""
    rows, cols = x.shape
    if out is None:
        out = torch.empty_like(x)
    if rows == 0:
        return out
    meta = rows_meta(cols, INTERPRETED)
    _layernorm_kernel[(triton.cdiv(rows, meta["ROWS"]),)](
        x, bias if bias is not None else x, residual if residual is not None else x, weight, beta, out, rows,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), cols, eps,
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, **meta)
    return out


# -- embeddings + LayerNorm -----------------------------------------------------------------------


@triton.jit
def _embed_layernorm_kernel(IDS, POS, TYPES, WORD, POSW, TYPEW, W, B, OUT, n_rows, stride_out, n_cols, eps,
                            HAS_POS: tl.constexpr, HAS_TYPE: tl.constexpr, ROWS: tl.constexpr,
                            BLOCK: tl.constexpr):
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK)
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    token = tl.load(IDS + rows, mask=row_mask, other=0).to(tl.int64)
    x = tl.load(WORD + token[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_POS:
        pos = tl.load(POS + rows, mask=row_mask, other=0).to(tl.int64)
        x += tl.load(POSW + pos[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_TYPE:
        kind = tl.load(TYPES + rows, mask=row_mask, other=0).to(tl.int64)
        x += tl.load(TYPEW + kind[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = _normalize(x, col_mask, W, B, cols, n_cols, eps)
    tl.store(OUT + rows[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=mask)


def embed_layernorm(ids: torch.Tensor, positions: torch.Tensor | None, types: torch.Tensor | None,
                    word: torch.Tensor, pos_table: torch.Tensor | None, type_table: torch.Tensor | None,
                    weight: torch.Tensor, beta: torch.Tensor, eps: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm(word[ids] + pos_table[positions] + type_table[types]) for packed tokens."""
    tokens = ids.numel()
    cols = word.shape[1]
    if out is None:
        out = torch.empty(tokens, cols, device=word.device, dtype=word.dtype)
    if tokens == 0:
        return out
    has_pos = positions is not None and pos_table is not None
    has_type = types is not None and type_table is not None
    meta = rows_meta(cols, INTERPRETED)
    _embed_layernorm_kernel[(triton.cdiv(tokens, meta["ROWS"]),)](
        ids, positions if has_pos else ids, types if has_type else ids, word, pos_table if has_pos else word,
        type_table if has_type else word, weight, beta, out, tokens, out.stride(0), cols, eps,
        HAS_POS=has_pos, HAS_TYPE=has_type, **meta)
    return out


# -- the launchers' contract, for ahead-of-time compilation -------------------------------------------


def launch_specs(dtype: str, head_dim: int = 64, hidden: int = 1024) -> list[tuple]:
    """(kernel, argument types, compile-time constants) of every kernel as its launcher calls it,
    for storage type `dtype` ("bf16", "fp16", "fp32"): what compiling them for a GPU without one
    needs (fi_evals_core/testing/triton_aot.py compiles them for sm_90 and sm_80 with Triton's ptxas)."""
    torch_type = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    rows = {"n_rows": "i32"}
    return [
        (_varlen_attention_kernel,
         {"QKV": f"*{dtype}", "OUT": f"*{dtype}", "CU": "*i32", "stride_qkv": "i32", "stride_out": "i32",
          "hidden": "i32", "qk_scale": "fp32"}, attention_meta(head_dim, torch_type, False)),
        (_bias_gelu_kernel, {"X": f"*{dtype}", "BIAS": f"*{dtype}", "n_elements": "i32", "n_cols": "i32"},
         gelu_meta(False)),
        (_layernorm_kernel,
         {**{name: f"*{dtype}" for name in ("X", "BIAS", "RES", "W", "B", "OUT")}, **rows,
          "stride_x": "i32", "stride_res": "i32", "stride_out": "i32", "n_cols": "i32", "eps": "fp32"},
         {"HAS_BIAS": True, "HAS_RES": True, **rows_meta(hidden, False)}),
        (_embed_layernorm_kernel,
         {"IDS": "*i64", "POS": "*i64", "TYPES": "*i64",
          **{name: f"*{dtype}" for name in ("WORD", "POSW", "TYPEW", "W", "B", "OUT")}, **rows,
          "stride_out": "i32", "n_cols": "i32", "eps": "fp32"},
         {"HAS_POS": True, "HAS_TYPE": True, **rows_meta(hidden, False)}),
    ]
