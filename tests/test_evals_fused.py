"""The fused NLI path (fi_evals_core.evals.fused) checked on the CPU: no GPU needed.

- Numerics under Triton's interpreter. Triton decides interpreter or compiler when a function is
  decorated with `@triton.jit`, including triton's own library functions (`tl.sum`, `tl.max`, ...),
  decorated when triton is first imported. In a pytest process triton is imported long before this
  module (transformers imports it through torch._dynamo), so setting TRITON_INTERPRET=1 here would
  be too late ("Cannot call @triton.jit'd outside of the scope of a kernel"). So the @interpreted
  tests run in one child pytest of this file started with TRITON_INTERPRET=1
  (`test_fused_path_under_interpreter`); a process started with it runs them directly. Shapes are
  tiny (hidden 64, 2 layers, at most 64 positions): interpreted kernels are slow.
- Compilation for the GPU: every kernel compiled to sm_90 / sm_80 cubins by Triton's bundled ptxas.
- The GPU benchmark end to end with `--smoke` (tiny shapes, interpreter, in a subprocess).

Inputs are fresh random draws each run, seeded from the clock; every assertion message carries the
seed, and `FI_EVALS_TEST_SEED=<seed>` replays a failing run (the child gets the parent's seed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch  # noqa: E402  (torch, transformers and triton are test dependencies: never skipped)
import triton  # noqa: E402,F401

from transformers import AutoModelForSequenceClassification  # noqa: E402

from fi_evals_core.evals.fused import (  # noqa: E402
    FusedEncoder,
    fused_forward_available,
    nli_head,
    nli_head_reference,
    unsupported_reason,
    use_fused,
)
from fi_evals_core.evals.fused.encoder import CudaGraphEncoder  # noqa: E402
from fi_evals_core.evals.fused.head import _segments, aggregate, empty_outputs  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
CHILD = os.environ.get("FI_EVALS_FUSED_TEST_CHILD") == "1"


def interpreted(test):
    """Defined only in the TRITON_INTERPRET=1 child of test_fused_path_under_interpreter (not skipped
    in the parent: not collected there)."""
    return test if INTERPRETED else None


def compiled(test):
    """Defined only where the kernels are compiled, not interpreted (the parent process)."""
    return None if INTERPRETED else test


def parent_only(test):
    return None if CHILD else test
SEED = int(os.environ.get("FI_EVALS_TEST_SEED") or time.time_ns() % 2**31)
MAX_POSITIONS = 64
TOLERANCE = 1e-4  # relative: norm of the difference over norm of the reference
REPO = Path(__file__).resolve().parents[1]


def rng(salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + salt)


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


@pytest.fixture(scope="module")
def models(nli_checkpoint):
    """fp32 eager models of each family: hidden 64, 2 layers, 64 positions."""
    loaded = {}

    def get(family: str, dtype=torch.float32):
        key = (family, dtype)
        if key not in loaded:
            path = nli_checkpoint(family, max_positions=MAX_POSITIONS, hidden=64)
            loaded[key] = AutoModelForSequenceClassification.from_pretrained(
                path, attn_implementation="eager", dtype=dtype).eval()
        return loaded[key]

    return get


def random_batch(model, lengths, salt):
    g = rng(salt)
    vocab = model.config.vocab_size
    seqs = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]  # pad ids included on purpose
    types_vocab = getattr(model.config, "type_vocab_size", 1)
    types = [torch.randint(0, max(types_vocab, 1), (n,), generator=g) for n in lengths]
    return seqs, types


def hf_padded(model, seqs, types):
    """The Hugging Face eager forward over a right-padded batch: the reference."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.config.pad_token_id)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    token_types = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, (s, t) in enumerate(zip(seqs, types)):
        ids[i, :len(s)], mask[i, :len(s)], token_types[i, :len(t)] = s, 1, t
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=token_types).logits


def lengths_many(salt):
    g = rng(salt)
    middle = torch.randint(2, MAX_POSITIONS, (9,), generator=g).tolist()
    return [1, MAX_POSITIONS, *middle, 1]


# -- the choice of path -------------------------------------------------------------------------


