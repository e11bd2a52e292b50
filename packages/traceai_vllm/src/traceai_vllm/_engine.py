"""One span per vLLM request, built at the v1 engine's output processor.

Every entry point (`LLM`, `LLMEngine`, `AsyncLLM`, the OpenAI server) funnels its requests through
`OutputProcessor.add_request` (one call per request, or per child of an `n > 1` request),
`process_outputs` (every engine step) and `abort_requests`. Hooking there gives exactly one span
per request whatever the entry point. Parallel-sampling children share their parent's span, which
ends when the last child finishes, with one finish reason per choice.

The span starts at the request's arrival (vLLM's wall-clock `arrival_time`). On the request path
the hooks only gather facts: the request and its caller's context when it is added, the timestamps
as its outputs arrive, the counts and reasons when it finishes, frozen then into a
`FinishedRequest` (`RequestTracker._record`). Its span is made from that value off the request
path: on the telemetry worker, or in the export process with `TRACEAI_EXPORT_PROCESS=1`.

The latency breakdown (queue, prefill, decode, time to first token) follows vLLM's own definitions
(`IterationStats.update_from_output`, `OutputProcessor.do_tracing`). When vLLM keeps per-request
stats (`RequestStateStats`, stats logging on) they are its numbers, exactly. Without them the same
timestamps are read where they already flow, for a fraction of the stats' cost: the step's
engine-core timestamp (`EngineCoreOutputs.timestamp`, passed to `process_outputs`) for the first
and last token, the front-end wall clock at the first token's step for time to first token, and
the QUEUED / SCHEDULED / PREEMPTED events the scheduler's hooks below add to a request (riding to
the front-end in `EngineCoreOutput.events`, as vLLM's own do when it logs stats) for queue and
prefill. Those hooks run where the scheduler runs: in this process for an in-process engine, in the
EngineCore process through the `vllm.general_plugins` entry point otherwise; without them, queue
and prefill are left out.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
import weakref
from typing import Any

from opentelemetry import propagate
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from fi_evals_core.telemetry import (
    FinishedRequest,
    RequestSpan,
    SpanIds,
    TelemetryRuntime,
    error_details,
    handoff,
    torch_framework_attributes,
)
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry.fingerprint import (
    kv_cache_dtype,
    runtime_attributes,
    tokenizer_fingerprint,
    vllm_runtime,
)

from . import _memory

logger = logging.getLogger(__name__)

PROVIDER = "vllm"
# Set by the offline entry points (LLM.chat, LLM.embed, ...) for the requests they add.
current_operation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "traceai_vllm_operation", default=None
)


# The trace context an API request arrived with. AsyncLLM.add_request drops `trace_headers` unless
# vLLM's own tracing is configured; this keeps them for the request span either way.
incoming_trace_headers: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "traceai_vllm_trace_headers", default=None
)
# The request came through AsyncLLM (the OpenAI server's engine client, or an application serving
# with it): its span is a SERVER span, with or without an incoming trace context.
served_request: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_vllm_served", default=False)
# The messages of the chat request the OpenAI server is handling (its response id and the messages
# the client sent), for content capture and inline evaluation: the engine sees only the rendered
# chat template. Set by `RequestTracker.chat_completion_wrapper` in the handler's task, and again
# where a streamed response is iterated (another task: the engine request is added there); the id
# check in `_on_add` keeps any later request in that task from taking them.
chat_request: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "traceai_vllm_chat_request", default=None
)
_TRACE_HEADERS_POSITION = 6  # AsyncLLM.add_request(request_id, prompt, params, arrival_time,
#                              lora_request, tokenization_kwargs, trace_headers, ...)


def sampling_values(sampling: Any, served: bool = False) -> tuple | None:
    """The sampling parameters a span reports, as plain values (None for pooling requests). A
    served request streams unless its outputs are delivered only at the end (the OpenAI server
    asks for DELTA outputs when the client streams, FINAL_ONLY when not); the offline engine's
    requests say nothing about streaming."""
    if sampling is None:
        return None
    stop = getattr(sampling, "stop", None)
    stream = None
    if served:
        stream = getattr(getattr(sampling, "output_kind", None), "name", "FINAL_ONLY") != "FINAL_ONLY"
    structured = getattr(sampling, "structured_outputs", None)
    json_output = structured is not None and bool(getattr(structured, "json", None) is not None
                                                  or getattr(structured, "json_object", None))
    return (getattr(sampling, "max_tokens", None), getattr(sampling, "temperature", None),
            getattr(sampling, "top_p", None), getattr(sampling, "seed", None), getattr(sampling, "top_k", None),
            tuple(stop) if isinstance(stop, list) else stop, stream, getattr(sampling, "frequency_penalty", None),
            getattr(sampling, "presence_penalty", None), "json" if json_output else None)


_START_ATTRIBUTES_KEPT = 1024
_start_attributes: dict[tuple, dict[str, Any]] = {}


def shared_start_attributes(operation: str, model: str, sampling: tuple | None, n: int = 1) -> dict[str, Any]:
    """`start_attributes`, one dict per distinct set of values, shared by the requests that have
    them (never changed afterwards): built once, and pickled once per hand-over frame."""
    key = (operation, model, sampling, n)
    try:
        attrs = _start_attributes.get(key)
    except TypeError:  # an unhashable parameter value
        return start_attributes(operation, model, sampling, n)
    if attrs is None:
        if len(_start_attributes) >= _START_ATTRIBUTES_KEPT:
            _start_attributes.clear()
        attrs = _start_attributes[key] = start_attributes(operation, model, sampling, n)
    return attrs


def start_attributes(operation: str, model: str, sampling: tuple | None, n: int = 1) -> dict[str, Any]:
    """What a request span says at its start: operation, provider, model, sampling parameters
    (`sampling_values`)."""
    attrs: dict[str, Any] = {A.OPERATION_NAME: operation, A.PROVIDER_NAME: PROVIDER, A.REQUEST_MODEL: model}
    if sampling is None:
        return attrs
    max_tokens, temperature, top_p, seed, top_k, stop, stream, frequency_penalty, presence_penalty, output_type = sampling
    for key, value in ((A.REQUEST_MAX_TOKENS, max_tokens), (A.REQUEST_TEMPERATURE, temperature),
                       (A.REQUEST_TOP_P, top_p), (A.REQUEST_SEED, seed)):
        if value is not None:
            attrs[key] = value
    if top_k is not None and top_k > 0:
        attrs[A.REQUEST_TOP_K] = top_k
    if stop:
        attrs[A.REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else list(stop)
    if n != 1:
        attrs[A.REQUEST_CHOICE_COUNT] = n
    if stream is not None:
        attrs[A.REQUEST_STREAM] = stream
    for key, value in ((A.REQUEST_FREQUENCY_PENALTY, frequency_penalty), (A.REQUEST_PRESENCE_PENALTY, presence_penalty)):
        if value:  # 0 is vLLM's default: no penalty asked for
            attrs[key] = value
    if output_type is not None:  # a JSON response format (structured outputs)
        attrs[A.OUTPUT_TYPE] = output_type
    return attrs


def response_id(external_id: Any, operation: str) -> tuple[str, int | None]:
    """The id the client receives, and the prompt's index for a completions request: the OpenAI
    server runs prompt i of a `/v1/completions` request as `<response id>-<i>`."""
    external_id = str(external_id)
    if operation == A.OP_TEXT_COMPLETION and external_id.startswith("cmpl-"):
        head, _, index = external_id.rpartition("-")
        if index.isdigit() and head != "cmpl":
            return head, int(index)
    return external_id, None


def _operation_for(external_id: Any, sampling: Any) -> str:
    """Pooling requests are embeddings; the OpenAI server names chat requests `chatcmpl-...`."""
    if sampling is None:
        return A.OP_EMBEDDINGS
    return A.OP_CHAT if str(external_id).startswith("chatcmpl-") else A.OP_TEXT_COMPLETION


class EngineInfo:
    """What a request span says about the engine that serves it, computed once per engine."""

    __slots__ = ("model", "framework", "gpu_index", "kv_block_size", "kv_bytes_per_block", "flop_rates",
                 "memory_asked", "__weakref__")

    def __init__(self, engine: Any) -> None:
        import vllm

        vllm_config = getattr(engine, "vllm_config", None)
        model_config = getattr(engine, "model_config", None) or getattr(vllm_config, "model_config", None)
        parallel = getattr(vllm_config, "parallel_config", None)
        device = getattr(getattr(vllm_config, "device_config", None), "device_type", None)
        self.model = str(getattr(model_config, "served_model_name", None) or getattr(model_config, "model", "")
                         or "unknown")
        self.framework = torch_framework_attributes(
            engine="vllm",
            engine_version=getattr(vllm, "__version__", None),
            dtype=getattr(model_config, "dtype", None),
            device=device,
            quantization=getattr(model_config, "quantization", None),
        )
        # GPU memory belongs on the span only where this process holds the model: an in-process
        # engine core on a CUDA device (the multi-process EngineCore exports gauges instead).
        self.gpu_index = None
        if device == "cuda" and type(getattr(engine, "engine_core", None)).__name__ == "InprocClient":
            import torch

            self.gpu_index = torch.cuda.current_device()
        for key, value in (
            (A.VLLM_TENSOR_PARALLEL_SIZE, getattr(parallel, "tensor_parallel_size", None)),
            (A.VLLM_PIPELINE_PARALLEL_SIZE, getattr(parallel, "pipeline_parallel_size", None)),
        ):
            if value is not None:
                self.framework[key] = int(value)
        self.framework.update(runtime_fingerprint(engine, vllm_config))
        self.kv_block_size = self.kv_bytes_per_block = None
        try:
            self._read_kv_cache(vllm_config, model_config, parallel)
        except Exception:  # noqa: BLE001 - another vLLM's config: no KV attributes, nothing else lost
            logger.debug("could not read the vLLM engine's KV-cache layout", exc_info=True)
        self.flop_rates = flop_rates(vllm_config)
        self.memory_asked = False

    def _read_kv_cache(self, vllm_config: Any, model_config: Any, parallel: Any) -> None:
        """Block size, bytes per block over all TP ranks, and capacity, from the engine's config (in
        the front-end; the engine core fills `num_gpu_blocks` in before the engine is returned)."""
        cache = vllm_config.cache_config
        self.kv_block_size = int(cache.block_size)
        self.framework[A.VLLM_KV_BLOCK_SIZE] = self.kv_block_size
        self.kv_bytes_per_block = kv_bytes_per_block(model_config, parallel, cache)
        blocks = getattr(cache, "num_gpu_blocks", None)
        if blocks:
            self.framework[A.VLLM_KV_CAPACITY_BLOCKS] = int(blocks)
            if self.kv_bytes_per_block:
                self.framework[A.VLLM_KV_CAPACITY_BYTES] = int(blocks) * self.kv_bytes_per_block


_KV_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2}


def kv_bytes_per_block(model_config: Any, parallel: Any, cache: Any) -> int | None:
    """Bytes of one KV-cache block summed over layers and tensor-parallel ranks, for models whose
    every layer keeps full attention K and V (2 x KV heads x head size x dtype bytes x block size);
    None for others (MLA, sliding windows, hybrid and attention-free models), where the layout differs."""
    text_config = getattr(model_config, "hf_text_config", None)
    if getattr(model_config, "use_mla", False) or getattr(text_config, "sliding_window", None) \
            or getattr(text_config, "layer_types", None) and len(set(text_config.layer_types)) > 1:
        return None
    tp = int(getattr(parallel, "tensor_parallel_size", 1) or 1)
    heads_per_rank = model_config.get_num_kv_heads(parallel)
    dtype = kv_cache_dtype(cache.cache_dtype, model_config)
    width = _KV_DTYPE_BYTES.get(dtype, 1 if dtype.startswith("fp8") else None)
    if width is None:
        return None
    layers = model_config.get_total_num_hidden_layers() if hasattr(model_config, "get_total_num_hidden_layers") \
        else text_config.num_hidden_layers
    return 2 * heads_per_rank * tp * model_config.get_head_size() * width * int(cache.block_size) * int(layers)


def flop_rates(vllm_config: Any) -> tuple[float, float, float] | None:
    """FLOPs per token, per token x context and per logits token, over all ranks, from vLLM's own
    analytic model (`vllm.v1.metrics.perf`), which is linear in those three terms; once per engine.
    None where the model has none, or has sliding-window layers (whose terms it clamps per request)."""
    try:
        from vllm.v1.metrics.perf import ExecutionContext, ModelMetrics

        metrics = ModelMetrics(vllm_config)
        if not metrics.is_enabled() or any(getattr(m, "sliding_window", None) or getattr(m, "num_swa_layers", 0)
                                           for m in metrics.metrics):
            return None
        unit = 1 << 20  # large enough that each component's int() rounding is negligible

        def flops(tokens: int, token_context: int, logits: int) -> float:
            ctx = ExecutionContext(num_prefill_requests=logits, prefill_num_tokens=tokens,
                                   prefill_token_context_product=token_context)
            return metrics.get_num_flops(ctx, per_gpu=False) / unit

        return flops(unit, 0, 0), flops(0, unit, 0), flops(0, 0, unit)
    except Exception:  # noqa: BLE001 - another vLLM, or a model its perf model cannot parse
        logger.debug("no analytic FLOPs model for this vLLM engine", exc_info=True)
        return None


#: vllm_runtime's facts and the span attributes that carry them
_RUNTIME_ATTRIBUTES = {"compile_mode": A.MODEL_COMPILE_MODE, "cuda_graphs": A.MODEL_CUDA_GRAPHS,
                       "kv_cache_dtype": A.MODEL_KV_CACHE_DTYPE, "attention_backend": A.MODEL_ATTENTION_BACKEND}


def runtime_fingerprint(engine: Any, vllm_config: Any) -> dict[str, Any]:
    """The engine's runtime fingerprint, once per engine: versions, how it runs (`vllm_runtime`) and
    the tokenizer's fingerprint."""
    attrs: dict[str, Any] = runtime_attributes()
    attrs.update({_RUNTIME_ATTRIBUTES[name]: value for name, value in vllm_runtime(vllm_config).items()})
    try:
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is not None:
            attrs[A.MODEL_TOKENIZER_FINGERPRINT] = tokenizer_fingerprint(tokenizer)
    except Exception:  # noqa: BLE001 - an unusual tokenizer: no fingerprint, nothing else lost
        logger.debug("could not fingerprint the vLLM engine's tokenizer", exc_info=True)
    return attrs


