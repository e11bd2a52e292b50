"""Packed variable-length forward of BERT / RoBERTa / DeBERTa-v2 sequence classifiers.

The (chunk, claim) pairs of an NLI batch differ a lot in length (a chunk of up to ~400 tokens plus
a claim of 10-60), so a padded batch spends most of its work on padding. Here all sequences of a
batch are concatenated into one [tokens, hidden] matrix with cumulative sequence lengths
(`cu_seqlens`, int32 [n_seqs + 1]) and every token-wise operation runs on real tokens only. The
weights are the loaded Hugging Face model's own tensors (the QKV weights concatenated once).

BERT / RoBERTa / XLM-R, per batch:
- embeddings, one Triton kernel: word + absolute position (restarting at each sequence's start;
  RoBERTa's positions start after `padding_idx` exactly as `create_position_ids_from_input_ids`)
  + token type, then LayerNorm;
- per layer: QKV projection (one matmul over the concatenated weights, bias in its epilogue);
  variable-length attention (below); attention output projection, then bias + residual +
  LayerNorm in one Triton kernel; FFN up-projection, then bias + exact erf GELU in one Triton
  kernel; down-projection, then bias + residual + LayerNorm in one Triton kernel;
- the head on the first token of each sequence: BERT pooler (dense + tanh) then classifier;
  RoBERTa `classifier.dense` + tanh then `classifier.out_proj` (tiny [n_seqs, hidden] matmuls).
Matmuls stay in PyTorch (cuBLAS on the GPU: bf16/fp16 tensor cores with fp32 accumulation; a
hand-written Triton GEMM would at best match it). All Triton kernels widen to fp32 internally.

Attention. Two implementations, chosen by `attention=`:
- "triton": `kernels.varlen_attention`, a flash-style kernel written here: one program per
  (query block, head, sequence), online softmax, fp32 statistics and accumulator, reading Q/K/V
  straight out of the packed QKV matmul output (no split/transpose copies). It runs in every dtype,
  fp32 included (IEEE dot products), and under Triton's interpreter on the CPU, which is what the
  CI checks.
- "torch": `torch.nn.attention.varlen.varlen_attn` (it exists in torch 2.13: FlashAttention-2 /
  cuDNN kernels behind a custom op). It has no CPU kernel (`aten::_flash_attention_forward` is
  CUDA-only: checked on torch 2.13.0+cpu) and takes only fp16/bf16, so it cannot run the fp32
  reference check nor run in CI; where it fits it is the better-tuned kernel.
- "auto" (default): "torch" on CUDA for fp16/bf16 with head_dim a multiple of 8 up to 256, where
  `varlen_attn` exists; "triton" otherwise (fp32 on the GPU, the CPU interpreter, older torch), and
  also when `varlen_attn` fails on its first call (a build without its kernels, another torch
  version's signature). `benchmarks/nli_fused_gpu.py` times both on the GPU (variants `fused`
  and `fused-triton`).

DeBERTa-v2/v3 (disentangled attention: content-to-position and position-to-content terms from
relative-position embeddings inside the score matrix, which neither kernel above computes):
- packed and fused as above: embeddings (+ LayerNorm, Triton), the QKV projection (one matmul,
  packed tokens), attention output projection + bias/residual/LayerNorm (Triton), FFN with
  bias + GELU (Triton) and bias/residual/LayerNorm (Triton), the head on the first tokens
  (`pooler.dense` + its activation, then `classifier`);
- NOT fused, run padded in PyTorch per batch (padded to the batch's longest sequence, which the
  scorer's length-sorted batches keep close to every sequence's length): the attention core, i.e.
  Q.K^T, the c2p/p2c relative-position bias (the model's own `disentangled_attention_bias`), the
  mask, softmax and P.V. Q/K/V are scattered from the packed matrix into the padded layout and the
  context gathered back, so padding costs only inside that core.
- not supported (`fused_forward_available` is False, the scorer keeps the PyTorch path): DeBERTa-v2
  with a convolution layer (`conv_kernel_size`, e.g. deberta-v2-xlarge) or an embedding projection.

The softmax and the per-claim aggregation stay in the scorer: a few numbers per claim, on the host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .select import unsupported_reason

logger = logging.getLogger(__name__)

IdsLike = Any  # list of id lists, list of 1-D tensors, or one packed 1-D tensor (with cu_seqlens)


@dataclass
class Packed:
    """A batch of sequences concatenated without padding."""

    ids: torch.Tensor  # [tokens] int32/int64
    cu_seqlens: torch.Tensor  # [n_seqs + 1] int32
    token_types: torch.Tensor | None  # [tokens] or None (all zero)
    max_len: int
    lengths: list[int]
    positions: torch.Tensor | None = None  # precomputed absolute positions (CUDA-graph buckets)
    filler: bool = False  # tokens past cu_seqlens[-1] belong to no sequence (CUDA-graph buckets)

    @property
    def n_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1


def pack(input_ids: IdsLike, cu_seqlens: torch.Tensor | Sequence[int] | None = None,
         token_type_ids: IdsLike | None = None, device: torch.device | str = "cpu") -> Packed:
    """Concatenate sequences; `input_ids` is a list of sequences, or already packed with `cu_seqlens`."""
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        if cu_seqlens is None:
            raise ValueError("packed input_ids need cu_seqlens")
        cu = torch.as_tensor(cu_seqlens).to(torch.int64)
        lengths = (cu[1:] - cu[:-1]).cpu().tolist()
        ids = input_ids
        types = token_type_ids if isinstance(token_type_ids, torch.Tensor) or token_type_ids is None \
            else torch.as_tensor(token_type_ids)
    else:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens goes with packed (1-D tensor) input_ids only")
        seqs = [torch.as_tensor(s, dtype=torch.int64).reshape(-1) for s in input_ids]
        lengths = [int(s.numel()) for s in seqs]
        ids = torch.cat(seqs) if seqs else torch.zeros(0, dtype=torch.int64)
        types = None
        if token_type_ids is not None:
            types = torch.cat([torch.as_tensor(t, dtype=torch.int64).reshape(-1) for t in token_type_ids]) \
                if len(token_type_ids) else torch.zeros(0, dtype=torch.int64)
            if types.numel() != ids.numel():
                raise ValueError("token_type_ids do not match input_ids in length")
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    if any(n < 1 for n in lengths):
        raise ValueError("every sequence needs at least one token")
    device = torch.device(device)
    return Packed(ids.to(device, non_blocking=True),
                  cu.to(device=device, dtype=torch.int32, non_blocking=True),
                  None if types is None else types.to(device, non_blocking=True),
                  max(lengths, default=0), lengths)


def _weight(module: Any) -> torch.Tensor | None:
    return None if module is None else module.weight


def _varlen_attn_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    return varlen_attn


class FusedEncoder:
    """`FusedEncoder(model)(input_ids, cu_seqlens=None, token_type_ids=None) -> logits [n_seqs, n_labels]`.

    `model` is a loaded `AutoModelForSequenceClassification` of a supported family (see
    `fused_forward_available`), in eval mode, on the device and in the dtype to run in (fp32, or
    bf16/fp16 on the GPU). The encoder shares the model's weight tensors; only the concatenated
    QKV weights are new.
    """

    def __init__(self, model: Any, *, attention: str = "auto") -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"no fused forward for this checkpoint: {reason}")
        if attention not in ("auto", "triton", "torch"):
            raise ValueError(f"attention must be auto, triton or torch, got {attention!r}")
        from . import kernels  # imported here: TRITON_INTERPRET is read when the kernels are defined

        self._k = kernels
        config = model.config
        self.model = model
        self.config = config
        self.family = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta",
                       "deberta-v2": "deberta-v2"}[config.model_type]
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.heads = config.num_attention_heads
        self.hidden = config.hidden_size
        self.head_dim = self.hidden // self.heads
        self.eps = config.layer_norm_eps
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        base = {"bert": "bert", "roberta": "roberta", "deberta-v2": "deberta"}[self.family]
        base = getattr(model, base)
        self.base = base
        emb = base.embeddings
        self.word = emb.word_embeddings.weight
        self.pos_table = _weight(getattr(emb, "position_embeddings", None))
        self.type_table = _weight(getattr(emb, "token_type_embeddings", None))
        self.emb_ln = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        # the longest sequence the position table covers (RoBERTa's starts after padding_idx)
        self.max_len = None if self.pos_table is None else (
            self.pos_table.shape[0] - (self.pad_id + 1 if self.family == "roberta" else 0))
        self.layers = []
        for layer in base.encoder.layer:
            attn = layer.attention.self
            if self.family == "deberta-v2":
                projections = (attn.query_proj, attn.key_proj, attn.value_proj)
            else:
                projections = (attn.query, attn.key, attn.value)
            self.layers.append({
                "attn": attn,
                "qkv_w": torch.cat([p.weight for p in projections]).contiguous(),
                "qkv_b": torch.cat([p.bias for p in projections]).contiguous(),
                "o_w": layer.attention.output.dense.weight, "o_b": layer.attention.output.dense.bias,
                "ln1": (layer.attention.output.LayerNorm.weight, layer.attention.output.LayerNorm.bias),
                "i_w": layer.intermediate.dense.weight, "i_b": layer.intermediate.dense.bias,
                "d_w": layer.output.dense.weight, "d_b": layer.output.dense.bias,
                "ln2": (layer.output.LayerNorm.weight, layer.output.LayerNorm.bias),
            })
        self._attention_requested = attention
        self.attention = self._pick_attention(attention)

    # -- public -------------------------------------------------------------------------------

    def __call__(self, input_ids: IdsLike, cu_seqlens: torch.Tensor | Sequence[int] | None = None,
                 token_type_ids: IdsLike | None = None) -> torch.Tensor:
        return self.forward_packed(pack(input_ids, cu_seqlens, token_type_ids, self.device))

    @torch.inference_mode()
    def forward_packed(self, packed: Packed) -> torch.Tensor:
        if packed.n_seqs == 0:
            return torch.zeros(0, self.config.num_labels, device=self.device, dtype=self.dtype)
        if self.max_len is not None and packed.max_len > self.max_len:
            raise ValueError(f"a sequence of {packed.max_len} tokens is longer than the checkpoint's "
                             f"{self.max_len} positions")
        if self.device.type != "cuda" and not self._k.INTERPRETED:
            raise RuntimeError("the fused path runs on CUDA, or on the CPU under Triton's interpreter "
                               "(TRITON_INTERPRET=1 set before triton is first imported)")
        hidden = self.embed(packed)
        if self.family == "deberta-v2":
            hidden = self._deberta_layers(hidden, packed)
        else:
            for layer in self.layers:
                qkv = F.linear(hidden, layer["qkv_w"], layer["qkv_b"])
                context = self._attend(qkv, packed)
                hidden = self._feed_forward(context, hidden, layer)
        return self.classify(hidden[packed.cu_seqlens[:-1].long()])

    def positions(self, packed: Packed) -> torch.Tensor | None:
        """Absolute position of every packed token (None for DeBERTa without position input)."""
        if self.pos_table is None:
            return None
        ids, cu = packed.ids, packed.cu_seqlens.long()
        lengths = cu[1:] - cu[:-1]
        starts = torch.repeat_interleave(cu[:-1], lengths, output_size=ids.numel())
        if self.family != "roberta":
            return torch.arange(ids.numel(), device=ids.device) - starts
        # RoBERTa: padding_idx + 1 + the count of non-pad tokens so far in the sequence
        # (pad tokens keep padding_idx), as `create_position_ids_from_input_ids`
        mask = (ids != self.pad_id).long()
        counts = mask.cumsum(0)
        before = (counts - mask)[starts]
        return (counts - before) * mask + self.pad_id

    def embed(self, packed: Packed) -> torch.Tensor:
        types = packed.token_types
        if types is None and self.type_table is not None:
            types = torch.zeros_like(packed.ids)
        positions = packed.positions if packed.positions is not None else self.positions(packed)
        return self._k.embed_layernorm(packed.ids, positions, types, self.word, self.pos_table,
                                       self.type_table, self.emb_ln[0], self.emb_ln[1], self.eps)

    def classify(self, first_tokens: torch.Tensor) -> torch.Tensor:
        """Logits from the first token of every sequence (the checkpoint's own head, no dropout)."""
        model = self.model
        if self.family == "bert":
            dense = model.bert.pooler.dense
            pooled = torch.tanh(F.linear(first_tokens, dense.weight, dense.bias))
            return F.linear(pooled, model.classifier.weight, model.classifier.bias)
        if self.family == "roberta":
            x = torch.tanh(F.linear(first_tokens, model.classifier.dense.weight, model.classifier.dense.bias))
            return F.linear(x, model.classifier.out_proj.weight, model.classifier.out_proj.bias)
        from transformers.activations import ACT2FN

        pooler = model.pooler
        act = ACT2FN[pooler.config.pooler_hidden_act]
        pooled = act(F.linear(first_tokens, pooler.dense.weight, pooler.dense.bias))
        return F.linear(pooled, model.classifier.weight, model.classifier.bias)

    # -- pieces --------------------------------------------------------------------------------

    def _pick_attention(self, attention: str) -> str:
        fits = (self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
                and self.head_dim % 8 == 0 and self.head_dim <= 256 and _varlen_attn_fn() is not None)
        if attention == "torch" and not fits:
            raise ValueError("attention='torch' needs torch.nn.attention.varlen on CUDA in fp16/bf16")
        if attention == "auto":
            return "torch" if fits else "triton"
        return attention

    def _attend(self, qkv: torch.Tensor, packed: Packed) -> torch.Tensor:
        if self.attention == "torch":
            tokens = qkv.shape[0]
            q, k, v = qkv.view(tokens, 3, self.heads, self.head_dim).unbind(1)
            cu, longest = packed.cu_seqlens, packed.max_len
            try:
                out = _varlen_attn_fn()(q, k, v, cu, cu, longest, longest)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:  # a build without
                # its kernels, another torch version's signature: the Triton kernel does the same work
                if self._attention_requested == "torch":
                    raise
                logger.warning("torch varlen_attn failed (%s): using the Triton attention kernel", exc)
                self.attention = "triton"
            else:
                return out.reshape(tokens, self.hidden)
        # filler rows (no sequence covers them) are zeroed rather than left uninitialized; with
        # `varlen_attn` they may hold anything, which stays in those rows (every other op is row-wise)
        out = qkv.new_zeros(qkv.shape[0], self.hidden) if packed.filler else None
        return self._k.varlen_attention(qkv, packed.cu_seqlens, packed.max_len, self.heads, out=out)

    def _feed_forward(self, context: torch.Tensor, residual: torch.Tensor, layer: dict) -> torch.Tensor:
        """Attention output projection + LayerNorm, then the FFN + LayerNorm (packed tokens)."""
        k = self._k
        attended = k.bias_residual_layernorm(F.linear(context, layer["o_w"]), layer["o_b"], residual,
                                             *layer["ln1"], self.eps)
        inner = k.bias_gelu_(F.linear(attended, layer["i_w"]), layer["i_b"])
        return k.bias_residual_layernorm(F.linear(inner, layer["d_w"]), layer["d_b"], attended,
                                         *layer["ln2"], self.eps)

    def _deberta_layers(self, hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
        """DeBERTa-v2 layers: token-wise work packed, the disentangled attention core padded."""
        from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

        encoder = self.base.encoder
        n, length, tokens = packed.n_seqs, packed.max_len, hidden.shape[0]
        cu = packed.cu_seqlens.long()
        device = hidden.device
        seq = torch.repeat_interleave(torch.arange(n, device=device), cu[1:] - cu[:-1], output_size=tokens)
        slot = seq * length + torch.arange(tokens, device=device) - cu[:-1][seq]  # packed -> padded row
        valid = torch.zeros(n * length, dtype=torch.bool, device=hidden.device)
        valid[slot] = True
        mask = valid.view(n, 1, 1, length)  # keys beyond a sequence's end are masked
        rel_embeddings = encoder.get_rel_embedding()
        relative_pos = None
        if encoder.relative_attention:
            probe = torch.empty(length, 0, device=hidden.device)
            relative_pos = build_relative_position(probe, probe, bucket_size=encoder.position_buckets,
                                                   max_position=encoder.max_relative_positions)
        for layer in self.layers:
            qkv = F.linear(hidden, layer["qkv_w"], layer["qkv_b"])
            padded = qkv.new_zeros(n * length, 3 * self.hidden)
            padded[slot] = qkv
            context = _disentangled_core(layer["attn"], padded.view(n, length, 3 * self.hidden), mask,
                                         relative_pos, rel_embeddings)
            hidden = self._feed_forward(context.reshape(n * length, self.hidden)[slot], hidden, layer)
        return hidden


def _disentangled_core(attn: Any, qkv: torch.Tensor, mask: torch.Tensor, relative_pos: torch.Tensor | None,
                       rel_embeddings: torch.Tensor | None) -> torch.Tensor:
    """DeBERTa-v2's `DisentangledSelfAttention.forward` after its projections, on padded [n, L, 3H]
    (the same operations in the same order as Hugging Face's eager code)."""
    n, length, three_hidden = qkv.shape
    hidden = three_hidden // 3
    heads = attn.num_attention_heads
    q, k, v = (attn.transpose_for_scores(t, heads) for t in qkv.split(hidden, dim=-1))
    scale_factor = 1 + ("c2p" in attn.pos_att_type) + ("p2c" in attn.pos_att_type)
    scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * scale_factor)
    scores = torch.bmm(q, k.transpose(-1, -2) / scale.to(dtype=q.dtype))
    if attn.relative_attention:
        scores = scores + attn.disentangled_attention_bias(q, k, relative_pos, rel_embeddings, scale_factor)
    scores = scores.view(n, heads, length, length).masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    context = torch.bmm(probs.view(n * heads, length, length), v)
    return context.view(n, heads, length, -1).permute(0, 2, 1, 3).reshape(n, length, hidden)


class CudaGraphEncoder:
    """A `FusedEncoder` (BERT / RoBERTa family) replayed from CUDA graphs, one per length bucket.

    A batch of T tokens in N sequences runs in the bucket (T rounded up to `token_step`, N rounded up
    to a power of two): static buffers hold the packed ids, precomputed positions and token types and
    `cu_seqlens`; the extra sequence slots are empty (their `cu_seqlens` entries repeat T) and the
    extra tokens belong to no sequence, so attention never reads them and their rows, computed and
    dropped, cost only their share of the matmuls. The attention grid is sized for the checkpoint's
    longest sequence. Graphs save the ~10 kernel launches per layer; whether that pays for the bucket
    padding is measured by `benchmarks/nli_fused_gpu.py --cuda-graphs`. DeBERTa's padded attention core
    has data-dependent shapes: not graphed.

    `capture=False` runs the same static-shape forward eagerly (the CPU tests check it that way).
    """

    def __init__(self, encoder: FusedEncoder, *, token_step: int = 1024, max_len: int | None = None,
                 capture: bool = True) -> None:
        if encoder.family == "deberta-v2":
            raise ValueError("CUDA graphs cover the BERT / RoBERTa families only")
        self.encoder = encoder
        self.token_step = token_step
        self.max_len = max_len or encoder.max_len
        self.capture = capture and encoder.device.type == "cuda"
        self.buckets: dict[tuple[int, int], dict[str, Any]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None

    def bucket_of(self, tokens: int, n_seqs: int) -> tuple[int, int]:
        return -(-tokens // self.token_step) * self.token_step, 1 << max(3, (n_seqs - 1).bit_length())

    def __call__(self, input_ids: IdsLike, cu_seqlens: torch.Tensor | Sequence[int] | None = None,
                 token_type_ids: IdsLike | None = None) -> torch.Tensor:
        return self.forward_packed(pack(input_ids, cu_seqlens, token_type_ids, self.encoder.device))

    @torch.inference_mode()
    def forward_packed(self, packed: Packed) -> torch.Tensor:
        enc = self.encoder
        if packed.max_len > self.max_len:
            raise ValueError(f"a sequence of {packed.max_len} tokens is longer than {self.max_len}")
        if packed.n_seqs == 0:
            return enc.forward_packed(packed)
        tokens, n = packed.ids.numel(), packed.n_seqs
        key = self.bucket_of(tokens, n)
        bucket = self.buckets.get(key) or self._build(*key)
        static = bucket["packed"]
        static.ids[:tokens].copy_(packed.ids)
        static.ids[tokens:].fill_(enc.pad_id)
        if static.positions is not None:
            static.positions[:tokens].copy_(enc.positions(packed))
            static.positions[tokens:].fill_(enc.pad_id if enc.family == "roberta" else 0)
        if static.token_types is not None:
            static.token_types.zero_()
            if packed.token_types is not None:
                static.token_types[:tokens].copy_(packed.token_types)
        static.cu_seqlens[: n + 1].copy_(packed.cu_seqlens)
        static.cu_seqlens[n + 1:].fill_(tokens)
        if self.capture:
            bucket["graph"].replay()
            logits = bucket["logits"]
        else:
            logits = enc.forward_packed(static)
        return logits[:n].clone()

    def _build(self, tokens: int, n_seqs: int) -> dict[str, Any]:
        enc = self.encoder
        device = enc.device
        def zeros(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.int64, device=device)

        rows = tokens + 1  # a spare row: the first token of an empty sequence slot is always a filler row
        static = Packed(torch.full((rows,), enc.pad_id, dtype=torch.int64, device=device),
                        torch.zeros(n_seqs + 1, dtype=torch.int32, device=device),
                        zeros(rows) if enc.type_table is not None else None, self.max_len, [],
                        zeros(rows) if enc.pos_table is not None else None, filler=True)
        bucket: dict[str, Any] = {"packed": static}
        if self.capture:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile the Triton kernels, warm cuBLAS
                    enc.forward_packed(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                bucket["logits"] = enc.forward_packed(static)
            bucket["graph"] = graph
        self.buckets[(tokens, n_seqs)] = bucket
        return bucket


def count_flops(config: Any, lengths: Sequence[int]) -> float:
    """Matmul FLOPs of an encoder forward over sequences of `lengths` (2 per multiply-add; the
    attention score and P.V products included, DeBERTa's relative-position terms counted as two more
    score-sized products per layer, the classifier head ignored)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = float(sum(lengths))
    squares = float(sum(n * n for n in lengths))
    dense = 2 * tokens * (4 * h * h + 2 * h * inter)
    attention = 2 * 2 * squares * h
    if config.model_type == "deberta-v2":
        attention *= 2
    return layers * (dense + attention)


__all__ = ["CudaGraphEncoder", "FusedEncoder", "Packed", "count_flops", "pack"]