def test_use_fused_decision(models, monkeypatch):
    bert = models("bert")
    monkeypatch.delenv("FI_EVALS_FUSED", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert fused_forward_available(bert)
    assert use_fused(bert, "cuda") and use_fused(bert, torch.device("cuda", 0))
    assert not use_fused(bert, "cpu")
    monkeypatch.setenv("FI_EVALS_FUSED", "1")
    assert not use_fused(bert, "cpu"), "never on the CPU without the interpreter"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_fused(bert, "cpu")
    monkeypatch.setenv("FI_EVALS_FUSED", "0")
    assert not use_fused(bert, "cuda") and not use_fused(bert, "cpu")
    monkeypatch.setenv("FI_EVALS_FUSED", "maybe")
    with pytest.raises(ValueError, match="FI_EVALS_FUSED"):
        use_fused(bert, "cuda")
    monkeypatch.delenv("FI_EVALS_FUSED")

    class Other:
        config = type("C", (), {"model_type": "gpt2"})()

    assert not fused_forward_available(Other()) and not use_fused(Other(), "cuda")
    assert "gpt2" in unsupported_reason(Other())
    original = bert.config.hidden_act
    bert.config.hidden_act = "gelu_new"
    try:
        assert not use_fused(bert, "cuda") and "hidden_act" in unsupported_reason(bert)
    finally:
        bert.config.hidden_act = original


def test_pack_and_limits(models):
    """Packing (no kernels run): lists or packed ids, token types, and the inputs it refuses."""
    from fi_evals_core.evals.fused import pack

    packed = pack([[5, 6, 7], [8]], token_type_ids=[[0, 0, 1], [1]])
    assert packed.cu_seqlens.tolist() == [0, 3, 4] and packed.cu_seqlens.dtype == torch.int32
    assert packed.ids.tolist() == [5, 6, 7, 8] and packed.token_types.tolist() == [0, 0, 1, 1]
    assert (packed.max_len, packed.lengths) == (3, [3, 1])
    again = pack(torch.tensor([5, 6, 7, 8]), [0, 3, 4])
    assert again.lengths == [3, 1] and again.cu_seqlens.tolist() == [0, 3, 4]
    with pytest.raises(ValueError, match="at least one token"):
        pack([[5], []])
    with pytest.raises(ValueError, match="cu_seqlens"):
        pack(torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="token_type_ids"):
        pack([[5, 6]], token_type_ids=[[0]])
    for family in ("bert", "roberta"):
        encoder = FusedEncoder(models(family))
        assert encoder.max_len == MAX_POSITIONS
        with pytest.raises(ValueError, match="longer than"):
            encoder([list(range(5, 6 + MAX_POSITIONS))])
    assert FusedEncoder(models("deberta-v2")).max_len is None  # relative positions only
    if not INTERPRETED:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            FusedEncoder(models("bert"))([[5, 6]])
    assert FusedEncoder(models("bert"))([]).shape == (0, 3)
    with pytest.raises(ValueError, match="no fused forward"):
        FusedEncoder(type("M", (), {"config": type("C", (), {"model_type": "t5"})()})())


# -- packed encoder vs Hugging Face eager, fp32 ----------------------------------------------------


@interpreted
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_packed_logits_match_hf_eager(models, family):
    model = models(family)
    encoder = FusedEncoder(model)
    assert encoder.attention == "triton"
    cases = {"one token": [1], "one at the maximum": [MAX_POSITIONS], "many": lengths_many(1)}
    for salt, (name, lengths) in enumerate(cases.items()):
        seqs, types = random_batch(model, lengths, 10 + salt)
        ref = hf_padded(model, seqs, types)
        out = encoder(seqs, token_type_ids=types)
        assert out.shape == ref.shape and torch.isfinite(out).all()
        err = relative(out, ref)
        assert err <= TOLERANCE, f"{family} {name} lengths={lengths}: relative error {err:.2e} (seed {SEED})"
    # the packed form: one id tensor with cu_seqlens
    packed = torch.cat(seqs)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    again = encoder(packed, cu, torch.cat(types))
    assert torch.equal(again, out), f"seed {SEED}"


@interpreted
def test_deberta_packing_and_head_match_pytorch_path(models):
    model = models("deberta-v2")
    encoder = FusedEncoder(model)
    lengths = lengths_many(2)
    seqs, types = random_batch(model, lengths, 20)
    ref = hf_padded(model, seqs, types)
    out = encoder(seqs, token_type_ids=types)
    err = relative(out, ref)
    assert err <= TOLERANCE, f"deberta-v2 lengths={lengths}: relative error {err:.2e} (seed {SEED})"
    # the head on its logits: 3 responses, the second without claims
    pair_claim = torch.tensor([0, 1, 1, 1, 2, 3, 3, 3, 3, 2, 1, 0])
    pair_claim = pair_claim[torch.randperm(len(lengths), generator=rng(21))]
    claim_response = torch.tensor([0, 0, 2, 2])
    fused = nli_head(out, 0, 2, pair_claim, claim_response, n_responses=3)
    oracle = nli_head_reference(ref, 0, 2, pair_claim, claim_response, n_responses=3)
    assert torch.allclose(fused.response_score, oracle.response_score, atol=1e-5), f"seed {SEED}"
    assert torch.allclose(fused.claim_support, oracle.claim_support, atol=1e-5), f"seed {SEED}"


@interpreted
def test_bf16_within_half_precision_of_fp32(models):
    """bf16 weights and activations, fp32 accumulation: as close to fp32 as HF's own bf16 forward."""
    lengths = lengths_many(3)
    fp32, bf16 = models("roberta"), models("roberta", torch.bfloat16)
    seqs, types = random_batch(fp32, lengths, 30)
    ref = hf_padded(fp32, seqs, types)
    out = FusedEncoder(bf16)(seqs, token_type_ids=types)
    assert out.dtype == torch.bfloat16
    hf_err = relative(hf_padded(bf16, seqs, types), ref)
    err = relative(out, ref)
    assert err <= max(3 * hf_err, 2e-2), f"bf16 fused {err:.2e} vs HF bf16 {hf_err:.2e} (seed {SEED})"


@interpreted
def test_bucketed_static_forward_matches(models):
    """The CUDA-graph buckets' static-shape forward (filler tokens, empty sequence slots), run eagerly."""
    for family in ("bert", "roberta"):
        model = models(family)
        encoder = FusedEncoder(model)
        seqs, types = random_batch(model, [5, MAX_POSITIONS, 1], 40)
        graphed = CudaGraphEncoder(encoder, token_step=32, capture=False)
        out = graphed(seqs, token_type_ids=types)
        assert list(graphed.buckets) == [(96, 8)]
        assert relative(out, encoder(seqs, token_type_ids=types)) <= 1e-6, f"{family} (seed {SEED})"


# -- kernels: every output element written ------------------------------------------------------------


@interpreted
def test_kernels_write_every_element():
    g = rng(50)
    lengths = [1, 16, 17, 40]
    heads, head_dim = 2, 16
    hidden = heads * head_dim
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    qkv = torch.randn(sum(lengths), 3 * hidden, generator=g)
    from fi_evals_core.evals.fused import kernels

    out = torch.full((sum(lengths), hidden), float("nan"))
    kernels.varlen_attention(qkv, cu, max(lengths), heads, out=out)
    assert not out.isnan().any(), f"seed {SEED}"
    for i, n in enumerate(lengths):
        x = qkv[cu[i]:cu[i] + n].view(n, 3, heads, head_dim).permute(1, 2, 0, 3)
        ref = torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2])
        ref = ref.permute(1, 0, 2).reshape(n, hidden)
        assert relative(out[cu[i]:cu[i] + n], ref) <= 1e-5, f"sequence {i} (seed {SEED})"

    rows, cols = 45, 50  # not a power of two, not a multiple of the row block
    x, res = torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g)
    bias, w, b = (torch.randn(cols, generator=g) for _ in range(3))
    out = torch.full((rows, cols), float("nan"))
    kernels.bias_residual_layernorm(x, bias, res, w, b, 1e-12, out=out)
    ref = torch.nn.functional.layer_norm(x + bias + res, (cols,), w, b, 1e-12)
    assert not out.isnan().any() and torch.allclose(out, ref, atol=1e-5), f"seed {SEED}"
    ids = torch.randint(0, 30, (rows,), generator=g)
    pos = torch.randint(0, 10, (rows,), generator=g)
    types = torch.randint(0, 2, (rows,), generator=g)
    word, pos_table, type_table = (torch.randn(n, cols, generator=g) for n in (30, 10, 2))
    out = torch.full((rows, cols), float("nan"))
    kernels.embed_layernorm(ids, pos, types, word, pos_table, type_table, w, b, 1e-12, out=out)
    ref = torch.nn.functional.layer_norm(word[ids] + pos_table[pos] + type_table[types], (cols,), w, b, 1e-12)
    assert not out.isnan().any() and torch.allclose(out, ref, atol=1e-5), f"seed {SEED}"
    y = x.clone()
    kernels.bias_gelu_(y, bias)
    assert torch.allclose(y, torch.nn.functional.gelu(x + bias), atol=1e-6), f"seed {SEED}"