# OutputProcessor -> EngineInfo, registered when an engine is constructed while instrumented.
engine_infos: "weakref.WeakKeyDictionary[Any, EngineInfo]" = weakref.WeakKeyDictionary()


def _fallback_info(output_processor: Any) -> EngineInfo:
    """An engine built before instrumenting: name the model after its tokenizer's path."""
    info = EngineInfo.__new__(EngineInfo)
    tokenizer = getattr(output_processor, "tokenizer", None)
    info.model = str(getattr(tokenizer, "name_or_path", "") or "unknown")
    info.framework = {}
    info.gpu_index = info.kv_block_size = info.kv_bytes_per_block = info.flop_rates = None
    info.memory_asked = True
    engine_infos[output_processor] = info
    return info


class Tracked:
    """One traced request, as it arrived (the request, its engine, its caller's context) and, for
    `n > 1`, its children's results so far. Its span is made only when it has finished, from the
    facts gathered here (`RequestTracker._record`), away from the request path."""

    __slots__ = ("origin", "info", "n", "operation", "headers", "served", "parent", "eval_context", "pending",
                 "reasons", "output_tokens", "max_output_tokens", "embedding_dims", "prompt", "messages", "texts",
                 "evaluated", "kv_blocks", "kv_shared_blocks", "compute")

    def __init__(self, origin: Any, info: "EngineInfo", n: int, operation: str | None, headers: Any, served: bool,
                 parent: Any, eval_context: Any, wants_text: bool, evaluated: bool) -> None:
        self.origin = origin  # the (first) EngineCoreRequest
        self.info = info
        self.n = n
        self.operation = operation  # current_operation when it arrived (LLM.chat, LLM.embed, ...)
        self.headers = headers  # the incoming trace context, if any
        self.served = served  # it came through AsyncLLM (a server): a SERVER span
        self.parent = parent  # the caller's Context, or the deferred LLM.generate span
        self.eval_context = eval_context
        self.pending = n
        self.reasons: list[str | None] = [None] * n
        self.output_tokens = 0
        self.max_output_tokens = 0
        self.embedding_dims: int | None = None
        # Kept only when content capture or inline evaluation wants the text (references, no copies).
        self.prompt: str | None = None
        self.messages: Any = None  # a chat request's messages as the client sent them
        self.texts: list[str | None] | None = [None] * n if wants_text else None
        self.evaluated = evaluated  # inline evaluation is on: the texts are offered to it
        self.kv_blocks = self.kv_shared_blocks = 0  # over its choices, each at its end (its peak)
        # over its choices: [seconds, tokens, tokens x context, logits tokens]; None once one lacks it
        self.compute: list | None = [0.0, 0, 0, 0]


