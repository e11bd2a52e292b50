"""What a model runs on, as stable short facts: the tokenizer's fingerprint and the runtime's versions.

An eval drop after an upgrade is often a tokenizer change (a merge, a special token, the chat
template) that no version number shows. `tokenizer_fingerprint` hashes exactly what decides
tokenization, in a canonical form, so two copies of the same files in different folders or on
different machines hash alike and any change that can alter token ids or the prompt text changes
the hash:

- a fast tokenizer's whole `tokenizer.json` content (vocabulary, merges, added tokens with their
  flags, normalizer, pre-tokenizer, post-processor, decoder; its `truncation` and `padding`
  settings, which are per-call state, left out), canonically serialised;
- a slow tokenizer's vocabulary (`get_vocab()`), its class and its added tokens;
- the special tokens (bos, eos, unk, pad, ...) and the chat template(s).

Computed once per model or engine, never per request (hashing a 128k vocabulary takes tens of
milliseconds). `tokenizer_summary` keeps the few facts a diff can name (vocabulary size, added and
special tokens, a hash of the chat template), so `fi-evals compare` can say what changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from typing import Any

HASH_CHARS = 16
MAX_LISTED_TOKENS = 200  # added tokens kept in a summary, for the diff


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:HASH_CHARS]


def _specials(tokenizer: Any) -> dict[str, Any]:
    specials = getattr(tokenizer, "special_tokens_map", None) or {}
    return {str(k): v for k, v in specials.items()}


def _chat_templates(tokenizer: Any) -> Any:
    return getattr(tokenizer, "chat_template", None)


def _backend(tokenizer: Any) -> dict[str, Any] | None:
    """The fast tokenizer's definition, less per-call state (truncation, padding)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    to_str = getattr(backend, "to_str", None)
    if not callable(to_str):
        return None
    data = json.loads(to_str())
    data.pop("truncation", None)
    data.pop("padding", None)
    return data


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short stable hash of what decides `tokenizer`'s token ids and chat prompts."""
    backend = _backend(tokenizer)
    if backend is not None:
        core: Any = {"fast": backend}
    else:  # a slow (Python) tokenizer
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        added = getattr(tokenizer, "added_tokens_encoder", None) or {}
        core = {"slow": type(tokenizer).__name__, "vocab": sorted(vocab.items()), "added": sorted(added.items())}
    return _digest({**core, "special": _specials(tokenizer), "chat_template": _chat_templates(tokenizer)})