@compiled
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_kernels_compile_for_h100_and_a100():
    """Every kernel, with the launchers' block sizes, compiled to sm_90 and sm_80 cubins by Triton's
    bundled ptxas: what the interpreter cannot check (loop-carried types, shared memory, registers)."""
    from fi_evals_core.evals.fused import kernels

    compiled = kernels.compile_for_gpu(90) + kernels.compile_for_gpu(80, dtypes=("bf16",))
    assert len(compiled) == 20, compiled


# -- the fused head ---------------------------------------------------------------------------------


def check_head(logits, support, contradiction, pair_claim, claim_response, n_responses):
    """Fused head vs PyTorch: probabilities to fp32 rounding, the aggregation exactly."""
    n_claims = claim_response.numel()
    out = empty_outputs(logits.shape[0], n_claims, n_responses, "cpu", fill=float("nan"))
    fused = nli_head(logits, support, contradiction, pair_claim, claim_response, n_responses=n_responses,
                     out=out)
    for name, value in fused._asdict().items():
        if value.dtype.is_floating_point:
            assert not value.isnan().any(), f"{name} not fully written (seed {SEED})"
        else:
            assert (value != -(2 ** 31)).all(), f"{name} not fully written (seed {SEED})"
    oracle = nli_head_reference(logits, support, contradiction, pair_claim, claim_response,
                                n_responses=n_responses)
    for name in ("pair_support", "pair_contradiction"):
        a, b = getattr(fused, name), getattr(oracle, name)
        assert torch.allclose(a, b, rtol=0, atol=1e-6), f"{name} (seed {SEED})"
    # the aggregation, exactly: the PyTorch aggregation of the kernel's own pair probabilities
    order, cu_pairs, cu_claims, _, _ = _segments(pair_claim, claim_response, None, n_responses)
    again = aggregate(fused.pair_support, fused.pair_contradiction, order, cu_pairs, cu_claims)
    for name, a, b in zip(fused._fields, fused, again):
        assert torch.equal(a, b), f"{name}: {a} != {b} (seed {SEED})"
    return fused, oracle


