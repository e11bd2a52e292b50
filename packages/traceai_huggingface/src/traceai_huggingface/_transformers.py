"""Spans for local transformers generation: `generate` and the text-generation pipelines.

`generate` is the boundary every local generation crosses (pipelines, custom loops, most
model-specific `generate` overrides that call `super()`), so it owns the request span and the
token counts; a pipeline span only parents it and carries the text. Counting happens on the
returned ids (real tokens per sequence: prompt padding and post-EOS padding excluded), on the
telemetry worker, so reading GPU ids back never synchronises the caller.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import weakref
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from fi_evals_core.telemetry import RequestSpan, TelemetryRuntime, torch_framework_attributes
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.telemetry import handoff
from fi_evals_core.telemetry.fingerprint import runtime_attributes, tokenizer_fingerprint

logger = logging.getLogger(__name__)

PROVIDER = "huggingface"
_in_generate: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_hf_in_generate", default=False)
_in_pipeline: contextvars.ContextVar[bool] = contextvars.ContextVar("traceai_hf_in_pipeline", default=False)


class _ModelInfo:
    __slots__ = ("name", "device", "dtype", "probe", "gpu_index", "is_encoder_decoder", "static", "framework",
                 "tokenizer_seen", "compiled")

    def __init__(self, model: Any) -> None:
        import transformers

        # One of the model's own parameters: `.to()` / `.half()` change it in place, so reading
        # its device and dtype tells cheaply whether these attributes are still current.
        self.probe = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = getattr(model, "device", None)
        self.dtype = getattr(self.probe, "dtype", None)

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
        self.static = {A.OPERATION_NAME: A.OP_TEXT_COMPLETION, A.PROVIDER_NAME: PROVIDER, A.REQUEST_MODEL: self.name}
        self.framework = torch_framework_attributes(
                engine="transformers",
                engine_version=transformers.__version__,
                dtype=getattr(model, "dtype", self.dtype),
                device=device,
                quantization=str(getattr(quant_method, "value", quant_method)) if quant_method else None,
                architecture=type(model).__name__,
            )
        # the runtime fingerprint: versions, how the model runs (nn.Module.compile sets
        # _compiled_call_impl), its attention; the tokenizer's when a pipeline shows it (see below)
        self.framework.update(runtime_attributes())
        self.compiled = _compiled(model)
        self.framework[A.MODEL_COMPILE_MODE] = "torch.compile" if self.compiled else "eager"
        attention = getattr(config, "_attn_implementation", None)
        if attention:
            self.framework[A.MODEL_ATTENTION_BACKEND] = str(attention)
        self.tokenizer_seen: Any = None

    def note_tokenizer(self, tokenizer: Any) -> None:
        """A pipeline pairs this model with its tokenizer: fingerprint it once (tens of ms for a
        large vocabulary, on the first call only), for this and every later span of the model."""
        if tokenizer is None or tokenizer is self.tokenizer_seen:
            return
        self.tokenizer_seen = tokenizer
        try:
            # a new dict, not an update: spans already started read the old one on the worker
            self.framework = {**self.framework, A.MODEL_TOKENIZER_FINGERPRINT: tokenizer_fingerprint(tokenizer)}
        except Exception:  # noqa: BLE001 - an unusual tokenizer: no fingerprint, no error
            logger.debug("could not fingerprint a tokenizer", exc_info=True)


_model_infos: "weakref.WeakKeyDictionary[Any, _ModelInfo]" = weakref.WeakKeyDictionary()


def _compiled(model: Any) -> bool:
    """`model.compile()` (nn.Module.compile) routes the module's calls through torch.compile."""
    return getattr(model, "_compiled_call_impl", None) is not None


def model_info(model: Any) -> _ModelInfo:
    """Static attributes of a model, recomputed only when it moves to another device or dtype, or
    is compiled."""
    info = _model_infos.get(model)
    probe = info.probe if info is not None else None
    if info is None or (probe is not None and (probe.device != info.device or probe.dtype != info.dtype)) \
            or info.compiled != _compiled(model):
        info = _ModelInfo(model)
        try:
            _model_infos[model] = info
        except TypeError:  # not weak-referenceable: compute every time
            pass
    return info


