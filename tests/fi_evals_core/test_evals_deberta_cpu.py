"""The DeBERTa-v2/v3 CPU attention (`fi_evals_core.evals.deberta_cpu`) against transformers' eager one:
same logits (fp32, 1e-4 relative) on tiny random checkpoints of the configurations real checkpoints
use, padded batches, lengths 1..512; the same scores through the scorer; the switch that turns it off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from fi_evals_core.evals import FactualConsistency, NLIScorer
from fi_evals_core.evals.deberta_cpu import accelerate_for_cpu, bucket_position, restore_eager, supports
from fi_evals_core.testing.tiny_nli import CROSS_ENCODER_LABELS, NLI_LABELS

QAGS = json.loads((Path(__file__).parent / "fixtures" / "qags_xsum_sample.json").read_text())
VOCAB = 300

# What real checkpoints set (DeBERTa-v3 base/large and MiniCheck-DeBERTa: buckets 256, shared keys,
# layer-normed relative embeddings; DeBERTa-v2-xlarge: buckets 256 too; older v2-style configs: no
# buckets, separate position projections, a capped relative span), shrunk to hidden 32.
CONFIGS = {
    "v3": dict(position_buckets=256, max_relative_positions=-1, share_att_key=True, norm_rel_ebd="layer_norm",
               pos_att_type=["p2c", "c2p"]),
    "v3-tiny-buckets": dict(position_buckets=64, max_relative_positions=-1, share_att_key=True,
                            norm_rel_ebd="layer_norm", pos_att_type=["p2c", "c2p"]),
    "no-buckets": dict(position_buckets=-1, max_relative_positions=-1, share_att_key=True, norm_rel_ebd="none",
                       pos_att_type=["p2c", "c2p"]),
    "capped-span": dict(position_buckets=-1, max_relative_positions=128, share_att_key=False,
                        norm_rel_ebd="none", pos_att_type=["c2p", "p2c"]),
    "buckets-capped": dict(position_buckets=32, max_relative_positions=256, share_att_key=False,
                           norm_rel_ebd="layer_norm", pos_att_type=["p2c", "c2p"]),
    "c2p-only": dict(position_buckets=256, max_relative_positions=-1, share_att_key=True, norm_rel_ebd="layer_norm",
                     pos_att_type=["c2p"]),
    "p2c-only": dict(position_buckets=-1, max_relative_positions=64, share_att_key=False, norm_rel_ebd="none",
                     pos_att_type=["p2c"]),
}


def tiny_deberta(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> DebertaV2ForSequenceClassification:
    config = DebertaV2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                             position_biased_input=False, type_vocab_size=0, num_labels=3, initializer_range=0.2,
                             **CONFIGS[name])
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, so a wrong table would show
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return model.to(dtype)


def batch(lengths: list[int], *, seed: int = 1, left: bool = False) -> dict[str, torch.Tensor]:
    """Random ids padded to the longest length (right padding, or left padding with `left`)."""
    gen = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, n in enumerate(lengths):
        span = slice(longest - n, longest) if left else slice(0, n)
        ids[row, span] = torch.randint(5, VOCAB, (n,), generator=gen)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits.float()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def eager_and_fast(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    restore_eager(model)
    ref = logits(model, inputs)
    accelerate_for_cpu(model)
    assert model._fi_cpu_fast is True
    return ref, logits(model, inputs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("lengths", [[1], [2, 1], [7, 3, 5], [130, 64, 129, 1], [300, 257, 12], [512, 511, 256, 40]])
def test_fast_path_logits_equal_eager(name, lengths):
    model = tiny_deberta(name)
    ref, fast = eager_and_fast(model, batch(lengths))
    assert rel_diff(fast, ref) < 1e-4


def test_padded_rows_equal_unpadded_rows():
    model = tiny_deberta("v3")
    accelerate_for_cpu(model)
    lengths = [200, 17, 1, 64]
    padded = logits(model, batch(lengths))
    full = batch(lengths)
    for row, n in enumerate(lengths):
        single = {k: v[row:row + 1, :n] for k, v in full.items()}
        assert rel_diff(logits(model, single)[0], padded[row]) < 1e-4


def test_left_padding_hidden_states():
    """With left padding token 0 is padding (a classifier's logits are then meaningless either way);
    every unpadded position's hidden state still equals eager's."""
    model = tiny_deberta("v3-tiny-buckets")
    inputs = batch([90, 33, 61], left=True)
    valid = inputs["attention_mask"].bool()
    with torch.inference_mode():
        restore_eager(model)
        ref = model.deberta(**inputs).last_hidden_state[valid]
        accelerate_for_cpu(model)
        fast = model.deberta(**inputs).last_hidden_state[valid]
    assert rel_diff(fast, ref) < 1e-4


@pytest.mark.parametrize("length", [1, 2, 3, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 510, 511, 512])
def test_every_length_regime(length):
    """Around the bucket boundaries (mid = buckets / 2) and the span, at full length."""
    model = tiny_deberta("v3", seed=length)
    ref, fast = eager_and_fast(model, batch([length, max(1, length // 3)], seed=length))
    assert rel_diff(fast, ref) < 1e-4


def test_bucket_position_matches_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = torch.arange(-1023, 1024)
    for buckets, max_pos in [(256, 512), (64, 512), (32, 256), (256, 1024)]:
        assert torch.equal(bucket_position(rel, buckets, max_pos), make_log_bucket_position(rel, buckets, max_pos).long())


def test_weights_changed_after_install_are_followed():
    """The cached position projections follow in-place weight changes (fine-tuning, load_state_dict)."""
    model = tiny_deberta("v3")
    inputs = batch([50, 20])
    accelerate_for_cpu(model)
    logits(model, inputs)  # fills the caches
    with torch.no_grad():
        model.deberta.encoder.rel_embeddings.weight.mul_(1.7)
        model.deberta.encoder.layer[0].attention.self.key_proj.weight.add_(0.05)
    ref, fast = eager_and_fast(model, inputs)
    assert rel_diff(fast, ref) < 1e-4
    other = tiny_deberta("v3", seed=9)
    model.load_state_dict(other.state_dict())
    assert rel_diff(logits(model, inputs), logits(restore_eager(other), inputs)) < 1e-4


def test_falls_back_to_eager_where_it_does_not_apply():
    model = tiny_deberta("v3")
    inputs = batch([30, 12])
    ref = logits(model, inputs)
    accelerate_for_cpu(model)
    with torch.inference_mode():  # attention maps asked for: the eager path returns them
        out = model(**inputs, output_attentions=True)
    assert out.attentions is not None and out.attentions[0] is not None
    assert rel_diff(out.logits, ref) < 1e-4
    model.train()  # training (dropout, gradients): eager
    torch.manual_seed(0)
    loss = model(**inputs).logits.sum()
    loss.backward()
    assert model.deberta.encoder.layer[0].attention.self.query_proj.weight.grad is not None


def test_bf16_close_to_fp32():
    """In bf16 both paths round differently; both stay close to the fp32 logits."""
    inputs = batch([300, 200, 77])
    ref = logits(tiny_deberta("v3"), inputs)
    model = tiny_deberta("v3", dtype=torch.bfloat16)
    eager, fast = eager_and_fast(model, inputs)
    assert rel_diff(eager, ref) < 5e-2
    assert rel_diff(fast, ref) < 5e-2


def test_only_deberta_v2_on_cpu(nli_checkpoint, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(nli_checkpoint("bert"))
    assert not supports(bert)
    assert accelerate_for_cpu(bert) is bert and not getattr(bert, "_fi_cpu_fast", False)
    model = tiny_deberta("v3")
    assert supports(model)
    monkeypatch.setenv("FI_EVALS_FUSED", "0")
    assert not getattr(accelerate_for_cpu(model), "_fi_cpu_fast", False)


@pytest.mark.parametrize("labels", [NLI_LABELS, CROSS_ENCODER_LABELS])
def test_scorer_picks_fast_path_and_scores_are_unchanged(nli_checkpoint, monkeypatch, labels):
    path = nli_checkpoint("deberta-v2", labels, extra_text=tuple(q["document"] for q in QAGS))
    items = [{"response": q["summary"], "reference": q["document"]} for q in QAGS]

    monkeypatch.setenv("FI_EVALS_FUSED", "0")
    eager = NLIScorer.from_pretrained(path, device="cpu", dtype="float32", batch_size=3, chunk_tokens=64)
    assert not getattr(eager.model, "_fi_cpu_fast", False)
    monkeypatch.delenv("FI_EVALS_FUSED")
    fast = NLIScorer.from_pretrained(path, device="cpu", dtype="float32", batch_size=3, chunk_tokens=64)
    assert fast.model._fi_cpu_fast is True

    expected = FactualConsistency(scorer=eager).evaluate_batch(items)
    got = FactualConsistency(scorer=fast).evaluate_batch(items)
    for e, g in zip(expected, got):
        assert g.score == pytest.approx(e.score, abs=1e-5)
        assert g.passed == e.passed
        for ce, cg in zip(e.claims, g.claims):
            assert cg.support == pytest.approx(ce.support, abs=1e-5)
            assert cg.contradiction == pytest.approx(ce.contradiction, abs=1e-5)
            assert cg.evidence == ce.evidence
