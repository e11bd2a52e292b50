"""The run record beside a results file: what generated the responses and what scored them.

`fi-evals run -o v7.jsonl` also writes `v7.jsonl.run.json`: the runtime's versions, the generator
(with `--model`: checkpoint, engine and its version, dtype, quantization, KV-cache dtype, compile
mode, attention, the tokenizer's fingerprint and summary, sampling settings, and with `--repeat` the
determinism check) and, per evaluation, the scorer (NLI checkpoint, profile, dtype, device, labels,
its tokenizer's fingerprint). `fi-evals compare` and `report` read both sides' records and say
what changed beside the pass-rate deltas: a changed tokenizer is a warning even when the pass rates
hold, and a changed scorer means the two sides' scores are not measured alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..telemetry.fingerprint import tokenizer_changes, tokenizer_fingerprint, version_changes

SUFFIX = ".run.json"
GENERATOR_FACTS = ("model", "engine", "engine_version", "dtype", "quantization", "kv_cache_dtype", "compile",
                   "attention", "chat_template_used", "temperature", "top_p", "seed", "max_tokens")
SCORER_FACTS = ("model", "profile", "dtype", "device", "labels", "tokenizer")


def run_info_path(results: str | Path) -> Path:
    return Path(str(results) + SUFFIX)


def scorer_facts(scorer: Any) -> dict[str, Any]:
    """What decides an NLI scorer's numbers."""
    return {"model": scorer.name, "profile": scorer.profile.name,
            "dtype": str(next(scorer.model.parameters()).dtype).removeprefix("torch."),
            "device": str(scorer.device), "labels": list(scorer.labels.names),
            "tokenizer": tokenizer_fingerprint(scorer.tokenizer)}


def write_run_info(results: str | Path, info: dict[str, Any]) -> Path:
    path = run_info_path(results)
    path.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def read_run_info(results: str | Path) -> dict[str, Any] | None:
    """The record beside `results`, None when there is none; a malformed one is a ValueError."""
    path = run_info_path(results)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a run record ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a run record (a JSON object was expected)")
    return data


def describe_changes(base: dict[str, Any] | None, cand: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """(what changed, warnings) from the baseline's run record to the candidate's."""
    changes: list[str] = []
    warnings: list[str] = []
    if base is None or cand is None:
        missing = [side for side, info in (("baseline", base), ("candidate", cand)) if info is None]
        changes.append(f"no run record for the {' and the '.join(missing)} ({SUFFIX} beside the results): "
                       "what generated and scored it is unknown")
        if base is None and cand is None:
            return changes, warnings
    base, cand = base or {}, cand or {}
    changes += [f"versions: {change}" for change in version_changes(base.get("versions"), cand.get("versions"))]
    before, after = base.get("generator") or {}, cand.get("generator") or {}
    if before or after:
        for key in GENERATOR_FACTS:
            if before.get(key) != after.get(key):
                changes.append(f"generator {key}: {_show(before.get(key))} -> {_show(after.get(key))}")
        tokenizer = tokenizer_changes(before.get("tokenizer"), after.get("tokenizer"))
        if tokenizer:
            warnings.append("the generator's tokenizer changed (" + "; ".join(tokenizer) + "): outputs can differ "
                            "for that reason alone, whatever the pass rates say")
    base_scorers, cand_scorers = base.get("scorers") or {}, cand.get("scorers") or {}
    for name in sorted(set(base_scorers) & set(cand_scorers)):
        diffs = [f"{key} {_show(base_scorers[name].get(key))} -> {_show(cand_scorers[name].get(key))}"
                 for key in SCORER_FACTS if base_scorers[name].get(key) != cand_scorers[name].get(key)]
        if diffs:
            warnings.append(f"the scorer of {name} changed ({'; '.join(diffs)}): the two sides' scores are not "
                            "measured alike")
    determinism = (cand.get("generator") or {}).get("determinism")
    if determinism and determinism.get("changed"):
        warnings.append(f"the candidate is not deterministic: {determinism['changed']} of {determinism['prompts']} "
                        f"prompts gave another output across {determinism['repeats']} repeats")
    return changes, warnings


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return "none" if value is None else str(value)
