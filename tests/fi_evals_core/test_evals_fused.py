"""The fused NLI path (fi_evals_core.evals.fused) checked on the CPU: no GPU needed.

- Numerics under Triton's interpreter. Triton decides interpreter or compiler when a function is
  decorated with `@triton.jit`, including its own library functions, decorated when triton is first
  imported (transformers imports it through torch._dynamo): so the test session sets
  TRITON_INTERPRET=1 before anything imports torch (tests/conftest.py), and every test here runs in
  it. Shapes are tiny (hidden 64, 2 layers, at most 64 positions): interpreted kernels are slow.
- Compilation for the GPU: every kernel compiled to sm_90 / sm_80 cubins by Triton's bundled ptxas,
  in a child process without the interpreter (`python -m fi_evals_core.testing.triton_aot`).
- The GPU benchmark end to end with `--smoke` (tiny shapes, interpreter, in a subprocess).

Inputs are fresh random draws each run, seeded from the clock; every assertion message carries the
seed, and `FI_EVALS_TEST_SEED=<seed>` replays a failing run.
"""

from __future__ import annotations

import json
import os
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
    unsupported_reason,
    use_fused,
)
from fi_evals_core.evals.fused.encoder import CudaGraphEncoder  # noqa: E402

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # never skipped: the session must set it
    raise RuntimeError("tests/fi_evals_core/test_evals_fused.py needs TRITON_INTERPRET=1 from the start "
                       "(tests/conftest.py)")
SEED = int(os.environ.get("FI_EVALS_TEST_SEED") or time.time_ns() % 2**31)
MAX_POSITIONS = 64
TOLERANCE = 1e-4  # relative: norm of the difference over norm of the reference
REPO = Path(__file__).resolve().parents[2]


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
    monkeypatch.delenv("FI_EVALS_ACCELERATION", raising=False)
    monkeypatch.delenv("FI_EVALS_FUSED", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert fused_forward_available(bert)
    assert use_fused(bert, "cuda") and use_fused(bert, torch.device("cuda", 0))
    assert not use_fused(bert, "cpu")
    monkeypatch.setenv("FI_EVALS_ACCELERATION", "on")
    assert not use_fused(bert, "cpu"), "never on the CPU without the interpreter"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_fused(bert, "cpu")
    monkeypatch.setenv("FI_EVALS_ACCELERATION", "off")
    assert not use_fused(bert, "cuda") and not use_fused(bert, "cpu")
    monkeypatch.setenv("FI_EVALS_ACCELERATION", "maybe")
    with pytest.raises(ValueError, match="FI_EVALS_ACCELERATION='maybe' is not valid"):
        use_fused(bert, "cuda")
    monkeypatch.delenv("FI_EVALS_ACCELERATION")
    monkeypatch.setenv("FI_EVALS_FUSED", "0")  # the older name still works, and is named in errors
    assert not use_fused(bert, "cuda")
    monkeypatch.setenv("FI_EVALS_FUSED", "sometimes")
    with pytest.raises(ValueError, match="FI_EVALS_FUSED='sometimes' is not valid"):
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
    assert FusedEncoder(models("bert"))([]).shape == (0, 3)
    with pytest.raises(ValueError, match="no fused forward"):
        FusedEncoder(type("M", (), {"config": type("C", (), {"model_type": "t5"})()})())


# -- packed encoder vs Hugging Face eager, fp32 ----------------------------------------------------


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


def test_deberta_packing_matches_pytorch_path(models):
    model = models("deberta-v2")
    encoder = FusedEncoder(model)
    lengths = lengths_many(2)
    seqs, types = random_batch(model, lengths, 20)
    ref = hf_padded(model, seqs, types)
    out = encoder(seqs, token_type_ids=types)
    err = relative(out, ref)
    assert err <= TOLERANCE, f"deberta-v2 lengths={lengths}: relative error {err:.2e} (seed {SEED})"


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


def test_kernels_compile_for_h100_and_a100():
    """Every kernel, with the launchers' block sizes, compiled to sm_90 and sm_80 cubins by Triton's
    bundled ptxas: what the interpreter cannot check (loop-carried types, shared memory, registers).
    In a child without TRITON_INTERPRET: kernels defined for the interpreter cannot be compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "fi_evals_core.testing.triton_aot", "90", "80:bf16"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    compiled = result.stdout.splitlines()
    assert len(compiled) == 16 and all(" sm_" in line for line in compiled), compiled  # 4 kernels x (3 + 1)


# -- the GPU benchmark, end to end on the CPU ---------------------------------------------------------


def test_gpu_benchmark_smoke_run(tmp_path):
    """`benchmarks/nli_fused_gpu.py --smoke`: tiny shapes, the interpreter, every variant and the table."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "nli_fused_gpu.py"), "--smoke",
                             "--json", str(tmp_path / "out.json")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "pairs/s" in result.stdout and "fused" in result.stdout
    results = json.loads((tmp_path / "out.json").read_text())
    assert [m["model"] for m in results["models"]] == ["roberta-large", "deberta-v3-base"]
    for model in results["models"]:
        assert model["check_ok"] is True and model["errors"] == {} and model["pairs"] == 4, model
        assert model["check"]["fused-fp32 vs hf-eager-fp32"] <= 1e-4
    # on the CPU `auto` is the Triton kernel (no separate fused-triton row); graphs only where packed
    assert [[r["variant"] for r in m["rows"]] for m in results["models"]] == [
        ["hf-eager-fp32", "hf-sdpa-bf16", "fused", "fused-graphs"],
        ["hf-eager-fp32", "hf-sdpa-bf16", "fused"]]
    assert all(r["pairs_per_s"] > 0 for m in results["models"] for r in m["rows"])


def test_the_scorer_takes_the_fused_path_when_chosen(nli_checkpoint, monkeypatch):
    """NLIScorer with FI_EVALS_ACCELERATION=on under the interpreter runs FusedEncoder, with the same
    scores as the PyTorch path; off keeps PyTorch; a bad value names the variable."""
    from fi_evals_core.evals import FactualConsistency, NLIScorer
    from fi_evals_core.telemetry import ConfigError

    path = nli_checkpoint("roberta")
    monkeypatch.setenv("FI_EVALS_ACCELERATION", "on")
    fused = NLIScorer.from_pretrained(path, device="cpu")
    monkeypatch.setenv("FI_EVALS_ACCELERATION", "off")
    plain = NLIScorer.from_pretrained(path, device="cpu")
    assert fused.fused is not None and plain.fused is None
    doc = "The council approved a new arena on Tuesday. Tickets go on sale in May. " * 3
    a = FactualConsistency(scorer=fused).evaluate(response="Tickets go on sale in May.", reference=doc)
    b = FactualConsistency(scorer=plain).evaluate(response="Tickets go on sale in May.", reference=doc)
    assert abs(a.score - b.score) < 1e-5, (a.score, b.score)
    monkeypatch.setenv("FI_EVALS_ACCELERATION", "sometimes")
    with pytest.raises(ConfigError, match="FI_EVALS_ACCELERATION"):
        NLIScorer.from_pretrained(path, device="cpu")
