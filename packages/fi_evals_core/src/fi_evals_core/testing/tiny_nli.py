"""Tiny random NLI / fact-checking checkpoints of the real architectures, built locally.

BERT, RoBERTa and DeBERTa-v2 sequence classifiers (hidden 32, 2 layers) with a locally trained
WordPiece tokenizer wearing each family's pair template, saved with `save_pretrained` so the scorer
loads them exactly as it loads a hub checkpoint. Weights are random: tests check mechanics and
numerics, never accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .tiny_models import synthetic_corpus

if TYPE_CHECKING:  # torch, tokenizers and transformers are imported where a checkpoint is built
    from transformers import PreTrainedTokenizerFast

FAMILIES = ("bert", "roberta", "deberta-v2")
NLI_LABELS = ("entailment", "neutral", "contradiction")
CROSS_ENCODER_LABELS = ("contradiction", "entailment", "neutral")
MINICHECK_LABELS = ("unsupported", "supported")
VOCAB = 1200


def _specials(family: str) -> dict[str, str]:
    if family == "roberta":
        return {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>", "mask": "<mask>"}
    return {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}


def build_nli_tokenizer(dirpath: Path, family: str, extra_text: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = _specials(family)
    tok = Tokenizer(models.WordPiece(unk_token=sp["unk"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=[sp["pad"], sp["unk"], sp["cls"],
                                                                          sp["sep"], sp["mask"]],
                                        show_progress=False)
    tok.train_from_iterator([*synthetic_corpus(), *extra_text], trainer=trainer)
    cls, sep = sp["cls"], sp["sep"]
    ids = [(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))]
    if family == "roberta":  # <s> A </s></s> B </s>, no token types
        pair = f"{cls} $A {sep} {sep} $B {sep}"
    else:  # [CLS] A [SEP] B [SEP] with token types 0 / 1
        pair = f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"
    tok.post_processor = processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=pair, special_tokens=ids)
    # eos is the separator, as in RoBERTa's (</s>) and DeBERTa-v3's ([SEP]) tokenizers: MiniCheck joins
    # chunk and claim with it
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=cls, sep_token=sep, eos_token=sep,
                                 pad_token=sp["pad"], unk_token=sp["unk"], mask_token=sp["mask"],
                                 model_max_length=512)
    if family == "roberta":
        hf.model_input_names = ["input_ids", "attention_mask"]
    hf.save_pretrained(dirpath)
    return hf


def build_nli_checkpoint(dirpath: str | Path, family: str = "bert", labels: Sequence[str] = NLI_LABELS,
                         *, seed: int = 0, max_positions: int = 512, hidden: int = 32, layers: int = 2,
                         extra_text: Sequence[str] = (), type_vocab_size: int = 2,
                         initializer_range: float = 0.1) -> Path:
    """Save a random `family` sequence classifier whose `id2label` is `labels`, in that order
    (DeBERTa-v3 checkpoints such as MiniCheck's have `type_vocab_size=0`: no token types)."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    dirpath = Path(dirpath)
    tok = build_nli_tokenizer(dirpath, family, extra_text)
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=hidden * 2, num_labels=len(labels),
                  id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                  pad_token_id=tok.pad_token_id, initializer_range=initializer_range)
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(max_position_embeddings=max_positions, **common))
    elif family == "roberta":
        config = RobertaConfig(max_position_embeddings=max_positions + tok.pad_token_id + 1, type_vocab_size=1,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, **common)
        model = RobertaForSequenceClassification(config)
    elif family == "deberta-v2":
        config = DebertaV2Config(max_position_embeddings=max_positions, relative_attention=True,
                                 position_buckets=64, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                 max_relative_positions=-1, type_vocab_size=type_vocab_size, **common)
        model = DebertaV2ForSequenceClassification(config)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    model.eval().save_pretrained(dirpath)
    return dirpath


def build_alignscore_checkpoint(path: str | Path, backbone: str | Path, *, seed: int = 0, spread: float = 0.3,
                                head_std: float = 0.3) -> Path:
    """A random checkpoint of AlignScore's released shape at `path` (a `.ckpt`): a PyTorch
    Lightning dict whose `state_dict` holds `base_model.*` (the backbone's encoder with its pooler),
    `mlm_head.*`, `bin_layer`, `tri_layer` and `reg_layer`, and whose `hyper_parameters["model"]`
    names the backbone (`backbone`: a local folder with a config and tokenizer, e.g. a tiny RoBERTa
    from `build_nli_checkpoint`)."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(backbone)
    base = AutoModel.from_config(config, add_pooling_layer=True)
    for name, parameter in base.named_parameters():  # random, not the initialiser's zeros for biases
        if "LayerNorm.weight" in name:
            torch.nn.init.normal_(parameter, mean=1.0, std=0.1)
        else:
            torch.nn.init.normal_(parameter, std=spread)
    hidden = config.hidden_size
    heads = {"bin_layer": torch.nn.Linear(hidden, 2), "tri_layer": torch.nn.Linear(hidden, 3),
             "reg_layer": torch.nn.Linear(hidden, 1), "mlm_head.dense": torch.nn.Linear(hidden, hidden)}
    for layer in heads.values():
        torch.nn.init.normal_(layer.weight, std=head_std)
    state = {f"base_model.{k}": v for k, v in base.state_dict().items()}
    for name, layer in heads.items():
        state.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    path = Path(path)
    torch.save({"state_dict": state, "hyper_parameters": {"model": str(backbone), "using_pretrained": True},
                "pytorch-lightning_version": "1.7.7", "epoch": 0, "global_step": 0}, path)
    return path
