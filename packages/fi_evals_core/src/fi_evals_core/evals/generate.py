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
                       progress: bool = True) -> Dataset:
    """A copy of `dataset` whose `output_column` holds `model`'s response to each row's prompt.

    `chat_template`: None uses the tokenizer's template when it has one; False always feeds the raw
    prompt. `engine_args` go to `vllm.LLM` (e.g. `max_model_len`); `batch_size` and `device`
    apply to the transformers backend (device None: CUDA when available). An existing
    `output_column` is overwritten.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if prompt_column not in dataset.columns:
        raise ValueError(f"no column {prompt_column!r} in the dataset to take prompts from; "
                         f"columns are {', '.join(dataset.columns) or '(none)'}")
    prompts = [check_prompt(i, row.get(prompt_column), prompt_column) for i, row in enumerate(dataset.rows)]
    backend = resolve_backend(backend)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    token_ids = [prompt_token_ids(tokenizer, p, use_chat) for p in prompts]
    if backend == "vllm":
        responses = _generate_vllm(model, token_ids, max_tokens, temperature, top_p, seed, engine_args, progress)
    else:
        responses = _generate_transformers(model, tokenizer, token_ids, max_tokens, temperature, top_p, seed,
                                           batch_size, device, progress)
    label = checkpoint or str(model)
    rows = [{**row, output_column: response, "checkpoint": label} for row, response in zip(dataset.rows, responses)]
    return Dataset(rows, checkpoint=label, source=dataset.source, id_column=dataset.id_column)


def check_prompt(index: int, prompt: Any, column: str) -> str | list[dict[str, Any]]:
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        return prompt
    raise ValueError(f"row {index}: {column} must be non-empty text or a list of {{role, content}} "
                     f"messages, got {prompt!r:.60}")


def prompt_token_ids(tokenizer: Any, prompt: str | Sequence[Mapping[str, Any]], use_chat: bool) -> list[int]:
    if use_chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        prompt = "\n".join(str(m.get("content", "")) for m in prompt)
    return tokenizer(prompt)["input_ids"]


def _generate_vllm(model: str, token_ids: list[list[int]], max_tokens: int, temperature: float,
                   top_p: float, seed: int, engine_args: Mapping[str, Any] | None, progress: bool) -> list[str]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, **{"seed": seed, **dict(engine_args or {})})
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=progress)
    return [output.outputs[0].text for output in outputs]


def _generate_transformers(model: str, tokenizer: Any, token_ids: list[list[int]], max_tokens: int,
                           temperature: float, top_p: float, seed: int, batch_size: int,
                           device: str | None, progress: bool) -> list[str]:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto").eval().to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(f"{model}: the tokenizer has neither a pad nor an eos token to pad batches with")
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    responses: list[str] = []
    with tqdm(total=len(token_ids), unit="row", disable=not progress, desc="generating") as bar:
        for first in range(0, len(token_ids), batch_size):
            batch = token_ids[first:first + batch_size]
            width = max(len(ids) for ids in batch)
            # left padding: every row's new tokens start at the same position
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            with torch.inference_mode():
                out = lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                  pad_token_id=pad_id, **sampling)
            responses += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            bar.update(len(batch))
    return responses