@interpreted
def test_head_hand_built():
    # response 0: claim 0 with one chunk, claim 1 with five; response 1: no claims;
    # response 2: claim 2 without chunks, claim 3 with three chunks that tie
    logits = torch.tensor([
        [2.0, 0.0, -1.0],  # claim 1
        [0.0, 0.0, 3.0],   # claim 3 (tie)
        [-1.0, 0.5, 0.0],  # claim 0, its only chunk
        [4.0, 0.0, 0.0],   # claim 1, best support
        [0.0, 0.0, 3.0],   # claim 3 (tie)
        [0.0, 1.0, 5.0],   # claim 1, strongest contradiction
        [1.0, 1.0, 1.0],   # claim 1
        [0.0, 0.0, 3.0],   # claim 3 (tie)
        [4.0, 0.0, 0.0],   # claim 1, ties the best: the earlier pair (3) wins
    ])
    pair_claim = torch.tensor([1, 3, 0, 1, 3, 1, 1, 3, 1])
    claim_response = torch.tensor([0, 0, 2, 2])
    fused, oracle = check_head(logits, 0, 2, pair_claim, claim_response, 3)
    assert fused.claim_best.tolist() == [2, 3, -1, 1] == oracle.claim_best.tolist()
    assert fused.claim_worst.tolist() == [2, 5, -1, 1] == oracle.claim_worst.tolist()
    assert fused.claim_support[2] == 0 and fused.claim_contradiction[2] == 0
    probs = torch.softmax(logits, -1)
    assert fused.claim_support.tolist() == pytest.approx(
        [probs[2, 0].item(), probs[3, 0].item(), 0.0, probs[1, 0].item()], abs=1e-6)
    # what FactualConsistency computes from the per-claim maxima (a Python sum over claims)
    claims = fused.claim_support.tolist()
    assert fused.response_score.tolist() == [(claims[0] + claims[1]) / 2, 0.0, (claims[2] + claims[3]) / 2]
    assert fused.response_worst.tolist() == [1, -1, 3] == oracle.response_worst.tolist()
    assert fused.response_contradiction[0] == fused.claim_contradiction[1]
    # a 2-way checkpoint: no contradiction label, contradiction written as 0
    two_way = check_head(logits[:, :2], 1, None, pair_claim, claim_response, 3)[0]
    assert not two_way.pair_contradiction.any() and two_way.response_worst.tolist() == [0, -1, 2]


