"""AlignScore's released checkpoints (`AlignScore-base.ckpt`, `AlignScore-large.ckpt`) as a
sequence-classification model the scorer loads like any other.

AlignScore (Zha et al. 2023) ships a PyTorch Lightning checkpoint of its `BERTAlignModel`: a
RoBERTa (or BERT) encoder under `base_model.`, its pooler (dense + tanh on the first token), and
three heads on the pooled output, `tri_layer` (3-way: aligned / neutral / contradiction, the head
its default `nli_sp` mode reads), `bin_layer` (2-way) and `reg_layer` (regression), plus an MLM
head used in training. There is no `config.json`: the backbone is named in the checkpoint's
`hyper_parameters["model"]` (`roberta-large`), whose config and tokenizer it uses.

RoBERTa's sequence-classification head is dense + tanh on the first token, then a linear layer:
the pooler and `tri_layer` exactly, so the conversion moves weights and changes no maths (BERT's
is the pooler then a linear layer: the same). The converted model (with `id2label` entailment /
neutral / contradiction, MNLI's order, which AlignScore trains its 3-way head on) and the
backbone's tokenizer are saved once under `FI_EVALS_CACHE` (default `~/.cache/fi_evals`) keyed by
the checkpoint file's path, size and modification time; the other heads are kept beside them in
`alignscore_heads.pt`. The checkpoint is read with `weights_only=True`: no code in it runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

LABELS = ("entailment", "neutral", "contradiction")
HEADS_FILE = "alignscore_heads.pt"


def cache_root() -> Path:
    return Path(os.environ.get("FI_EVALS_CACHE") or Path.home() / ".cache" / "fi_evals")


def converted_checkpoint(path: str | Path) -> Path:
    """The folder of the converted model for AlignScore checkpoint `path` (converted on first use)."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"no AlignScore checkpoint at {path}")
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    target = cache_root() / "alignscore" / key
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        convert(source, work)
        try:
            work.rename(target)  # atomic: a reader sees a whole folder or none
        except OSError:  # another process converted it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def convert(checkpoint: Path, out: Path) -> None:
    """Write `checkpoint` as a `save_pretrained` folder (model, tokenizer, the other heads) in `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - said with the file's name
        raise ValueError(f"{checkpoint}: not a readable PyTorch Lightning checkpoint ({exc})") from None
    state: dict[str, Any] = data.get("state_dict", data) if isinstance(data, dict) else {}
    backbone = (data.get("hyper_parameters") or {}).get("model") if isinstance(data, dict) else None
    if not any(k.startswith("base_model.") for k in state) or "tri_layer.weight" not in state:
        raise ValueError(f"{checkpoint}: not an AlignScore checkpoint (no base_model.* weights and tri_layer head)")
    if not backbone:
        raise ValueError(f"{checkpoint}: its hyper_parameters do not name the backbone model (e.g. roberta-large)")
    config = AutoConfig.from_pretrained(backbone, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                                        label2id={name: i for i, name in enumerate(LABELS)})
    if config.model_type not in ("roberta", "bert"):
        raise ValueError(f"{checkpoint}: backbone {backbone!r} is a {config.model_type}; "
                         "AlignScore's released checkpoints are RoBERTa (BERT also converts)")
    model = AutoModelForSequenceClassification.from_config(config)
    prefix = config.model_type  # roberta. / bert.
    mapped: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("base_model.pooler.") and prefix == "roberta":
            mapped["classifier.dense." + key[len("base_model.pooler.dense."):]] = value
        elif key.startswith("base_model."):
            mapped[f"{prefix}.{key[len('base_model.'):]}"] = value
        elif key.startswith("tri_layer."):
            head = "classifier.out_proj." if prefix == "roberta" else "classifier."
            mapped[head + key[len("tri_layer."):]] = value
    expected = model.state_dict()
    mapped = {k: v for k, v in mapped.items() if k in expected or not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(mapped) - {k for k in expected if k.endswith("position_ids")})
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not fit {backbone!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict(mapped, strict=False)
    model.eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(out)
    torch.save({k: v for k, v in state.items() if k.startswith(("bin_layer.", "reg_layer."))}, out / HEADS_FILE)
