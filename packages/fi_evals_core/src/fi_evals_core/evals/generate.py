"""The same dataset, different weights: generate each row's response with one checkpoint.

Backends: vLLM's offline `LLM` (continuous batching, paged KV cache) when `vllm` is importable,
else transformers' `AutoModelForCausalLM.generate` in left-padded batches. Both are given the
same token ids: a prompt goes through the checkpoint's chat template as one user message when its
tokenizer has one (a list of `{"role", "content"}` messages goes through it as is), else it is
tokenized raw with the tokenizer's special tokens. Greedy at `temperature=0`, so two runs of one
checkpoint agree and a change between checkpoints is the weights' doing.

Every row is tagged `checkpoint=<label>` (the model path or hub id unless a label is given), so
the results of one run per checkpoint can be set against each other with `compare`.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Mapping, Sequence

from .dataset import Dataset

BACKENDS = ("auto", "vllm", "transformers")
DEFAULT_MAX_TOKENS = 128


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ImportError("backend='vllm' but vllm is not installed (pip install vllm, or backend='transformers')")
    return backend


def generate_responses(dataset: Dataset, model: str, prompt_column: str = "prompt",
                       output_column: str = "response", *, max_tokens: int = DEFAULT_MAX_TOKENS,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, backend: str = "auto",
                       batch_size: int = 8, device: str | None = None, chat_template: bool | None = None,
                       checkpoint: str | None = None, engine_args: Mapping[str, Any] | None = None,
                       progress: bool = True, repeats: int = 1) -> Dataset:
    """A copy of `dataset` whose `output_column` holds `model`'s response to each row's prompt.

    `chat_template`: None uses the tokenizer's template when it has one; False always feeds the raw
    prompt. `engine_args` go to `vllm.LLM` (e.g. `max_model_len`); `batch_size` and `device`
    apply to the transformers backend (device None: CUDA when available). An existing
    `output_column` is overwritten.

    The copy's `generation` says what generated it (`generator_facts`: engine, versions, dtype,
    quantization, compile mode, the tokenizer's fingerprint). With `repeats` > 1 every prompt is
    generated that many times with the same settings and `generation["determinism"]` gives the
    share of prompts whose output changed between repeats (and which rows): greedy decoding should
    give none, and a compile mode or kernel that breaks determinism shows up as a number. The rows
    keep the first repeat's responses.
    """
    check_settings(max_tokens, temperature, batch_size)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if prompt_column not in dataset.columns:
        raise ValueError(f"no column {prompt_column!r} in the dataset to take prompts from; "
                         f"columns are {', '.join(dataset.columns) or '(none)'}")
    prompts = [check_prompt(i, row.get(prompt_column), prompt_column) for i, row in enumerate(dataset.rows)]
    backend = resolve_backend(backend)

    from transformers import AutoTokenizer

    from ..telemetry.fingerprint import runtime_versions, tokenizer_summary

    tokenizer = AutoTokenizer.from_pretrained(model)
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    token_ids = [prompt_token_ids(tokenizer, p, use_chat) for p in prompts]
    if backend == "vllm":
        engine: Any = _VllmEngine(model, max_tokens, temperature, top_p, seed, engine_args)
    else:
        engine = _TransformersEngine(model, tokenizer, max_tokens, temperature, top_p, seed, batch_size, device)
    runs = [engine.generate(token_ids, progress) for _ in range(repeats)]
    responses = runs[0]
    label = checkpoint or str(model)
    rows = [{**row, output_column: response, "checkpoint": label} for row, response in zip(dataset.rows, responses)]
    generated = Dataset(rows, checkpoint=label, source=dataset.source, id_column=dataset.id_column)
    generated.generation = {
        "checkpoint": label, "model": str(model), "engine": backend, **engine.facts(),
        "chat_template_used": use_chat, "temperature": temperature, "top_p": top_p, "seed": seed,
        "max_tokens": max_tokens, "versions": runtime_versions(), "tokenizer": tokenizer_summary(tokenizer),
    }
    if repeats > 1:
        changed = changed_outputs(runs)
        generated.generation["determinism"] = {"repeats": repeats, "prompts": len(responses),
                                               "changed": len(changed), "changed_rows": changed}
    return generated


def check_settings(max_tokens: int, temperature: float, batch_size: int) -> None:
    """Generation settings refused by name before any engine starts (here and on Ray)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def changed_outputs(runs: Sequence[Sequence[str]]) -> list[int]:
    """Indexes of the prompts whose output is not the same in every repeat."""
    return [i for i in range(len(runs[0])) if len({run[i] for run in runs}) > 1]


