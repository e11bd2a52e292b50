"""Generation on Ray Data: `fi-evals run --model CHECKPOINT --ray`, one vLLM engine per actor.

`generate_on_ray(ds, model)` returns `ds` (lazily) with each row's response in `output_column`, the
`checkpoint` column set, and `generation_error` saying why a row got no response (None when it got
one). It runs Ray's own vLLM batch processor (`ray.data.llm`, `vLLMEngineProcessorConfig`): a pool
of actors, each with an `AsyncLLM` engine, fed batches of rows. Every engine is given what the
local path (`generate.generate_responses`, vLLM backend) gives its `LLM`: the token ids of
`generate.prompt_token_ids` (the checkpoint's chat template when its tokenizer has one), the same
engine seed and the same `SamplingParams`, so a greedy response on Ray is the local one.

Two settings of `ray.data.llm` are not its defaults (seen with Ray 2.60 and the vLLM 0.32 CPU
build): on a cluster without GPUs each engine asks for one CPU (its default asks for one GPU per
engine, and the dataset then waits forever: "No available node types can fulfill resource request
{'CPU': 1.0, 'GPU': 1.0}"), and vLLM's Ray-Prometheus stat logger stays off (it needs `ray[serve]`:
without it every engine fails to start with "RayPrometheusMetric requires Ray to be installed.").

A row whose prompt is not non-empty text or a list of {role, content} messages is not sent to an
engine: its `generation_error` says why, its response is None, and its `input_error`
(`dataset.INPUT_ERROR`) is set when it has none yet, so every evaluation gives the row an error
result. A request the engine refuses (a prompt longer than the model's context) is such a row too.
The rest of the dataset runs on.

The actors run with `TRACEAI_VLLM_AUTO=1` and the caller's OTEL_* / TRACEAI_* (and HF_*, VLLM_*,
...) environment in their runtime environment: the vLLM plugin instruments each engine the Ray
actor starts, and its request spans go where the caller's telemetry goes. They export from the
actor's process (`TRACEAI_EXPORT_PROCESS=0`): Ray kills an actor's child processes when it exits,
and the plugin's export process went with the spans it held (seen: all of a run's spans dropped,
`export_process_lost`); in-process, the plugin's exit hook flushes them.

The caller's rows travel through the engine stage as one pickled value (the stage reads and writes
columns of its own: `prompt`, `request_id`, `params`...; a row's columns must not meet them), and
come back unchanged beside the new columns. Rows come back in any order unless the Ray Data
context preserves order. Like `ray_backend`, this module is the Ray extra's: nothing outside
`evals/ray_*.py` imports Ray.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any, Mapping

from .dataset import INPUT_ERROR
from .generate import DEFAULT_MAX_TOKENS, check_settings, prompt_problem, prompt_token_ids, vllm_engine_facts
from . import ray_backend
from .ray_backend import _require_ray, connect, pool_size

ERROR_COLUMN = "generation_error"
CHECKPOINT_COLUMN = "checkpoint"
DEFAULT_BATCH_SIZE = 16
#: environment the engine actors take from the caller: telemetry, model hub and engine settings
SHIPPED_ENVIRONMENT = (*ray_backend.SHIPPED_ENVIRONMENT, "OTEL_", "TRACEAI_", "VLLM_")
#: the variable that turns the vLLM plugin (traceai_vllm) on in every vLLM process
AUTO_INSTRUMENT = "TRACEAI_VLLM_AUTO"
#: the plugin's export in a child process: off in the actors, whose child processes Ray kills (SIGKILL)
#: when the actor exits, before the spans the child still holds are exported
EXPORT_PROCESS = "TRACEAI_EXPORT_PROCESS"

_ROW = "__fi_evals_row"  # the caller's row, pickled, while it passes the engine stage
_ERROR = "__inference_error__"  # ray.data.llm's own: a row with it set skips the engine


def generate_on_ray(ds: Any, model: str, *, prompt_column: str = "prompt", output_column: str = "response",
                    max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int = 0, chat_template: bool | None = None, checkpoint: str | None = None,
                    actors: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    engine_kwargs: Mapping[str, Any] | None = None,
                    runtime_env: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(`ds` with `output_column`, `checkpoint` and `generation_error` added, lazily; the generator
    facts as the local path records them in `Dataset.generation`).

    `actors`: engines in the pool (default: one per GPU of the cluster, else one per CPU), each
    given `batch_size` rows at a time. `engine_kwargs` go to each vLLM engine (e.g. `max_model_len`,
    `dtype`); `runtime_env` is merged over the actors' own (its `env_vars` win). Ray must be
    connected (`ray_backend.connect`); when it is not, a local Ray is started on 127.0.0.1.
    """
    check_settings(max_tokens, temperature, batch_size)
    ray = _require_ray()
    if not ray.is_initialized():
        connect()
    schema = ds.schema(fetch_if_missing=False)  # known without running the dataset, or None
    if schema is not None and prompt_column not in schema.names:
        raise ValueError(f"no column {prompt_column!r} in the dataset to take prompts from; "
                         f"columns are {', '.join(schema.names) or '(none)'}")
    size, gpus = pool_size(actors, ray.cluster_resources())
    engine = {"seed": seed, **dict(engine_kwargs or {})}
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    env = actor_runtime_env(runtime_env)
    label = checkpoint or str(model)

    # what the engines will run with, read where they run (a GPU node's platform, not the driver's);
    # without the plugin: this task serves no requests
    quiet = {**env, "env_vars": {k: v for k, v in env["env_vars"].items() if k != AUTO_INSTRUMENT}}
    facts = ray.get(ray.remote(_generator_facts).options(num_cpus=1, num_gpus=gpus, runtime_env=quiet)
                    .remote(str(model), engine, chat_template))

    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=str(model), engine_kwargs=engine, batch_size=batch_size, concurrency=(size, size),  # a fixed pool, not 1..size
        runtime_env=env, chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
        log_engine_metrics=False, should_continue_on_error=True,
        placement_group_config=None if gpus else {"bundle_per_worker": {"CPU": 1}})
    # the row maps are light and must not wait for the CPUs the engines hold
    light = {"num_cpus": 0, "runtime_env": quiet}
    processor = build_processor(config, preprocess_map_kwargs=light, postprocess_map_kwargs=light)
    packed = ds.map(_pack, fn_kwargs={"model": str(model), "prompt_column": prompt_column,
                                      "chat_template": chat_template, "sampling": sampling}, **light)
    generated = processor(packed).map(_unpack, fn_kwargs={"output_column": output_column, "label": label}, **light)
    generation = {"checkpoint": label, "model": str(model), "engine": "vllm", **facts,
                  "temperature": temperature, "top_p": top_p, "seed": seed, "max_tokens": max_tokens,
                  "backend": "ray", "actors": size}
    return generated, generation


