"""The tokenizer fingerprint and the runtime versions (telemetry/fingerprint.py), on tiny
tokenizers built here: the same files anywhere hash alike; one merge, one special token or the
chat template changed changes the hash, and the change is named."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from fi_evals_core.telemetry.fingerprint import (
    runtime_versions,
    tokenizer_changes,
    tokenizer_fingerprint,
    tokenizer_summary,
    version_changes,
)
from fi_evals_core.testing.tiny_models import build_tokenizer


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "original"
    build_tokenizer(path)
    return path


def _copy(original, tmp_path, name, edit=None):
    path = shutil.copytree(original, tmp_path / name)
    if edit is not None:
        edit(path)
    return AutoTokenizer.from_pretrained(path)


def _edit_json(path, name, change):
    data = json.loads((path / name).read_text())
    change(data)
    (path / name).write_text(json.dumps(data))


def test_the_same_files_anywhere_hash_alike(original, tmp_path):
    first = AutoTokenizer.from_pretrained(original)
    elsewhere = _copy(original, tmp_path, "deep")
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(elsewhere)
    assert len(tokenizer_fingerprint(first)) == 16
    first("some text", truncation=True, max_length=4, padding="max_length")  # per-call state is not identity
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(elsewhere)
    assert tokenizer_changes(tokenizer_summary(first), tokenizer_summary(elsewhere)) == []


def test_one_merge_one_special_token_or_the_template_changes_it(original, tmp_path):
    base = AutoTokenizer.from_pretrained(original)
    base_summary = tokenizer_summary(base)

    def drop_last_merge(path):
        _edit_json(path, "tokenizer.json", lambda d: d["model"]["merges"].pop())

    def other_eos(path):
        _edit_json(path, "tokenizer_config.json", lambda d: d.update(eos_token="<|pad|>"))
        special = path / "special_tokens_map.json"
        if special.exists():
            _edit_json(path, "special_tokens_map.json", lambda d: d.update(eos_token="<|pad|>"))

    def other_template(path):
        _edit_json(path, "tokenizer_config.json", lambda d: d.update(chat_template="{{ messages[0]['content'] }}"))
        jinja = path / "chat_template.jinja"
        if jinja.exists():
            jinja.write_text("{{ messages[0]['content'] }}")

    def added_token(path):
        tok = AutoTokenizer.from_pretrained(path)
        tok.add_tokens(["<|frame|>"], special_tokens=True)
        tok.save_pretrained(path)

    changed = {}
    for name, edit in (("merge", drop_last_merge), ("eos", other_eos), ("template", other_template),
                       ("added", added_token)):
        tok = _copy(original, tmp_path, name, edit)
        changed[name] = tokenizer_fingerprint(tok)
        assert changed[name] != base_summary["fingerprint"], name
        changed[name + "_said"] = tokenizer_changes(base_summary, tokenizer_summary(tok))
    assert len({changed[k] for k in ("merge", "eos", "template", "added")}) == 4
    assert changed["merge_said"] == ["vocabulary, merges or normalisation changed (same size and tokens)"]
    assert any("eos_token '<|eos|>' -> '<|pad|>'" in c for c in changed["eos_said"])
    assert changed["template_said"] == ["chat template changed"]
    assert "tokens added: <|frame|>" in changed["added_said"]


def test_runtime_versions_and_their_changes():
    import torch
    import transformers

    versions = runtime_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert ("cuda" in versions) == bool(torch.version.cuda)
    assert version_changes({"transformers": "4.57.0", "torch": "2.9.0"}, {"transformers": "5.0.0", "torch": "2.9.0"}) \
        == ["transformers 4.57.0 -> 5.0.0"]
    assert version_changes({"vllm": "0.11.0"}, {}) == ["vllm 0.11.0 -> absent"]