def tokenizer_summary(tokenizer: Any) -> dict[str, Any]:
    """The fingerprint with the facts a change can be named by."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = sorted(str(getattr(tok, "content", tok)) for tok in added.values())
    template = _chat_templates(tokenizer)
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "added_tokens": tokens[:MAX_LISTED_TOKENS],
        "special_tokens": _specials(tokenizer),
        "chat_template": _digest(template) if template else None,
    }


def tokenizer_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """What differs between two `tokenizer_summary`s, in words (empty when the fingerprints agree)."""
    if not before or not after or before.get("fingerprint") == after.get("fingerprint"):
        return []
    changes = []
    if before.get("vocab_size") != after.get("vocab_size"):
        changes.append(f"vocabulary {before.get('vocab_size')} -> {after.get('vocab_size')} tokens")
    old, new = set(before.get("added_tokens") or []), set(after.get("added_tokens") or [])
    if new - old:
        changes.append("tokens added: " + ", ".join(sorted(new - old)[:10]))
    if old - new:
        changes.append("tokens removed: " + ", ".join(sorted(old - new)[:10]))
    for key, value in (after.get("special_tokens") or {}).items():
        if (before.get("special_tokens") or {}).get(key) != value:
            changes.append(f"{key} {(before.get('special_tokens') or {}).get(key)!r} -> {value!r}")
    if before.get("chat_template") != after.get("chat_template"):
        changes.append("chat template changed")
    return changes or ["vocabulary, merges or normalisation changed (same size and tokens)"]


def runtime_versions() -> dict[str, str]:
    """Installed versions of the stack under a model: torch, transformers, vLLM, tokenizers, and
    CUDA / cuDNN / NCCL as this torch was built with (absent ones left out). Reads package metadata
    and torch's build constants only: no GPU work, no import of vLLM or transformers."""
    versions: dict[str, str] = {}
    for name in ("torch", "transformers", "vllm", "tokenizers", "triton"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = getattr(torch.version, "cuda", None)
        if cuda:
            versions["cuda"] = str(cuda)
        try:
            cudnn = torch.backends.cudnn.version() if cuda else None
        except Exception:  # noqa: BLE001 - not built with cuDNN
            cudnn = None
        if cudnn:
            versions["cudnn"] = str(cudnn)
        nccl = getattr(getattr(torch.cuda, "nccl", None), "version", None)
        if cuda and callable(nccl):
            try:
                versions["nccl"] = ".".join(map(str, nccl()))
            except Exception:  # noqa: BLE001 - built without NCCL
                pass
    return versions


def version_changes(before: dict[str, str] | None, after: dict[str, str] | None) -> list[str]:
    """`transformers 4.57.0 -> 5.0.0` for every package whose version differs."""
    before, after = before or {}, after or {}
    return [f"{name} {before.get(name, 'absent')} -> {after.get(name, 'absent')}"
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def vllm_runtime(vllm_config: Any) -> dict[str, str]:
    """How a vLLM engine runs, from its config (no vLLM import): `compile_mode` (its compilation
    mode, or level in older versions), `cuda_graphs` (`none` with enforce_eager), `kv_cache_dtype`
    (`auto` resolved to the model's dtype) and `attention_backend` (only when configured: otherwise
    the engine core picks it). Each fact is read on its own: a vLLM without a field loses only it."""
    import logging

    model_config = getattr(vllm_config, "model_config", None)
    compilation = getattr(vllm_config, "compilation_config", None)

    def compile_mode() -> str:
        mode = getattr(compilation, "mode", None)
        return _enum_name(mode if mode is not None else compilation.level)

    def cuda_graphs() -> str:
        return "none" if getattr(model_config, "enforce_eager", False) else _enum_name(compilation.cudagraph_mode)

    def attention_backend() -> str | None:
        backend = getattr(getattr(vllm_config, "attention_config", None), "backend", None)
        return None if backend is None else _enum_name(backend)

    facts: dict[str, str] = {}
    for name, read in (("compile_mode", compile_mode), ("cuda_graphs", cuda_graphs),
                       ("kv_cache_dtype", lambda: kv_cache_dtype(vllm_config.cache_config.cache_dtype, model_config)),
                       ("attention_backend", attention_backend)):
        try:
            value = read()
        except Exception:  # noqa: BLE001 - a field this vLLM does not have
            logging.getLogger(__name__).debug("could not read the vLLM engine's %s", name, exc_info=True)
            continue
        if value is not None:
            facts[name] = value
    return facts


def kv_cache_dtype(cache_dtype: Any, model_config: Any) -> str:
    """vLLM's `auto` means the model's dtype: say which."""
    if str(cache_dtype) == "auto":
        return str(getattr(model_config, "dtype", "auto")).removeprefix("torch.")
    return str(cache_dtype)


def _enum_name(value: Any) -> str:
    """An enum's name (CompilationMode.VLLM_COMPILE -> vllm_compile), else the value as text."""
    return str(getattr(value, "name", value)).lower()


def runtime_attributes(versions: dict[str, str] | None = None) -> dict[str, str]:
    """`runtime.<name>.version` span attributes for the versions that the framework attributes
    (`model.framework.version` for torch, `model.engine.version`) do not already carry."""
    from . import attributes as A

    versions = runtime_versions() if versions is None else versions
    return {f"{A.RUNTIME_VERSION_PREFIX}{name}.version": value for name, value in versions.items() if name != "torch"}