def actor_runtime_env(runtime_env: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The engine actors' runtime environment: the caller's shipped variables, the vLLM plugin on
    and exporting from the actor's own process, then `runtime_env` (its `env_vars` win)."""
    environ = os.environ if environ is None else environ
    given = dict(runtime_env or {})
    env_vars = {k: v for k, v in environ.items() if k.startswith(SHIPPED_ENVIRONMENT)}
    env_vars.update({AUTO_INSTRUMENT: "1", EXPORT_PROCESS: "0"})
    env_vars.update(given.pop("env_vars", None) or {})
    return {**given, "env_vars": env_vars}


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    """One tokenizer per model per Ray worker process (they are reused across tasks)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _uses_chat(tokenizer: Any, chat_template: bool | None) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template


def _generator_facts(model: str, engine: Mapping[str, Any], chat_template: bool | None) -> dict[str, Any]:
    """In a Ray task: the engine's facts from the config each actor's engine builds (ray.data.llm
    passes the same arguments to `AsyncEngineArgs`), the tokenizer's and the runtime's."""
    import vllm

    from ..telemetry.fingerprint import runtime_versions, tokenizer_summary

    args = {"distributed_executor_backend": "uni", **engine, "model": model, "runner": "generate"}
    config = vllm.AsyncEngineArgs(**args).create_engine_config()
    tokenizer = _tokenizer(model)
    return {**vllm_engine_facts(config), "chat_template_used": _uses_chat(tokenizer, chat_template),
            "versions": runtime_versions(), "tokenizer": tokenizer_summary(tokenizer)}


def _plain(value: Any) -> Any:
    """Arrow list columns reach a row function as numpy arrays: back to lists, all the way down."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _pack(row: dict[str, Any], *, model: str, prompt_column: str, chat_template: bool | None,
          sampling: dict[str, Any]) -> dict[str, Any]:
    """The caller's row as one value, and the engine's request: token ids and sampling, or the
    reason there is none (which sends the row past the engine)."""
    prompt = _plain(row.get(prompt_column))
    problem = prompt_problem(prompt, prompt_column)
    ids: list[int] = []
    if problem is None:
        tokenizer = _tokenizer(model)
        ids = prompt_token_ids(tokenizer, prompt, _uses_chat(tokenizer, chat_template))
    return {_ROW: pickle.dumps(dict(row)), "tokenized_prompt": ids, "sampling_params": dict(sampling),
            _ERROR: problem or ""}


def _unpack(data: dict[str, Any], *, output_column: str, label: str) -> dict[str, Any]:
    """The caller's row again, with the response, the checkpoint and the row's error."""
    row = pickle.loads(data[_ROW])
    error = data.get(_ERROR) or None
    row[output_column] = None if error else data.get("generated_text")
    row[CHECKPOINT_COLUMN] = label
    row[ERROR_COLUMN] = error
    if error and not row.get(INPUT_ERROR):
        row[INPUT_ERROR] = f"no response generated: {error}"
    return row