class FirstTokenClock:
    """Notes when the first new token's logits exist: right after generate's first forward pass
    (the prefill). A forward hook on the model that removes itself on first use, so decoding
    steps run hook-free; forwards from other threads sharing the model are ignored.

    On a CUDA device the host returns from a forward before the kernels ran, so the host clock
    would read too early: there the hook records a CUDA event instead (no host wait), and the
    telemetry worker later reads the device time between the call's start event and it.
    """

    __slots__ = ("request", "thread", "handle", "start_event", "first_event")

    def __init__(self, model: Any, request: RequestSpan, cuda: bool) -> None:
        self.request = request
        self.thread = threading.get_ident()
        self.start_event = self.first_event = None
        if cuda:
            import torch

            self.start_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record()
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        if threading.get_ident() != self.thread:
            return
        if self.start_event is not None:
            import torch

            self.first_event = torch.cuda.Event(enable_timing=True)
            self.first_event.record()
        else:
            self.request.mark_first_token()
        self.remove()

    def remove(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.remove()

    def resolve_device_time(self) -> None:
        """On the worker: turn the CUDA events into the first-token instant (waits for the event)."""
        if self.first_event is not None:
            self.first_event.synchronize()
            ms = self.start_event.elapsed_time(self.first_event)
            self.request.mark_first_token(self.request.start_ns + int(ms * 1e6))


class GenerateCall:
    """One `generate` call: its span, its arguments, and the counting of its output."""

    def __init__(self, runtime: TelemetryRuntime, model: Any, args: tuple, kwargs: dict) -> None:
        self.info = info = model_info(model)
        gen_config = kwargs.get("generation_config") or (args[1] if len(args) > 1 else None) or getattr(
            model, "generation_config", None
        )

        def param(name: str) -> Any:
            value = kwargs.get(name)
            return value if value is not None else getattr(gen_config, name, None)

        self.param = param
        attrs = dict(info.static)
        max_new = param("max_new_tokens")
        if max_new is not None:
            attrs[A.REQUEST_MAX_TOKENS] = int(max_new)
        # Decoding mode: greedy single-beam is the default and leaves these out.
        if param("do_sample"):
            attrs[A.HF_DO_SAMPLE] = True
            for key, name in ((A.REQUEST_TEMPERATURE, "temperature"), (A.REQUEST_TOP_P, "top_p"), (A.REQUEST_TOP_K, "top_k")):
                value = param(name)
                if value is not None:
                    attrs[key] = value
        num_beams = param("num_beams") or 1
        if num_beams != 1:
            attrs[A.HF_NUM_BEAMS] = int(num_beams)
        n = param("num_return_sequences") or 1
        if n != 1:
            attrs[A.REQUEST_CHOICE_COUNT] = int(n)
        if kwargs.get("streamer") is not None:
            attrs[A.REQUEST_STREAM] = True
        self.request = runtime.start(
            f"{A.OP_TEXT_COMPLETION} {info.name}", attrs, kind=SpanKind.INTERNAL, gpu_index=info.gpu_index,
            late_attributes=info.framework, defer_span=True,
        )
        self.enclosing = self.request.enclosing_request  # a pipeline call's request, when within one
        self.input_ids = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
        self.attention_mask = kwargs.get("attention_mask")
        self.decoder_input_ids = kwargs.get("decoder_input_ids")
        # Continuous batching (cache_implementation="paged") and custom generate functions do not
        # run the model's forward in this thread: no first-token clock for them.
        self.clock: FirstTokenClock | None = None
        if kwargs.get("cache_implementation") != "paged" and kwargs.get("custom_generate") is None:
            self.clock = FirstTokenClock(model, self.request, cuda=info.gpu_index is not None)

    def finish(self, output: Any) -> None:
        end_ns = time.perf_counter_ns()
        self.release()
        sequences = output if _is_tensor(output) else getattr(output, "sequences", None)
        if not _is_tensor(sequences) or sequences.dim() != 2:
            self.request.end(end_ns=end_ns)
            return
        ready = None
        if sequences.device.type == "cuda":
            import torch

            ready = torch.cuda.Event()
            ready.record()  # marks the ids as computed on this stream; no host wait
        self.request.end(end_ns=end_ns, finalize=lambda request: self._count_usage(sequences, ready))

    def release(self) -> None:
        if self.clock is not None:
            self.clock.remove()

    def _count_usage(self, sequences: Any, ready: Any) -> None:
        """On the telemetry worker: the device-to-host read of the ids waits there, not in the caller."""
        if ready is not None:
            ready.synchronize()
        if self.clock is not None:
            self.clock.resolve_device_time()
        counts = self._count(sequences)
        if counts is not None:
            input_tokens, lengths, reasons, steps = counts
            self.request.set_usage(input_tokens=input_tokens, output_tokens=sum(lengths), decode_steps=steps)
            self.request.set_response(finish_reasons=reasons)
            if self.enclosing is not None:  # the pipeline's output messages say why each one ended
                self.enclosing.add_finish_reasons(reasons)

    def _count(self, sequences: Any) -> tuple[int | None, list[int], list[str], int] | None:
        """Real tokens per returned sequence: up to and including its first EOS, without the padding
        that fills sequences which stopped early. One device-to-host copy of the new ids."""
        pad = self.param("pad_token_id")
        eos = self.param("eos_token_id")
        eos_ids = set() if eos is None else (
            {int(e) for e in eos.flatten().tolist()} if _is_tensor(eos) else
            {int(e) for e in eos} if isinstance(eos, (list, tuple, set)) else {int(eos)})
        pad = None if pad is None else int(pad.item() if _is_tensor(pad) else pad)
        inputs = self.input_ids if _is_tensor(self.input_ids) else None
        if self.info.is_encoder_decoder:
            prefix = self.decoder_input_ids.shape[-1] if _is_tensor(self.decoder_input_ids) else 1
        elif inputs is not None and inputs.dim() == 2 and not inputs.is_floating_point():
            prefix = inputs.shape[-1]
        else:
            prefix = 0  # inputs_embeds only: the output holds just the new tokens
        rows = sequences[:, prefix:].tolist()
        width = len(rows[0]) if rows else 0
        if width == 0:
            return None
        strip_pad = pad is not None and pad not in eos_ids
        lengths, reasons = [], []
        for row in rows:
            n = width
            for eos_id in eos_ids:  # list.index scans in C
                try:
                    n = row.index(eos_id, 0, n) + 1
                except ValueError:
                    pass
            if strip_pad:
                while n and row[n - 1] == pad:
                    n -= 1
            lengths.append(n)
            reasons.append("stop" if n < width or (n and row[n - 1] in eos_ids) else "length")
        input_count = None
        if inputs is not None and inputs.dim() == 2:
            mask = self.attention_mask
            if _is_tensor(mask) and mask.shape == inputs.shape:
                input_count = int(mask.sum())
            elif strip_pad:
                input_count = int((inputs != pad).sum())
            else:
                input_count = inputs.numel()
        return input_count, lengths, reasons, width


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
            output = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.release()
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
            info.note_tokenizer(getattr(instance, "tokenizer", None))
            task = str(getattr(instance, "task", "") or type(instance).__name__)
            chat = _is_chat(inputs)
            batch = 1 if isinstance(inputs, (str, dict)) or chat else len(inputs)
            attrs = {
                A.PROVIDER_NAME: PROVIDER,
                A.REQUEST_MODEL: info.name,
                A.HF_PIPELINE_TASK: task,
                A.HF_PIPELINE_INPUTS: batch,
            }
            request = runtime.start(f"pipeline {task} {info.name}", attrs, kind=SpanKind.INTERNAL, metrics=None,
                                    defer_span=True)
            if runtime.content.enabled:
                request.record_content(input_json=_pipeline_input_json(runtime, inputs, chat))
        except Exception:
            logger.debug("could not start a pipeline span", exc_info=True)
            return wrapped(*args, **kwargs)
        token = _in_pipeline.set(True)
        try:
            with runtime.enclosing(request):
                result = wrapped(*args, **kwargs)
        except BaseException as exc:
            request.end(exc)
            raise
        finally:
            _in_pipeline.reset(token)
        if request.wants_text:
            request.offer_texts(lambda: _eval_pairs(inputs, chat, result))
        if runtime.content.enabled:
            request.end(finalize=lambda r: r.record_content(
                output_json=runtime.content.completions(_generated_texts(result), r.finish_reasons)))
        else:
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


def _eval_pairs(inputs: Any, chat: bool, result: Any) -> list[tuple[str | None, str]]:
    """(prompt, new text) per input and returned sequence, for inline evaluation; the pipeline's
    `generated_text` repeats a plain prompt in front of the new text, which is cut off here."""
    if chat or isinstance(inputs, (str, dict)):
        prompts, results = [inputs], [result]
    else:
        prompts, results = list(inputs), list(result) if isinstance(result, list) else [result]
    pairs = []
    for prompt, item in zip(prompts, results):
        text_prompt = handoff.prompt_text(prompt)
        for text in _generated_texts(item):
            if isinstance(prompt, str) and text.startswith(prompt):
                text = text[len(prompt):]
            pairs.append((text_prompt, text))
    return pairs


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