@interpreted
def test_head_random_segments():
    """Many claims with one chunk and with many (more than one block of pairs), shuffled pairs."""
    g = rng(60)
    n_responses = 7
    claims_per = torch.randint(0, 5, (n_responses,), generator=g)
    claim_response = torch.repeat_interleave(torch.arange(n_responses), claims_per)
    chunks = torch.randint(0, 40, (claim_response.numel(),), generator=g)
    chunks[: min(3, chunks.numel())] = 1
    pair_claim = torch.repeat_interleave(torch.arange(chunks.numel()), chunks)
    pair_claim = pair_claim[torch.randperm(pair_claim.numel(), generator=g)]
    logits = torch.randn(pair_claim.numel(), 3, generator=g) * 3
    fused, oracle = check_head(logits, 1, 0, pair_claim, claim_response, n_responses)
    assert torch.allclose(fused.response_score, oracle.response_score, atol=1e-6), f"seed {SEED}"


def test_head_rejects_unordered_claims():
    with pytest.raises(ValueError, match="non-decreasing"):
        nli_head(torch.zeros(2, 3), 0, 2, torch.tensor([0, 1]), torch.tensor([1, 0]))


# -- the GPU benchmark, end to end on the CPU ---------------------------------------------------------


@compiled
@parent_only
def test_fused_path_under_interpreter():
    """Every @interpreted test of this file, in a child pytest started with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "FI_EVALS_FUSED_TEST_CHILD": "1",
           "FI_EVALS_TEST_SEED": str(SEED), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"seed {SEED}\n{report}"
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 11, report  # the @interpreted tests ran
    assert "skipped" not in result.stdout, report


@parent_only
def test_gpu_benchmark_smoke_run(tmp_path):
    """`benchmarks/nli_fused_gpu.py --smoke`: tiny shapes, the interpreter, every variant and the table."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "nli_fused_gpu.py"), "--smoke",
                             "--json", str(tmp_path / "out.json")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "pairs/s" in result.stdout and "fused" in result.stdout
    assert (tmp_path / "out.json").exists()


@parent_only
def test_the_scorer_takes_the_fused_path_when_chosen(nli_checkpoint):
    """NLIScorer with FI_EVALS_FUSED=1 under the interpreter runs FusedEncoder, with the same scores
    as the PyTorch path; FI_EVALS_FUSED=0 keeps PyTorch; a bad value names the variable."""
    script = (
        "import os, sys\n"
        "from fi_evals_core.evals import FactualConsistency, NLIScorer\n"
        "fused = NLIScorer.from_pretrained(sys.argv[1], device='cpu')\n"
        "os.environ['FI_EVALS_FUSED'] = '0'\n"
        "plain = NLIScorer.from_pretrained(sys.argv[1], device='cpu')\n"
        "assert fused.fused is not None and plain.fused is None\n"
        "doc = 'The council approved a new arena on Tuesday. Tickets go on sale in May. ' * 3\n"
        "a = FactualConsistency(scorer=fused).evaluate(response='Tickets go on sale in May.', reference=doc)\n"
        "b = FactualConsistency(scorer=plain).evaluate(response='Tickets go on sale in May.', reference=doc)\n"
        "assert abs(a.score - b.score) < 1e-5, (a.score, b.score)\n"
        "os.environ['FI_EVALS_FUSED'] = 'sometimes'\n"
        "try:\n"
        "    NLIScorer.from_pretrained(sys.argv[1], device='cpu')\n"
        "except ValueError as exc:\n"
        "    assert 'FI_EVALS_FUSED' in str(exc)\n"
        "    print('OK')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "FI_EVALS_FUSED": "1"}
    result = subprocess.run([sys.executable, "-c", script, nli_checkpoint("roberta")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
