"""oneDNN-packed linears (`fi_evals_core.evals.cpu_linear`) against `nn.Linear`: the same logits on
tiny random BERT, RoBERTa and DeBERTa-v2 classifiers (fp32 1e-5 relative, bf16 identical GEMMs),
weights changed after packing followed, training and gradients untouched, the off switch, and the
scorer loading models with it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from fi_evals_core.evals import NLIScorer
from fi_evals_core.evals.cpu_linear import available, pack_linears, unpack_linears

FAMILIES = ("bert", "roberta", "deberta-v2")


def inputs(model, lengths=(40, 17, 3), seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.full((len(lengths), longest), model.config.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, model.config.vocab_size, (n,), generator=gen)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch).logits.float()


def load(path: str, dtype=torch.float32):
    return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).eval()


def test_op_is_available_here():
    """The speed-up is only real if this torch has the op: it must, on the machines the project targets."""
    assert available()


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_logits_equal_plain(nli_checkpoint, family):
    model = load(nli_checkpoint(family))
    batch = inputs(model)
    ref = logits(model, batch)
    pack_linears(model)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model._fi_packed_linears == n_linear > 0
    fused_gelu = [m for m in model.modules() if hasattr(m, "_fi_block_forward")]
    assert len(fused_gelu) == model.config.num_hidden_layers  # every FFN's dense + GELU is one op
    got = logits(model, batch)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5
    assert all(m._fi_packed is not None for m in model.modules() if isinstance(m, torch.nn.Linear))
    unpack_linears(model)
    assert torch.equal(logits(model, batch), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_close_to_plain_bf16(nli_checkpoint, family):
    """Where this CPU has oneDNN's bf16 packed linear: the same GEMMs (close to the plain forward).
    Where it has not (no AVX-512 BW/VL/DQ nor AVX-NE-CONVERT): the plain forward, unchanged, and
    no error (the op itself raises there)."""
    model = load(nli_checkpoint(family), torch.bfloat16)
    batch = inputs(model)
    ref = logits(model, batch)
    got = logits(pack_linears(model), batch)
    packed = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m._fi_packed is not None]
    if available(torch.bfloat16):
        assert packed
        # Same GEMMs; the FFN's GELU is applied before rounding to bf16 instead of after.
        assert ((got - ref).norm() / ref.norm()).item() < 2e-2
    else:
        assert packed == [] and torch.equal(got, ref)


def test_weights_changed_after_packing_are_followed(nli_checkpoint):
    model = pack_linears(load(nli_checkpoint("bert")))
    batch = inputs(model)
    logits(model, batch)  # packs
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(1.5)
        model.classifier.weight.add_(0.3)
    got = logits(model, batch)
    assert torch.allclose(got, logits(unpack_linears(model), batch), rtol=1e-5, atol=1e-6)
    pack_linears(model)
    other = load(nli_checkpoint("bert", seed=7))
    model.load_state_dict(other.state_dict())
    assert torch.allclose(logits(model, batch), logits(other, batch), rtol=1e-5, atol=1e-6)


def test_training_and_gradients_use_the_plain_forward(nli_checkpoint):
    model = pack_linears(load(nli_checkpoint("roberta")))
    batch = inputs(model)
    model.train()
    model(**batch).logits.sum().backward()
    assert model.classifier.dense.weight.grad is not None
    model.eval()
    with torch.no_grad():  # grad mode off is not required: inference_mode and no_grad both pack
        model(**batch)
    assert model.classifier.dense._fi_packed is not None


def test_switched_off(nli_checkpoint, monkeypatch):
    monkeypatch.setenv("FI_EVALS_FUSED", "0")
    model = pack_linears(load(nli_checkpoint("bert")))
    assert not getattr(model, "_fi_packed_linears", 0)
    assert not any(hasattr(m, "_fi_linear_forward") for m in model.modules())


def test_scorer_loads_with_packed_linears(nli_checkpoint, monkeypatch):
    path = nli_checkpoint("roberta")
    fast = NLIScorer.from_pretrained(path, device="cpu", dtype="float32")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in fast.model.modules())
    assert fast.model._fi_packed_linears == n_linear > 0  # every linear layer of the model
    monkeypatch.setenv("FI_EVALS_FUSED", "0")
    plain = NLIScorer.from_pretrained(path, device="cpu", dtype="float32")
    assert not getattr(plain.model, "_fi_packed_linears", 0)
    premises = ["The cat sat on the mat. It was warm.", "Rain fell all day in the town."]
    claims = ["A cat sat down.", "It was sunny."]
    got, got_c = fast.score_pairs(premises, claims)
    ref, ref_c = plain.score_pairs(premises, claims)
    assert got == pytest.approx(ref, abs=1e-5) and got_c == pytest.approx(ref_c, abs=1e-5)