def _quantization(config: Any) -> str | None:
    """`awq 4-bit`, `fp8`... from a model config's `quantization_config` (a dict or an object)."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    data = quant if isinstance(quant, dict) else (quant.to_dict() if hasattr(quant, "to_dict") else vars(quant))
    method = data.get("quant_method") or data.get("quantization_method") or "quantized"
    bits = data.get("bits") or data.get("w_bit") or data.get("weight_bits")
    return f"{method} {bits}-bit" if bits else str(method)


class _VllmEngine:
    """vLLM's offline `LLM`, kept for every repeat."""

    def __init__(self, model: str, max_tokens: int, temperature: float, top_p: float, seed: int,
                 engine_args: Mapping[str, Any] | None) -> None:
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=model, **{"seed": seed, **dict(engine_args or {})})
        self.params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def generate(self, token_ids: list[list[int]], progress: bool) -> list[str]:
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], self.params, use_tqdm=progress)
        return [output.outputs[0].text for output in outputs]

    def facts(self) -> dict[str, Any]:
        return vllm_engine_facts(getattr(self.llm.llm_engine, "vllm_config", None))


def vllm_engine_facts(config: Any) -> dict[str, Any]:
    """The generator facts of a vLLM engine, from its `VllmConfig` (the offline engine's here, the
    one each Ray actor's engine builds in `ray_generate`)."""
    import vllm

    from ..telemetry.fingerprint import vllm_runtime

    model_config = getattr(config, "model_config", None)
    runtime = vllm_runtime(config)  # what the request spans carry too (traceai_vllm)
    return {
        "engine_version": vllm.__version__,
        "dtype": str(getattr(model_config, "dtype", "")).removeprefix("torch.") or None,
        "quantization": getattr(model_config, "quantization", None) or _quantization(
            getattr(model_config, "hf_config", None)),
        "kv_cache_dtype": runtime.get("kv_cache_dtype"),
        "attention": runtime.get("attention_backend"),
        "compile": {"mode": runtime.get("compile_mode"), "cuda_graphs": runtime.get("cuda_graphs")},
    }


class _TransformersEngine:
    """`AutoModelForCausalLM.generate` in left-padded batches, the model kept for every repeat."""

    def __init__(self, model: str, tokenizer: Any, max_tokens: int, temperature: float, top_p: float, seed: int,
                 batch_size: int, device: str | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto").eval().to(self.device)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError(f"{model}: the tokenizer has neither a pad nor an eos token to pad batches with")
        self.sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0
                         else {"do_sample": False})
        self.seed, self.max_tokens, self.batch_size = seed, max_tokens, batch_size

    def generate(self, token_ids: list[list[int]], progress: bool) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        torch.manual_seed(self.seed)
        responses: list[str] = []
        with tqdm(total=len(token_ids), unit="row", disable=not progress, desc="generating") as bar:
            for first in range(0, len(token_ids), self.batch_size):
                batch = token_ids[first:first + self.batch_size]
                width = max(len(ids) for ids in batch)
                # left padding: every row's new tokens start at the same position
                input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch], device=self.device)
                mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
                with torch.inference_mode():
                    out = self.lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.max_tokens,
                                           pad_token_id=self.pad_id, **self.sampling)
                responses += self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
                bar.update(len(batch))
        return responses

    def facts(self) -> dict[str, Any]:
        import transformers

        config = self.lm.config
        compiled = hasattr(self.lm, "_orig_mod") or type(self.lm).__name__ == "OptimizedModule"
        return {
            "engine_version": transformers.__version__,
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "quantization": _quantization(config),
            "attention": getattr(config, "_attn_implementation", None),
            "compile": {"mode": "torch.compile" if compiled else "eager"},
            "device": str(self.device),
        }


def check_prompt(index: int, prompt: Any, column: str) -> str | list[dict[str, Any]]:
    problem = prompt_problem(prompt, column)
    if problem:
        raise ValueError(f"row {index}: {problem}")
    return prompt


def prompt_problem(prompt: Any, column: str) -> str | None:
    """Why `prompt` cannot be generated from (None when it can): non-empty text, or a non-empty
    list of {role, content} messages."""
    if isinstance(prompt, str) and prompt.strip():
        return None
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        return None
    return f"{column} must be non-empty text or a list of {{role, content}} messages, got {prompt!r:.60}"


def prompt_token_ids(tokenizer: Any, prompt: str | Sequence[Mapping[str, Any]], use_chat: bool) -> list[int]:
    if use_chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        prompt = "\n".join(str(m.get("content", "")) for m in prompt)
    return tokenizer(prompt)["input_ids"]