class Child:
    """One request the engine runs (a request, or one child of an `n > 1` request) and its
    timestamps on vLLM's clocks, as `IterationStats.update_from_output` would record them:
    engine-monotonic `*_ts`, wall-clock `first_token_latency`."""

    __slots__ = ("tracked", "state", "arrival_time", "queued_ts", "scheduled_ts", "first_token_ts",
                 "first_token_latency", "num_preemptions", "compute")

    def __init__(self, tracked: Tracked, state: Any, arrival_time: float) -> None:
        self.tracked = tracked
        self.state = state
        self.arrival_time = arrival_time
        self.queued_ts: float | None = None
        self.scheduled_ts: float | None = None
        self.first_token_ts: float | None = None
        self.first_token_latency: float | None = None
        self.num_preemptions = 0
        self.compute: list | None = None  # from the engine core, on its finishing output

    def read_events(self, events: Any) -> None:
        """vLLM's `IterationStats.update_from_events`: the last QUEUED, the first SCHEDULED."""
        for event in events:
            kind = event.type  # an IntEnum (an int once serialised)
            if kind == _QUEUED:
                self.queued_ts = event.timestamp
            elif kind == _SCHEDULED:
                if self.scheduled_ts is None:
                    self.scheduled_ts = event.timestamp
            elif kind == _PREEMPTED:
                self.num_preemptions += 1

    def timing(self, last_token_ts: float | None) -> tuple[float | None, dict[str, float]]:
        stats = getattr(self.state, "stats", None)
        if stats is not None and stats.first_token_ts:  # vLLM logs stats: its own numbers, exactly
            return engine_timing(stats.first_token_latency, stats.queued_ts, stats.scheduled_ts,
                                 stats.first_token_ts, stats.last_token_ts, stats.num_preemptions)
        return engine_timing(self.first_token_latency, self.queued_ts, self.scheduled_ts, self.first_token_ts,
                             last_token_ts, self.num_preemptions)


