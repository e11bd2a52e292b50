"""Spans for local transformers generation: `generate` and the text-generation pipelines.

`generate` is the boundary every local generation crosses (pipelines, custom loops, most
model-specific `generate` overrides that call `super()`), so it owns the request span and the
token counts; a pipeline span only parents it and carries the text. Counting happens on the
returned ids (real tokens per sequence: prompt padding and post-EOS padding excluded). When the
ids live on a GPU, counting waits for a background thread so the caller never synchronises.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
import weakref
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from fi_evals_core.telemetry import RequestSpan, TelemetryRuntime, torch_framework_attributes
from fi_evals_core.telemetry import attributes as A

logger = logging.getLogger(__name__)

PROVIDER = "huggingface"
_in_generate: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_hf_in_generate", default=False)
_in_pipeline: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_hf_in_pipeline", default=False)


class _ModelInfo:
    __slots__ = ("name", "device", "gpu_index", "is_encoder_decoder", "static")

    def __init__(self, model: Any, device: Any) -> None:
        import transformers

        config = getattr(model, "config", None)
        self.name = str(getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "") or
                        getattr(config, "model_type", "") or type(model).__name__)
        self.device = device
        self.gpu_index = None
        if device is not None and getattr(device, "type", None) == "cuda":
            import torch

            self.gpu_index = device.index if device.index is not None else torch.cuda.current_device()
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        quant = getattr(config, "quantization_config", None)
        quant_method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        self.static = {
            A.OPERATION_NAME: A.OP_TEXT_COMPLETION,
            A.PROVIDER_NAME: PROVIDER,
            A.REQUEST_MODEL: self.name,
            **torch_framework_attributes(
                engine="transformers",
                engine_version=transformers.__version__,
                dtype=getattr(model, "dtype", None),
                device=device,
                quantization=str(getattr(quant_method, "value", quant_method)) if quant_method else None,
                architecture=type(model).__name__,
            ),
        }


_model_infos: "weakref.WeakKeyDictionary[Any, _ModelInfo]" = weakref.WeakKeyDictionary()


def model_info(model: Any) -> _ModelInfo:
    """Static attributes of a model, recomputed only when it moves to another device."""
    device = getattr(model, "device", None)
    info = _model_infos.get(model)
    if info is None or info.device != device:
        info = _ModelInfo(model, device)
        try:
            _model_infos[model] = info
        except TypeError:  # not weak-referenceable: compute every time
            pass
    return info


_marker_class: Any = None


def _first_token_marker(request: RequestSpan) -> Any:
    """A stopping criterion that never stops: it notes when the first new token exists.

    generate calls its stopping criteria right after each decoding step, in every decoding mode
    (greedy, sampling, beam search, assisted), so the first call is the first token's time.
    """
    global _marker_class
    if _marker_class is None:
        from transformers import StoppingCriteria

        class FirstTokenMarker(StoppingCriteria):
            def __init__(self, request: RequestSpan) -> None:
                self.request = request
                self.never: Any = None

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                never = self.never
                if never is None or never.shape[0] != input_ids.shape[0] or never.device != input_ids.device:
                    import torch

                    self.request.mark_first_token()
                    never = self.never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return never

        _marker_class = FirstTokenMarker
    return _marker_class(request)


_STOPPING_CRITERIA_POS = 3  # generate(inputs, generation_config, logits_processor, stopping_criteria, ...)


class GenerateCall:
    """One `generate` call: its span, its arguments, and the counting of its output."""

    def __init__(self, runtime: TelemetryRuntime, model: Any, args: tuple, kwargs: dict) -> None:
        self.info = info = model_info(model)
        gen_config = kwargs.get("generation_config") or (args[1] if len(args) > 1 else None) or getattr(
            model, "generation_config", None
        )
        self.gen_config = gen_config
        self.kwargs = kwargs

        def param(name: str) -> Any:
            value = kwargs.get(name)
            return value if value is not None else getattr(gen_config, name, None)

        self.param = param
        attrs = dict(info.static)
        max_new = param("max_new_tokens")
        if max_new is not None:
            attrs[A.REQUEST_MAX_TOKENS] = int(max_new)
        do_sample = bool(param("do_sample"))
        attrs[A.HF_DO_SAMPLE] = do_sample
        if do_sample:
            for key, name in ((A.REQUEST_TEMPERATURE, "temperature"), (A.REQUEST_TOP_P, "top_p"), (A.REQUEST_TOP_K, "top_k")):
                value = param(name)
                if value is not None:
                    attrs[key] = value
        num_beams = param("num_beams") or 1
        attrs[A.HF_NUM_BEAMS] = int(num_beams)
        n = param("num_return_sequences") or 1
        if n != 1:
            attrs[A.REQUEST_CHOICE_COUNT] = int(n)
        if kwargs.get("streamer") is not None:
            attrs[A.REQUEST_STREAM] = True
        self.request = runtime.start(
            f"{A.OP_TEXT_COMPLETION} {info.name}", attrs, kind=SpanKind.INTERNAL, gpu_index=info.gpu_index
        )
        self.input_ids = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
        self.attention_mask = kwargs.get("attention_mask")
        self.decoder_input_ids = kwargs.get("decoder_input_ids")
        self.args = args
        # The first-token clock: a stopping criterion that never stops. Continuous batching
        # (cache_implementation="paged") and custom generate functions refuse extra criteria.
        if kwargs.get("cache_implementation") != "paged" and kwargs.get("custom_generate") is None:
            from transformers import StoppingCriteriaList

            if len(args) > _STOPPING_CRITERIA_POS:
                user = args[_STOPPING_CRITERIA_POS]
                merged = StoppingCriteriaList([*(user or []), _first_token_marker(self.request)])
                self.args = (*args[:_STOPPING_CRITERIA_POS], merged, *args[_STOPPING_CRITERIA_POS + 1 :])
            else:
                user = kwargs.get("stopping_criteria")
                merged = StoppingCriteriaList([*(user or []), _first_token_marker(self.request)])
                self.kwargs = {**kwargs, "stopping_criteria": merged}

    def finish(self, output: Any) -> None:
        end_ns = time.perf_counter_ns()
        sequences = output if _is_tensor(output) else getattr(output, "sequences", None)
        if not _is_tensor(sequences) or sequences.dim() != 2:
            self.request.end(end_ns=end_ns)
            return
        if not needs_deferred_count(sequences):
            self._count_and_end(sequences, end_ns)
        else:
            # Reading counts back from the GPU would synchronise the caller: do it off the request path.
            self.request.freeze_end_state()
            deferred_finisher().submit(lambda: self._count_and_end(sequences, end_ns))

    def _count_and_end(self, sequences: Any, end_ns: int) -> None:
        try:
            counts = self._count(sequences)
        except Exception:
            logger.debug("token counting failed", exc_info=True)
            counts = None
        if counts is not None:
            input_tokens, lengths, reasons, steps = counts
            self.request.set_usage(input_tokens=input_tokens, output_tokens=sum(lengths), decode_steps=steps)
            self.request.set_response(finish_reasons=reasons)
        self.request.end(end_ns=end_ns)

    def _count(self, sequences: Any) -> tuple[int | None, list[int], list[str], int] | None:
        import torch

        pad = self.param("pad_token_id")
        eos = self.param("eos_token_id")
        eos_ids = [] if eos is None else ([int(e) for e in eos] if isinstance(eos, (list, tuple)) else
                                          [int(e) for e in eos.flatten().tolist()] if _is_tensor(eos) else [int(eos)])
        inputs = self.input_ids if _is_tensor(self.input_ids) else None
        if self.info.is_encoder_decoder:
            prefix = self.decoder_input_ids.shape[-1] if _is_tensor(self.decoder_input_ids) else 1
        elif inputs is not None and inputs.dim() == 2 and inputs.dtype in (torch.long, torch.int):
            prefix = inputs.shape[-1]
        else:
            prefix = 0  # inputs_embeds only: the output holds just the new tokens
        generated = sequences[:, prefix:]
        width = generated.shape[1]
        if width == 0:
            return None
        positions = torch.arange(1, width + 1, device=generated.device)
        lengths = torch.full((generated.shape[0],), width, device=generated.device, dtype=torch.long)
        if eos_ids:
            is_eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device))
            first_eos = torch.where(is_eos, positions, width + 1).min(dim=1).values
            lengths = torch.minimum(lengths, first_eos)
        if pad is not None and int(pad) not in eos_ids:
            # sequences stopped early (stop strings, EOS) are right-padded with pad_token_id
            real = generated != int(pad)
            last_real = torch.where(real, positions, 0).max(dim=1).values
            lengths = torch.minimum(lengths, last_real)
        stopped = (lengths < width) | (
            torch.isin(generated[:, -1], torch.tensor(eos_ids, device=generated.device)) if eos_ids
            else torch.zeros_like(lengths, dtype=torch.bool)
        )
        parts = [lengths, stopped.long()]
        input_count = None
        if inputs is not None and inputs.dim() == 2:
            mask = self.attention_mask
            if _is_tensor(mask) and mask.shape == inputs.shape:
                input_count = mask.sum().reshape(1).to(generated.device, torch.long)
            elif pad is not None and int(pad) not in eos_ids:
                input_count = (inputs != int(pad)).sum().reshape(1).to(generated.device, torch.long)
            else:
                input_count = torch.tensor([inputs.numel()], device=generated.device)
            parts.append(input_count)
        values = torch.cat(parts).tolist()  # the one device-to-host read
        rows = generated.shape[0]
        lengths_list = values[:rows]
        reasons = ["stop" if s else "length" for s in values[rows : 2 * rows]]
        return (values[2 * rows] if input_count is not None else None), lengths_list, reasons, width


def needs_deferred_count(sequences: Any) -> bool:
    """Counting reads ids back to the host: on an accelerator that would synchronise the caller."""
    return sequences.device.type != "cpu"


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "dim") and hasattr(value, "device") and hasattr(value, "shape")


def generate_wrapper(runtime: TelemetryRuntime):
    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if _in_generate.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        try:
            call = GenerateCall(runtime, instance, args, kwargs)
        except Exception:
            logger.debug("could not start a generate span", exc_info=True)
            return wrapped(*args, **kwargs)
        token = _in_generate.set(True)
        try:
            with trace.use_span(call.request.span, end_on_exit=False, record_exception=False,
                                set_status_on_exception=False):
                output = wrapped(*call.args, **call.kwargs)
        except BaseException as exc:
            call.request.end(exc)
            raise
        finally:
            _in_generate.reset(token)
        try:
            call.finish(output)
        except Exception:
            logger.debug("could not finish a generate span", exc_info=True)
            call.request.end()
        return output

    return wrapper


def pipeline_wrapper(runtime: TelemetryRuntime):
    """One span per pipeline call, parent of its generate spans; it holds the text, not the counts."""

    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        inputs = args[0] if args else kwargs.get("text_inputs", kwargs.get("inputs"))
        if (_in_pipeline.get() or not is_instrumentation_enabled()
                or not isinstance(inputs, (str, list, tuple, dict))):
            return wrapped(*args, **kwargs)  # lazy iterables run after the call: generate spans only
        try:
            info = model_info(instance.model)
            task = str(getattr(instance, "task", "") or type(instance).__name__)
            chat = _is_chat(inputs)
            batch = 1 if isinstance(inputs, (str, dict)) or chat else len(inputs)
            attrs = {
                A.PROVIDER_NAME: PROVIDER,
                A.REQUEST_MODEL: info.name,
                A.HF_PIPELINE_TASK: task,
                A.HF_PIPELINE_INPUTS: batch,
            }
            request = runtime.start(f"pipeline {task} {info.name}", attrs, kind=SpanKind.INTERNAL, metrics=False)
            if runtime.content.enabled:
                request.record_content(input_json=_pipeline_input_json(runtime, inputs, chat))
        except Exception:
            logger.debug("could not start a pipeline span", exc_info=True)
            return wrapped(*args, **kwargs)
        token = _in_pipeline.set(True)
        try:
            with trace.use_span(request.span, end_on_exit=False, record_exception=False,
                                set_status_on_exception=False):
                result = wrapped(*args, **kwargs)
        except BaseException as exc:
            request.end(exc)
            raise
        finally:
            _in_pipeline.reset(token)
        try:
            if runtime.content.enabled:
                request.record_content(output_json=runtime.content.completions(_generated_texts(result)))
        except Exception:
            logger.debug("could not record pipeline output", exc_info=True)
        request.end()
        return result

    return wrapper


def _is_chat(inputs: Any) -> bool:
    return isinstance(inputs, (list, tuple)) and bool(inputs) and isinstance(inputs[0], dict) and "role" in inputs[0]


def _pipeline_input_json(runtime: TelemetryRuntime, inputs: Any, chat: bool) -> str | None:
    if chat:
        return runtime.content.input_messages(list(inputs))
    if isinstance(inputs, str):
        return runtime.content.prompt(inputs)
    if isinstance(inputs, (list, tuple)) and all(isinstance(i, str) for i in inputs):
        return runtime.content.prompt(list(inputs))
    return None


def _generated_texts(result: Any) -> list[str]:
    """Flatten pipeline output ([{"generated_text": ...}] or a list of those) to texts."""
    texts: list[str] = []
    items = result if isinstance(result, list) else [result]
    for item in items:
        for entry in item if isinstance(item, list) else [item]:
            text = entry.get("generated_text") if isinstance(entry, dict) else None
            if isinstance(text, list) and text and isinstance(text[-1], dict):
                text = text[-1].get("content")  # chat: the last message is the reply
            if text is not None:
                texts.append(str(text))
    return texts


class DeferredFinisher:
    """One daemon thread that finishes spans whose numbers need a device-to-host read."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="traceai-hf-finisher", daemon=True)
        self._pending = 0
        self._idle = threading.Condition()
        self._thread.start()

    def submit(self, job: Any) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(job)

    def drain(self, timeout_s: float = 5.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception:
                logger.debug("deferred span finish failed", exc_info=True)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()


_finisher: DeferredFinisher | None = None
_finisher_lock = threading.Lock()


def deferred_finisher() -> DeferredFinisher:
    global _finisher
    with _finisher_lock:
        if _finisher is None:
            _finisher = DeferredFinisher()
        return _finisher