class RequestTracker:
    """The per-request state of the instrumentation: internal request id -> Child.

    Entries are removed when their request finishes, is aborted or fails, so nothing is held for
    finished requests (see `len(tracker)`).
    """

    def __init__(self, runtime: TelemetryRuntime) -> None:
        self.runtime = runtime
        self.by_request: dict[str, Child] = {}
        self.by_parent: dict[str, Tracked] = {}
        self.awaiting_first: set[str] = set()  # request ids whose first output has not been seen
        self.kv_cache_usage: float | None = None  # the scheduler's latest figure (stats logging on)
        self.engine_memory = _memory.EngineMemoryReader(runtime.meter)

    # -- engines ------------------------------------------------------------------------------
    def engine_init_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        """After LLMEngine / AsyncLLM construction: remember what its requests' spans say, and ask
        its workers for their memory."""
        result = wrapped(*args, **kwargs)
        try:
            processor = getattr(instance, "output_processor", None)
            if processor is not None:
                info = engine_infos[processor] = EngineInfo(instance)
                self.engine_memory.ask(instance, info)
        except Exception:
            logger.debug("could not read the vLLM engine's configuration", exc_info=True)
        return result

    async def async_add_request_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        headers = kwargs.get("trace_headers")
        if headers is None and len(args) > _TRACE_HEADERS_POSITION:
            headers = args[_TRACE_HEADERS_POSITION]
        info = engine_infos.get(getattr(instance, "output_processor", None))
        if info is not None and not info.memory_asked:  # built outside an event loop
            self.engine_memory.ask(instance, info)
        served = served_request.set(True)
        token = incoming_trace_headers.set(headers or None)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            incoming_trace_headers.reset(token)
            served_request.reset(served)

    def __len__(self) -> int:
        return len(self.by_request) + len(self.by_parent) + len(self.awaiting_first)

    # -- add_request ------------------------------------------------------------------------
    def add_request_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        result = wrapped(*args, **kwargs)
        if is_instrumentation_enabled():
            try:
                self._on_add(instance, *args, **kwargs)
            except Exception:
                logger.debug("could not start a vLLM request span", exc_info=True)
        return result

    def _on_add(self, processor: Any, request: Any, prompt: Any = None, parent_req: Any = None,
                request_index: int = 0, queue: Any = None) -> None:
        """Note the request and its caller's context; nothing else happens on the request path."""
        request_id = request.request_id
        states = processor.request_states
        if request_id in self.by_request or request_id not in states:
            return  # a streaming-input update of a known request, or not accepted
        state = states[request_id]
        if parent_req is not None:
            tracked = self.by_parent.get(parent_req.request_id)
            if tracked is not None:
                self.by_request[request_id] = Child(tracked, state, request.arrival_time)
                self.awaiting_first.add(request_id)
                return
        info = engine_infos.get(processor) or _fallback_info(processor)
        n = int(getattr(getattr(parent_req, "sampling_params", None), "n", None) or 1)
        evaluated = self.runtime.wants_text
        tracked = Tracked(request, info, n, current_operation.get(),
                          getattr(request, "trace_headers", None) or incoming_trace_headers.get(),
                          served_request.get(), self.runtime.current_parent(), handoff.current_eval_context() if evaluated else None,
                          evaluated or self.runtime.content.enabled, evaluated)
        if tracked.texts is not None:
            chat = chat_request.get()
            if chat is not None and chat[0] == getattr(request, "external_req_id", request_id):
                tracked.messages = chat[1]  # not the rendered template
                tracked.prompt = handoff.prompt_text(chat[1])
            else:
                prompt = getattr(state, "prompt", None)
                tracked.prompt = prompt if isinstance(prompt, str) else None
        if info.gpu_index is not None:
            self.runtime.gpu_begin(info.gpu_index)
        self.by_request[request_id] = Child(tracked, state, request.arrival_time)
        self.awaiting_first.add(request_id)
        if parent_req is not None:
            self.by_parent[parent_req.request_id] = tracked

    # -- process_outputs ----------------------------------------------------------------------
    def process_outputs_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        """Per engine step. Only outputs that matter are looked at: a request's first output, its
        last, and those that carry scheduler events. A request that a stop string finishes in the
        front-end has no finish reason in its engine output; the drop in `request_states` tells
        it happened."""
        outputs = args[0] if args else kwargs.get("engine_core_outputs", ())
        if not self.by_request:
            try:
                for output in outputs:  # untracked requests: their compute still comes off
                    if output.finish_reason is not None and output.kv_transfer_params:
                        take_compute(output)
            except Exception:
                logger.debug("could not read a vLLM step", exc_info=True)
            return wrapped(*args, **kwargs)
        try:
            awaiting = self.awaiting_first
            interesting = [o for o in outputs
                           if o.finish_reason is not None or o.events or o.request_id in awaiting]
            timestamp = args[1] if len(args) > 1 else kwargs.get("engine_core_timestamp")
            if timestamp is None:  # not passed by this vLLM: the front-end's monotonic clock instead
                timestamp = time.monotonic()
            states = instance.request_states
            before = len(states)
        except Exception:
            logger.debug("could not read a vLLM step", exc_info=True)
            return wrapped(*args, **kwargs)
        if interesting:
            try:
                self._before_step(interesting, timestamp)
            except Exception:
                logger.debug("could not read a vLLM step", exc_info=True)
        result = wrapped(*args, **kwargs)
        finished = before - len(states)
        if interesting or finished:
            try:
                self._after_step(states, outputs, interesting, finished, timestamp)
            except Exception:
                logger.debug("could not read a vLLM step", exc_info=True)
        return result

    def _before_step(self, interesting: list, timestamp: float) -> None:
        """First outputs: vLLM's first-token timestamps (the step's engine-core timestamp, and
        the wall clock now, as its `IterationStats` takes it before processing the step)."""
        by_request = self.by_request
        awaiting = self.awaiting_first
        wall = None
        for output in interesting:
            child = by_request.get(output.request_id)
            if output.finish_reason is not None and output.kv_transfer_params:
                compute = take_compute(output)
                if child is not None:
                    child.compute = compute
            if child is None:
                continue
            if output.events:
                child.read_events(output.events)
            if output.request_id in awaiting:
                awaiting.discard(output.request_id)
                if wall is None:
                    wall = time.time()
                child.first_token_ts = timestamp
                child.first_token_latency = wall - child.arrival_time

    def _after_step(self, states: dict, outputs: Any, interesting: list, finished: int,
                    timestamp: float) -> None:
        now = time.time_ns()
        by_request = self.by_request
        seen_finished = 0
        for output in interesting:
            if output.request_id in states:
                continue
            seen_finished += 1
            child = by_request.get(output.request_id)
            if child is not None:
                self._finish_output(output, child, now, timestamp)
        if finished > seen_finished:  # stop strings: finished in the front-end this step
            for output in outputs:
                child = by_request.get(output.request_id)
                if child is not None and output.request_id not in states:
                    self._finish_output(output, child, now, timestamp)

    def _finish_output(self, output: Any, child: Child, now: int, timestamp: float) -> None:
        pooled = getattr(output, "pooling_output", None)
        if pooled is not None and getattr(pooled, "dim", None) is not None and pooled.dim() >= 1:
            child.tracked.embedding_dims = int(pooled.shape[-1])
        reason = output.finish_reason
        self._finish_child(output.request_id, child, str(reason) if reason is not None else "stop", now,
                           last_token_ts=timestamp)

    def _finish_child(self, request_id: str, child: Child, reason: str, now: int,
                      error: BaseException | None = None, last_token_ts: float | None = None) -> None:
        """`now`: the end instant, wall clock (time.time_ns)."""
        self.by_request.pop(request_id, None)
        self.awaiting_first.discard(request_id)
        tracked, state = child.tracked, child.state
        detokenizer = getattr(state, "detokenizer", None)
        if detokenizer is not None:
            produced = detokenizer.num_output_tokens()
            tracked.output_tokens += produced
            tracked.max_output_tokens = max(tracked.max_output_tokens, produced)
            block_size = tracked.info.kv_block_size
            prompt = getattr(tracked.origin, "prompt_token_ids", None)
            if block_size and prompt is not None and produced:
                # the KV cache holds every token fed to the model: the prompt and all outputs but the
                # last (sampled, never fed back); its blocks only grow, so at the end it is at its peak
                tracked.kv_blocks += -(-(len(prompt) + produced - 1) // block_size)
                tracked.kv_shared_blocks += int(getattr(state, "num_cached_tokens", 0) or 0) // block_size
        if tracked.compute is not None:
            if child.compute is None or error is not None:
                tracked.compute = None  # one choice's share unknown: none reported, not a part
            else:
                tracked.compute = [a + b for a, b in zip(tracked.compute, child.compute)]
        index = getattr(state, "request_index", 0) or 0
        if 0 <= index < len(tracked.reasons):
            tracked.reasons[index] = reason
            if tracked.texts is not None:
                tracked.texts[index] = getattr(detokenizer, "output_text", None)
        tracked.pending -= 1
        if tracked.pending > 0 and error is None:
            return
        parent = getattr(state, "parent_req", None)
        if parent is not None:
            self.by_parent.pop(parent.request_id, None)
            for child_id in list(getattr(parent, "child_requests", ()) or ()):
                self.by_request.pop(child_id, None)
                self.awaiting_first.discard(child_id)
        # The facts are read now (the request's state is final once it has finished); its span is
        # made from them on the telemetry worker, or in the export process.
        parent = tracked.parent if not tracked.headers else None
        deferred = parent if isinstance(parent, RequestSpan) and parent.span is None else None
        self.runtime.finish(self._record(child, detokenizer is not None, last_token_ts, now, error),
                            deferred_parent=deferred)

    def _record(self, child: Child, counted: bool, last_token_ts: float | None, end_wall_ns: int,
                error: BaseException | None) -> FinishedRequest:
        """The finished request: started at its arrival, with tokens, finish reasons, vLLM's
        latency breakdown (that of the last child to finish, as vLLM's tracing would give it for
        that child; aborted and failed requests have no last token), the KV-cache usage and the
        framework attributes."""
        tracked, origin = child.tracked, child.tracked.origin
        info = tracked.info
        sampling = getattr(origin, "sampling_params", None)
        external_id = getattr(origin, "external_req_id", None) or origin.request_id
        operation = tracked.operation or _operation_for(external_id, sampling)
        headers = tracked.headers
        parent = propagate.extract(headers) if headers else tracked.parent
        prompt_ids = getattr(origin, "prompt_token_ids", None)
        reasons = [r or "abort" for r in tracked.reasons]
        ttft, attributes = child.timing(last_token_ts)
        attributes[A.RESPONSE_ID], prompt_index = response_id(external_id, operation)
        if prompt_index is not None:
            attributes[A.VLLM_PROMPT_INDEX] = prompt_index
        attributes[A.RESPONSE_FINISH_REASONS] = reasons
        cached = getattr(child.state, "num_cached_tokens", None)
        if cached is not None:
            attributes[A.USAGE_CACHE_READ_INPUT_TOKENS] = int(cached)
        if tracked.kv_blocks and all(r not in (None, "abort") for r in tracked.reasons) and error is None:
            attributes[A.VLLM_REQUEST_KV_BLOCKS] = tracked.kv_blocks
            attributes[A.VLLM_REQUEST_KV_SHARED_BLOCKS] = tracked.kv_shared_blocks
            if info.kv_bytes_per_block:
                attributes[A.VLLM_REQUEST_KV_BYTES] = tracked.kv_blocks * info.kv_bytes_per_block
        if tracked.compute is not None and tracked.compute[1]:
            seconds, tokens, token_context, logits = tracked.compute
            attributes[A.VLLM_REQUEST_COMPUTE_TIME] = seconds
            if info.flop_rates is not None:
                per_token, per_token_context, per_logit = info.flop_rates
                attributes[A.VLLM_REQUEST_FLOPS] = int(per_token * tokens + per_token_context * token_context
                                                       + per_logit * logits)
        lora = getattr(origin, "lora_request", None)
        model = info.model  # gen_ai.request.model: the name the client asked for
        if lora is not None:
            attributes[A.MODEL_LORA_NAME] = str(lora.lora_name)
            attributes[A.MODEL_LORA_ID] = int(lora.lora_int_id)
            if tracked.served:  # a server's client asked for the adapter by its name (--lora-modules)
                model = str(lora.lora_name)
        if self.kv_cache_usage is not None:
            attributes[A.VLLM_KV_CACHE_USAGE] = self.kv_cache_usage
        if tracked.embedding_dims is not None:
            attributes[A.EMBEDDINGS_DIMENSION_COUNT] = tracked.embedding_dims
        input_messages = output_messages = eval_pairs = None
        texts = tracked.texts
        if texts is not None:
            content = self.runtime.content
            if content.enabled:
                if tracked.messages is not None:
                    input_messages = content.input_messages(tracked.messages)
                elif tracked.prompt is not None:
                    input_messages = content.prompt(tracked.prompt)
                output_messages = content.completions([t or "" for t in texts], reasons)
            if tracked.evaluated:  # the choices that finished (not aborted)
                eval_pairs = tuple((tracked.prompt, text) for text, reason in zip(texts, tracked.reasons)
                                   if text and reason not in (None, "abort")) or None
        arrival_ns = int(child.arrival_time * 1e9)
        error_type, error_message = error_details(error)
        return FinishedRequest(
            scope=self.runtime.scope, name=f"{operation} {model}",
            kind=_SERVER if headers or tracked.served else _INTERNAL,  # see _SERVER
            parent=_parent_ids(parent),
            start_attributes=shared_start_attributes(operation, model, sampling_values(sampling, tracked.served),
                                                     tracked.n),
            start_wall_ns=arrival_ns, duration_ns=max(0, end_wall_ns - arrival_ns), attributes=attributes,
            framework=info.framework, metrics="server", engine_ttft_s=ttft,
            engine_decode_s=attributes.get(A.VLLM_DECODE_TIME) if ttft is not None else None,
            input_tokens=len(prompt_ids) if prompt_ids is not None else None,
            output_tokens=tracked.output_tokens if counted else None,
            decode_steps=tracked.max_output_tokens or None,
            gpu=self.runtime.gpu_end(info.gpu_index) if info.gpu_index is not None else None,
            input_messages=input_messages, output_messages=output_messages, eval_pairs=eval_pairs,
            eval_context=tracked.eval_context, error_type=error_type, error_message=error_message)

    def scheduler_stats_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        """Keep the KV-cache usage the scheduler reports each step (one attribute read)."""
        stats = args[0] if args else kwargs.get("scheduler_stats")
        usage = getattr(stats, "kv_cache_usage", None)
        if usage is not None:
            self.kv_cache_usage = float(usage)
        return wrapped(*args, **kwargs)

    # -- the OpenAI server's chat route --------------------------------------------------------------
    async def chat_completion_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        """Keep the chat request's messages for its span (only when content capture or inline
        evaluation wants text), under the id the server will give the request: `chatcmpl-` and its
        `X-Request-Id` header or the request's own id (vLLM's `_base_request_id`)."""
        chat = None
        if self.runtime.content.enabled or self.runtime.wants_text:
            try:
                request = args[0] if args else kwargs.get("request")
                raw = args[1] if len(args) > 1 else kwargs.get("raw_request")
                header = raw.headers.get("X-Request-Id") if raw is not None else None
                base = header if header is not None else getattr(request, "request_id", None)
                messages = getattr(request, "messages", None)
                if base is not None and messages:
                    chat = (f"chatcmpl-{base}", [_plain_message(m) for m in messages])
                    chat_request.set(chat)
            except Exception:
                logger.debug("could not keep a chat request's messages", exc_info=True)
        result = await wrapped(*args, **kwargs)
        if chat is not None and inspect.isasyncgen(result):  # streamed: iterated in another task
            return _with_chat_request(result, chat)
        return result

    # -- requests the engine refuses (InputProcessor) --------------------------------------------
    def _rejected(self, processor: Any, args: tuple, kwargs: dict, error: BaseException) -> None:
        """A request refused before it reached the output processor (e.g. a prompt longer than
        max_model_len) still gets its span: started and ended now, status ERROR, `error.type`."""
        try:
            model_config = getattr(processor, "model_config", None)
            model = str(getattr(model_config, "served_model_name", None) or getattr(model_config, "model", "")
                        or "unknown")
            params = args[2] if len(args) > 2 else kwargs.get("params")
            sampling = params if hasattr(params, "max_tokens") else None
            request_id = args[0] if args else kwargs.get("request_id")
            operation = current_operation.get() or _operation_for(request_id, sampling)
            served = served_request.get()
            attrs = start_attributes(operation, model, sampling_values(sampling, served))
            headers = kwargs.get("trace_headers") or incoming_trace_headers.get()
            span = self.runtime.start(
                f"{operation} {model}", attrs, kind=SpanKind.SERVER if headers or served else SpanKind.INTERNAL,
                context=propagate.extract(headers) if headers else None, defer_span=True, metrics="server",
            )
            if request_id is not None:
                span.set_attribute(A.RESPONSE_ID, response_id(request_id, operation)[0])
            span.end(error)
        except Exception:
            logger.debug("could not record a refused vLLM request", exc_info=True)

    def process_inputs_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return wrapped(*args, **kwargs)
        except Exception as exc:
            if is_instrumentation_enabled():
                self._rejected(instance, args, kwargs, exc)
            raise

    async def process_inputs_async_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return await wrapped(*args, **kwargs)
        except Exception as exc:
            if is_instrumentation_enabled():
                self._rejected(instance, args, kwargs, exc)
            raise

    # -- abort_requests / propagate_error -----------------------------------------------------
    def abort_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        aborted = wrapped(*args, **kwargs)
        if self.by_request and aborted:
            now = time.time_ns()
            try:
                for request_id in aborted:
                    child = self.by_request.get(request_id)
                    if child is not None:
                        self._finish_child(request_id, child, "abort", now)
            except Exception:
                logger.debug("could not end aborted vLLM spans", exc_info=True)
        return aborted

    def propagate_error_wrapper(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        error = args[0] if args else kwargs.get("e")
        now = time.time_ns()
        try:
            for request_id, child in list(self.by_request.items()):
                self._finish_child(request_id, child, "error", now, error)
        except Exception:
            logger.debug("could not end failed vLLM spans", exc_info=True)
        return wrapped(*args, **kwargs)


# Span kinds: a request a server (AsyncLLM: the OpenAI server) serves is the server side of a remote
# call, SERVER, whether or not the client sent a trace context (OpenTelemetry's span kind rules;
# the GenAI conventions' model-server spans). The offline engine runs requests of this process's
# own code: INTERNAL.
_SERVER, _INTERNAL = SpanKind.SERVER.value, SpanKind.INTERNAL.value


async def _with_chat_request(stream: Any, chat: tuple[str, Any]) -> Any:
    """`stream`, with `chat_request` set where it is iterated; closing it closes `stream`."""
    chat_request.set(chat)
    try:
        async for item in stream:
            yield item
    finally:
        await stream.aclose()


def _plain_message(message: Any) -> Any:
    """A chat message as a plain dict (the server's request holds dicts or pydantic models)."""
    if isinstance(message, dict):
        return message
    dump = getattr(message, "model_dump", None)
    return dump() if callable(dump) else message


def _parent_ids(parent: Any) -> SpanIds | None:
    """The ids of a request's parent: a Context, or the grouping request it was started in (whose
    span, when it has none yet, is made off the request path: runtime.finish)."""
    if isinstance(parent, RequestSpan):
        return SpanIds.of(parent.span.get_span_context()) if parent.span is not None else None
    return SpanIds.of_context(parent)


def engine_timing(first_token_latency: float | None, queued_ts: float | None, scheduled_ts: float | None,
                  first_token_ts: float | None, last_token_ts: float | None, num_preemptions: int = 0,
                  ) -> tuple[float | None, dict[str, float]]:
    """vLLM's per-request latency breakdown, with its own definitions (OutputProcessor.do_tracing,
    IterationStats.update_from_finished_request): the `*_ts` are engine-monotonic,
    `first_token_latency` is wall clock from arrival. Returns the time to first token (it goes on
    the span as `gen_ai.response.time_to_first_chunk`) and the `vllm.request.*` attributes: queue,
    prefill, decode (vLLM's inference time is prefill + decode, not repeated). An unknown
    timestamp (None, or vLLM's 0.0) leaves out the figures that need it."""
    timing: dict[str, float] = {}
    if scheduled_ts:
        if queued_ts:
            timing[A.VLLM_QUEUE_TIME] = scheduled_ts - queued_ts
        if first_token_ts:
            timing[A.VLLM_PREFILL_TIME] = first_token_ts - scheduled_ts
    if first_token_ts and last_token_ts:
        timing[A.VLLM_DECODE_TIME] = last_token_ts - first_token_ts
    if num_preemptions:
        timing[A.VLLM_NUM_PREEMPTIONS] = num_preemptions
    return first_token_latency, timing


# vLLM's EngineCoreEventType values (vllm.v1.engine), compared as ints on the per-step path.
_QUEUED, _SCHEDULED, _PREEMPTED = 1, 2, 3
_event_types: Any = None


def _events() -> Any:
    global _event_types
    if _event_types is None:
        from vllm.v1.engine import EngineCoreEventType

        _event_types = EngineCoreEventType
    return _event_types


# -- the scheduler (where the engine core runs): the request events vLLM records only when it logs
# stats, recorded the same way when it does not. Each hook does nothing when vLLM records them itself.
def scheduler_add_request_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """QUEUED, when the request enters the waiting queue (the end of Scheduler.add_request)."""
    result = wrapped(*args, **kwargs)
    if not getattr(instance, "log_stats", True):
        try:
            request = args[0] if args else kwargs["request"]
            if instance.requests.get(request.request_id) is request:  # new, not a streaming update
                request.record_event(_events().QUEUED)
        except Exception:
            logger.debug("could not record a vLLM QUEUED event", exc_info=True)
    return result


def scheduler_schedule_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """SCHEDULED, for the requests scheduled for the first time in this step, at the step's start
    (vLLM's own timestamp is taken a few instructions into Scheduler.schedule); and each scheduled
    request's tokens, for its share of the step (`scheduler_update_wrapper`)."""
    if getattr(instance, "log_stats", True):
        output = wrapped(*args, **kwargs)
        timestamp = None
    else:
        timestamp = time.monotonic()
        output = wrapped(*args, **kwargs)
    new = getattr(output, "scheduled_new_reqs", None)
    if new and timestamp is not None:
        try:
            requests = instance.requests
            scheduled = _events().SCHEDULED
            for data in new:
                request = requests.get(data.req_id)
                if request is not None:
                    request.record_event(scheduled, timestamp)
        except Exception:
            logger.debug("could not record vLLM SCHEDULED events", exc_info=True)
    try:
        _note_step(instance, output)
    except Exception:
        logger.debug("could not note a vLLM step's scheduled tokens", exc_info=True)
    return output


# -- compute per request (where the engine core runs) ---------------------------------------
# Each engine step's duration is shared among the requests it ran, in proportion to their scheduled
# tokens; a request's accumulated share and the terms of vLLM's analytic FLOPs model (tokens, tokens
# x context, logits tokens: `vllm.v1.metrics.perf`, linear in them) ride to the front-end on its
# finishing output, under COMPUTE_KEY of `kv_transfer_params`; the front-end takes them off before
# vLLM reads that output, so what the caller receives is unchanged.
COMPUTE_KEY = "traceai.compute"
_STEPS = "_traceai_steps"  # on the scheduler: id(scheduler output) -> (scheduled at, the output)
_LAST_UPDATE = "_traceai_last_update"
_ACCOUNT = "_traceai_compute"  # on vLLM's Request: [seconds, tokens, tokens x context, logits tokens]
_LEDGER = "_traceai_ledger"  # on the scheduler: its ComputeLedger
_MAX_PENDING_STEPS = 64
#: every step duration shared out in this process (seconds): the sum of all requests' shares
engine_compute_seconds = 0.0


def _note_step(scheduler: Any, output: Any) -> None:
    """When the step was scheduled; the sharing out waits for its results (ComputeLedger.step)."""
    if not getattr(output, "num_scheduled_tokens", None):
        return
    steps = scheduler.__dict__.get(_STEPS)
    if steps is None:
        steps = scheduler.__dict__[_STEPS] = {}
    elif len(steps) >= _MAX_PENDING_STEPS:  # outputs never updated (a failed step): forget the oldest
        del steps[next(iter(steps))]
    steps[id(output)] = (time.monotonic(), output)


class ComputeLedger:
    """One scheduler's accounts, kept cheap for the common step: every request of the previous step
    decoding one more token. Such a run of steps ("a decoding run") is settled in one go when it ends:
    its share is the difference of a clock that sums each step's seconds per token, and its terms are
    k tokens, k logits tokens and k contexts growing by one (k x start + k(k+1)/2). Only a step that
    changes who runs, or runs a request with other than one token (a prefill, speculative tokens),
    costs work per request. Accounts: [seconds, tokens, tokens x context, logits tokens], on vLLM's
    Request (freed with it)."""

    __slots__ = ("clock", "steps", "running")

    def __init__(self) -> None:
        self.clock = 0.0  # sum over steps of seconds per scheduled token
        self.steps = 0
        # request id -> (account, clock, step count and context when its decoding run started)
        self.running: dict[str, tuple[list, float, int, int]] = {}

    @staticmethod
    def _settle(run: tuple[list, float, int, int], clock: float, steps: int) -> list:
        account, clock0, steps0, context0 = run
        k = steps - steps0
        if k:
            account[0] += clock - clock0
            account[1] += k
            account[2] += k * context0 + k * (k + 1) // 2
            account[3] += k
        return account

    def step(self, scheduler: Any, output: Any, duration: float) -> dict[str, list] | None:
        """Share the step out; returns the accounts of the requests it ran other than as a decoding
        run (None when there were none)."""
        counts = output.num_scheduled_tokens
        total = output.total_num_scheduled_tokens or sum(counts.values())
        rate = duration / total
        running = self.running
        if total == len(counts) and not output.scheduled_new_reqs and counts.keys() == running.keys():
            self.clock += rate  # everyone decodes one more token: their runs go on
            self.steps += 1
            return None
        clock, steps = self.clock, self.steps  # before this step
        for req_id in running.keys() - counts.keys():  # not run this step: their runs end
            self._settle(running.pop(req_id), clock, steps)
        new = output.scheduled_new_reqs
        first = {data.req_id for data in new} if new else ()
        self.clock = clock + rate
        self.steps = steps + 1
        get = scheduler.requests.get
        individual = {}
        for req_id, tokens in counts.items():
            if tokens == 1 and req_id in running:
                continue  # decoding on: accounted when its run ends
            request = get(req_id)
            if request is None:
                continue
            run = running.pop(req_id, None)
            if run is not None:
                account = self._settle(run, clock, steps)
            else:
                account = request.__dict__.get(_ACCOUNT)
                if account is None:
                    account = request.__dict__[_ACCOUNT] = [0.0, 0, 0, 0]
            context = request.num_computed_tokens  # the context once this step's tokens are computed
            account[0] += tokens * rate
            account[1] += tokens
            account[2] += tokens * context
            account[3] += tokens if tokens == 1 and req_id not in first else 1  # vLLM's model: prefill -> 1
            individual[req_id] = account
            if tokens == 1:  # decoding from here: its run starts after this step
                running[req_id] = (account, self.clock, self.steps, context)
        return individual

    def finished(self, req_id: str, individual: dict[str, list] | None) -> list | None:
        """A request that finishes in this step: its whole account, its run settled; forgets the run."""
        run = self.running.pop(req_id, None)
        if run is not None:
            return self._settle(run, self.clock, self.steps)
        return individual.get(req_id) if individual else None


def scheduler_update_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """Scheduler.update_from_output: the step has run. Its duration (from its scheduling, or from the
    previous step's results when steps overlap) is shared out; finishing requests carry theirs."""
    global engine_compute_seconds
    now = time.monotonic()
    ledger = individual = None
    try:
        output = args[0] if args else kwargs["scheduler_output"]
        state = instance.__dict__
        step = state.get(_STEPS, {}).pop(id(output), None)
        if step is not None and step[1] is output:
            duration = max(0.0, now - max(step[0], state.get(_LAST_UPDATE, 0.0)))
            ledger = state.get(_LEDGER)
            if ledger is None:
                ledger = state[_LEDGER] = ComputeLedger()
            individual = ledger.step(instance, output, duration)
            engine_compute_seconds += duration
        state[_LAST_UPDATE] = now
    except Exception:
        ledger = None
        logger.debug("could not share out a vLLM step", exc_info=True)
    result = wrapped(*args, **kwargs)
    if ledger is None:
        return result
    try:
        _attach_compute(result, ledger, individual)
    except Exception:
        logger.debug("could not attach a vLLM request's compute", exc_info=True)
    return result


def _attach_compute(result: Any, ledger: ComputeLedger, individual: dict[str, list] | None) -> None:
    for outputs in (result or {}).values():
        for output in outputs.outputs:
            if output.finish_reason is None:
                continue
            account = ledger.finished(output.request_id, individual)
            if account is not None:
                output.kv_transfer_params = {**(output.kv_transfer_params or {}), COMPUTE_KEY: list(account)}


def take_compute(output: Any) -> list | None:
    """The front-end's half: the finishing output's compute, taken off its `kv_transfer_params`."""
    params = output.kv_transfer_params
    if not params or COMPUTE_KEY not in params:
        return None
    rest = {key: value for key, value in params.items() if key != COMPUTE_KEY}
    output.kv_transfer_params = rest or None
    return params[COMPUTE_KEY]


def scheduler_preempt_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """PREEMPTED, with the timestamp vLLM passes (Scheduler._preempt_request)."""
    result = wrapped(*args, **kwargs)
    if not getattr(instance, "log_stats", True):
        try:
            request = args[0] if args else kwargs["request"]
            timestamp = args[1] if len(args) > 1 else kwargs.get("timestamp")
            request.record_event(_events().PREEMPTED, timestamp)
        except Exception:
            logger.debug("could not record a vLLM PREEMPTED event", exc_info=True)
    return result
