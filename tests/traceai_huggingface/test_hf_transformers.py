"""traceai-huggingface on real local transformers models (tiny, random weights)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import wrapt
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import StatusCode
from transformers import GenerationMixin, TextIteratorStreamer, TextStreamer, pipeline, set_seed

from fi_evals_core.telemetry import ContentCapture
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.testing.genai_messages import check_messages


def real_lengths(generated: torch.Tensor, eos: int, pad: int) -> list[int]:
    """Independent count: tokens up to and including the first EOS, without trailing padding."""
    out = []
    for row in generated.tolist():
        n = 0
        for token in row:
            n += 1
            if token == eos:
                break
        while n > 0 and row[n - 1] == pad and pad != eos:
            n -= 1
        out.append(n)
    return out


def test_batched_greedy_counts_each_sequence_real_tokens(telemetry, llama):
    model, tok = llama
    prompts = ["the cat sat on the mat and looked at the", "hello"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert enc["attention_mask"].sum() < enc["attention_mask"].numel()  # really padded
    probe = model.generate(**enc, max_new_tokens=10)
    # Make the model stop early on row 0: its 3rd generated token becomes EOS.
    width = enc["input_ids"].shape[1]
    eos = int(probe[0, width + 2])
    telemetry.clear()

    out = model.generate(**enc, max_new_tokens=10, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    (span,) = telemetry.spans()
    attrs = span.attributes
    lengths = real_lengths(out[:, width:], eos, tok.pad_token_id)
    assert lengths[0] <= 3 < 10
    assert attrs[A.USAGE_INPUT_TOKENS] == int(enc["attention_mask"].sum())
    assert attrs[A.USAGE_OUTPUT_TOKENS] == sum(lengths)
    assert attrs[A.RESPONSE_FINISH_REASONS][0] == "stop"
    assert list(attrs[A.RESPONSE_FINISH_REASONS]) == ["stop" if n < 10 or out[i, width + n - 1] == eos else "length"
                                                      for i, n in enumerate(lengths)]
    assert attrs[A.OPERATION_NAME] == "text_completion"
    assert attrs[A.PROVIDER_NAME] == "huggingface"
    assert attrs[A.REQUEST_MAX_TOKENS] == 10
    assert attrs[A.MODEL_FRAMEWORK] == "pytorch"
    assert attrs[A.MODEL_FRAMEWORK_VERSION] == torch.__version__
    assert attrs[A.MODEL_ENGINE] == "transformers"
    assert attrs[A.MODEL_DTYPE] == "float32"
    assert attrs[A.MODEL_DEVICE] == "cpu"
    assert not any(k.startswith("gpu.") for k in attrs), "no GPU here: no gpu.* attributes"
    ttft = attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK]
    duration = (span.end_time - span.start_time) / 1e9
    assert 0 < ttft < duration
    steps = out.shape[1] - width  # decode steps: one new column each
    assert attrs[A.TIME_PER_OUTPUT_TOKEN] > 0
    assert attrs[A.TIME_PER_OUTPUT_TOKEN] == pytest.approx((duration - ttft) / (steps - 1), rel=1e-6)
    assert attrs[A.OUTPUT_TOKENS_PER_SECOND] == pytest.approx(sum(lengths) / duration, rel=0.05)
    assert span.name == f"text_completion {attrs[A.REQUEST_MODEL]}"


def test_metrics_record_duration_tokens_and_ttfc(telemetry, gpt2):
    model, tok = gpt2
    enc = tok("a small test", return_tensors="pt")
    model.generate(**enc, max_new_tokens=5)
    model.generate(**enc, max_new_tokens=5)
    (duration,) = telemetry.metric_points(A.METRIC_OPERATION_DURATION)
    assert duration.count == 2
    assert duration.attributes[A.OPERATION_NAME] == "text_completion"
    usage = {p.attributes[A.TOKEN_TYPE]: p for p in telemetry.metric_points(A.METRIC_TOKEN_USAGE)}
    assert usage["input"].sum == 2 * enc["input_ids"].shape[1]
    assert usage["output"].count == 2
    assert telemetry.metric_points(A.METRIC_TIME_TO_FIRST_CHUNK) == []  # defined for streamed responses
    model.generate(**enc, max_new_tokens=5, streamer=TextStreamer(tok))
    (ttfc,) = telemetry.metric_points(A.METRIC_TIME_TO_FIRST_CHUNK)
    assert ttfc.count == 1


def test_device_and_dtype_changes_are_noticed(telemetry, model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"])
    tok = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
    enc = tok("dtype", return_tensors="pt")
    model.generate(**enc, max_new_tokens=2)
    model.to(torch.bfloat16)
    model.generate(**enc, max_new_tokens=2)
    first, second = sorted(telemetry.spans(), key=lambda s: s.start_time)
    assert first.attributes[A.MODEL_DTYPE] == "float32"
    assert second.attributes[A.MODEL_DTYPE] == "bfloat16"


def test_same_seed_same_tokens_with_and_without_instrumentation(gpt2, instrument_with):
    model, tok = gpt2
    enc = tok(["one two three", "four"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.3, top_k=50, top_p=0.95)
    set_seed(1234)
    plain = model.generate(**enc, **kwargs)
    captured = instrument_with(ContentCapture.NO_CONTENT)
    set_seed(1234)
    traced = model.generate(**enc, **kwargs)
    assert torch.equal(plain, traced)
    (span,) = captured.spans()
    assert span.attributes[A.REQUEST_TEMPERATURE] == 1.3
    assert span.attributes[A.REQUEST_TOP_K] == 50
    assert span.attributes[A.HF_DO_SAMPLE] is True


def test_beam_search_with_several_returned_sequences(telemetry, gpt2):
    model, tok = gpt2
    enc = tok(["beam me up", "and this one too"], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    (span,) = telemetry.spans()
    width = enc["input_ids"].shape[1]
    lengths = real_lengths(out[:, width:], tok.eos_token_id, tok.pad_token_id)
    assert out.shape[0] == 4
    assert span.attributes[A.REQUEST_CHOICE_COUNT] == 2
    assert span.attributes[A.HF_NUM_BEAMS] == 3
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == sum(lengths)
    assert len(span.attributes[A.RESPONSE_FINISH_REASONS]) == 4
    assert span.attributes[A.USAGE_INPUT_TOKENS] == int(enc["attention_mask"].sum())


def test_dict_output_and_positional_stopping_criteria(telemetry, gpt2):
    from transformers import MaxLengthCriteria, StoppingCriteriaList

    model, tok = gpt2
    enc = tok("positional args", return_tensors="pt")
    width = enc["input_ids"].shape[1]
    user_criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=width + 4)])
    out = model.generate(enc["input_ids"], None, None, user_criteria, attention_mask=enc["attention_mask"],
                         max_new_tokens=20, return_dict_in_generate=True)
    (span,) = telemetry.spans()
    assert out.sequences.shape[1] == width + 4  # the user's criterion still applied
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == 4
    assert 0 < span.attributes[A.RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9


def test_encoder_decoder_counts_encoder_input_and_decoder_output(telemetry, t5):
    model, tok = t5
    enc = tok(["translate this sentence please", "short"], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=7)
    (span,) = telemetry.spans()
    lengths = real_lengths(out[:, 1:], tok.eos_token_id, tok.pad_token_id)  # column 0: decoder start
    assert span.attributes[A.USAGE_INPUT_TOKENS] == int(enc["attention_mask"].sum())
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == sum(lengths)
    assert span.attributes[A.MODEL_ARCHITECTURE] == "T5ForConditionalGeneration"


def test_text_iterator_streamer_consumed_from_another_thread(telemetry, llama):
    model, tok = llama
    enc = tok("stream me some tokens", return_tensors="pt")
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    generated = []
    worker = threading.Thread(target=lambda: generated.append(model.generate(**enc, max_new_tokens=12,
                                                                               streamer=streamer)))
    worker.start()
    pieces = list(streamer)
    worker.join()
    (span,) = telemetry.spans()
    (out,) = generated
    width = enc["input_ids"].shape[1]
    assert "".join(pieces) == tok.decode(out[0, width:])  # the consumer got the whole text
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == real_lengths(out[:, width:], tok.eos_token_id,
                                                                  tok.pad_token_id)[0]
    assert span.attributes[A.REQUEST_STREAM] is True
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == 12 or span.attributes[A.RESPONSE_FINISH_REASONS] == ("stop",)
    assert 0 < span.attributes[A.RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9


def test_text_streamer(telemetry, gpt2, capsys):
    model, tok = gpt2
    enc = tok("print as you go", return_tensors="pt")
    model.generate(**enc, max_new_tokens=4, streamer=TextStreamer(tok))
    (span,) = telemetry.spans()
    assert span.attributes[A.REQUEST_STREAM] is True
    assert 0 < span.attributes[A.RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9


def test_pipeline_span_parents_generate_and_tokens_are_counted_once(gpt2, instrument_with):
    model, tok = gpt2
    captured = instrument_with(ContentCapture.SPAN_ONLY)
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    result = generator("pipelines are", max_new_tokens=5, do_sample=False)
    spans = captured.spans()
    assert len(spans) == 2
    pipe = next(s for s in spans if s.name.startswith("pipeline"))
    gen = next(s for s in spans if s.name.startswith("text_completion"))
    assert gen.parent.span_id == pipe.context.span_id
    assert gen.context.trace_id == pipe.context.trace_id
    assert A.USAGE_OUTPUT_TOKENS not in pipe.attributes and A.USAGE_INPUT_TOKENS not in pipe.attributes
    assert gen.attributes[A.USAGE_OUTPUT_TOKENS] == 5
    assert pipe.attributes[A.HF_PIPELINE_TASK] == "text-generation"
    assert "pipelines are" in pipe.attributes[A.INPUT_MESSAGES]
    check_messages(pipe.attributes[A.INPUT_MESSAGES], "input")
    (message,) = check_messages(pipe.attributes[A.OUTPUT_MESSAGES], "output")
    assert message["role"] == "assistant"
    assert message["parts"][0]["content"] == result[0]["generated_text"]
    # the GenAI output message schema requires finish_reason: the generate call's
    assert message["finish_reason"] == gen.attributes[A.RESPONSE_FINISH_REASONS][0] in ("stop", "length")
    assert list(pipe.attributes[A.RESPONSE_FINISH_REASONS]) == list(gen.attributes[A.RESPONSE_FINISH_REASONS])
    usage = captured.metric_points(A.METRIC_TOKEN_USAGE)
    assert sorted(p.count for p in usage) == [1, 1]  # one input and one output point: counted once
    (duration,) = captured.metric_points(A.METRIC_OPERATION_DURATION)
    assert duration.count == 1


def test_pipeline_batch_and_chat_input(telemetry, llama):
    model, tok = llama
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    generator(["first prompt", "second prompt here"], max_new_tokens=3, do_sample=False)
    spans = telemetry.spans()
    pipe = [s for s in spans if s.name.startswith("pipeline")]
    gens = [s for s in spans if s.name.startswith("text_completion")]
    assert len(pipe) == 1 and len(gens) == 2
    assert pipe[0].attributes[A.HF_PIPELINE_INPUTS] == 2
    assert all(g.parent.span_id == pipe[0].context.span_id for g in gens)
    telemetry.clear()
    generator([{"role": "user", "content": "hi there"}], max_new_tokens=3, do_sample=False)
    assert len(telemetry.spans()) == 2


def test_error_sets_status_and_reraises_unchanged(telemetry, gpt2):
    model, tok = gpt2
    enc = tok("bad request", return_tensors="pt")
    with pytest.raises(ValueError) as plain:
        with suppress_instrumentation():
            model.generate(**enc, max_new_tokens=2, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError) as traced:
        model.generate(**enc, max_new_tokens=2, num_beams=2, num_return_sequences=3)
    assert str(traced.value) == str(plain.value)
    (span,) = telemetry.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == "ValueError"
    assert span.end_time is not None


def test_content_not_exported_by_default(telemetry, gpt2):
    model, tok = gpt2
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    generator("secret prompt text", max_new_tokens=3, do_sample=False)
    for span in telemetry.spans():
        assert A.INPUT_MESSAGES not in span.attributes and A.OUTPUT_MESSAGES not in span.attributes
        assert not span.events
        assert "secret" not in repr(dict(span.attributes))


def test_content_as_event_and_truncated(gpt2, instrument_with):
    model, tok = gpt2
    captured = instrument_with(ContentCapture.EVENT_ONLY, max_len=10)
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    generator("a prompt that is longer than ten characters", max_new_tokens=3, do_sample=False)
    pipe = next(s for s in captured.spans() if s.name.startswith("pipeline"))
    assert A.INPUT_MESSAGES not in pipe.attributes
    (event,) = pipe.events
    assert event.name == A.CONTENT_EVENT
    assert '"a prompt t' in event.attributes[A.INPUT_MESSAGES]
    assert "longer" not in event.attributes[A.INPUT_MESSAGES]
    assert "[truncated]" in event.attributes[A.INPUT_MESSAGES]
    check_messages(event.attributes[A.INPUT_MESSAGES], "input")
    check_messages(event.attributes[A.OUTPUT_MESSAGES], "output")


def test_suppressed_instrumentation_records_nothing(telemetry, gpt2):
    model, tok = gpt2
    enc = tok("quiet", return_tensors="pt")
    with suppress_instrumentation():
        model.generate(**enc, max_new_tokens=2)
    assert telemetry.spans() == []


def test_instrument_is_idempotent_and_uninstrument_restores(gpt2):
    from fi_evals_core.telemetry.patching import is_patched
    from traceai_huggingface import HuggingFaceInstrumentor

    from tests.conftest import _instrumented

    model, tok = gpt2
    enc = tok("idempotent", return_tensors="pt")
    instrumentor, captured = _instrumented()
    instrumentor.instrument()  # second call: no double wrapping
    assert is_patched(GenerationMixin, "generate")
    original = GenerationMixin.__dict__["generate"].__wrapped__
    assert not hasattr(original, "__traceai_original__") and not isinstance(original, wrapt.FunctionWrapper)
    model.generate(**enc, max_new_tokens=2)
    assert len(captured.spans()) == 1
    instrumentor.uninstrument()
    assert not is_patched(GenerationMixin, "generate")
    assert GenerationMixin.__dict__["generate"] is original
    model.generate(**enc, max_new_tokens=2)
    assert len(captured.spans()) == 1
    instrumentor2, captured2 = _instrumented()
    assert instrumentor2 is instrumentor  # BaseInstrumentor is a singleton
    model.generate(**enc, max_new_tokens=2)
    assert len(captured2.spans()) == 1
    instrumentor.uninstrument()
    assert HuggingFaceInstrumentor().is_instrumented_by_opentelemetry is False


def test_generate_span_joins_the_callers_trace(telemetry, gpt2):
    """The span is created off the request path, but under the span that was current at the call."""
    from opentelemetry import trace

    model, tok = gpt2
    enc = tok("context", return_tensors="pt")
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as outer:
        model.generate(**enc, max_new_tokens=2)
    (span,) = telemetry.spans()
    assert span.parent.span_id == outer.get_span_context().span_id
    assert span.context.trace_id == outer.get_span_context().trace_id
    assert trace.get_current_span().get_span_context().is_valid is False  # nothing left attached


def test_counting_and_span_end_happen_off_the_request_path(telemetry, gpt2):
    """generate returns before its span is finished; the span still ends when generate returned."""
    from fi_evals_core.telemetry import get_worker

    model, tok = gpt2
    enc = tok(["deferred", "counting path"], return_tensors="pt", padding=True)
    gate = threading.Event()
    worker_resumed_at: list[int] = []

    def hold() -> None:  # the telemetry worker waits here; the span's job is queued behind it
        gate.wait(30)
        worker_resumed_at.append(time.time_ns())

    get_worker().submit(hold)
    out = model.generate(**enc, max_new_tokens=6)
    returned_at = time.time_ns()
    assert telemetry.exporter.get_finished_spans() == ()  # not finished on the caller's thread
    gate.set()
    (span,) = telemetry.spans()  # drains the worker
    width = enc["input_ids"].shape[1]
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == sum(real_lengths(out[:, width:], tok.eos_token_id,
                                                                      tok.pad_token_id))
    assert span.attributes[A.USAGE_INPUT_TOKENS] == int(enc["attention_mask"].sum())
    assert span.attributes[A.MODEL_FRAMEWORK] == "pytorch"
    # the end time is the instant generate returned, not when the worker got to it (after the gate)
    assert span.end_time <= returned_at + 2_000_000
    assert span.end_time < worker_resumed_at[0]  # a span ended by the worker would end after this


def test_runtime_fingerprint_on_every_span(telemetry, llama):
    """Versions, attention and compile mode on every generate span; the tokenizer's fingerprint
    once a pipeline has shown which tokenizer the model runs with; a compiled model says so."""
    import transformers

    from fi_evals_core.telemetry.fingerprint import tokenizer_fingerprint

    model, tok = llama
    ids = tok("a prompt", return_tensors="pt")
    model.generate(**ids, max_new_tokens=2, do_sample=False)
    (bare,) = telemetry.spans()
    assert bare.attributes["runtime.transformers.version"] == transformers.__version__
    assert bare.attributes[A.MODEL_COMPILE_MODE] == "eager"
    assert bare.attributes[A.MODEL_ATTENTION_BACKEND] == model.config._attn_implementation
    telemetry.clear()
    pipeline("text-generation", model=model, tokenizer=tok)("a prompt", max_new_tokens=2, do_sample=False)
    model.generate(**ids, max_new_tokens=2, do_sample=False)  # later spans of the model keep it
    spans = telemetry.spans()
    gens = [s for s in spans if s.name.startswith("text_completion")]
    assert len(gens) == 2
    assert {g.attributes[A.MODEL_TOKENIZER_FINGERPRINT] for g in gens} == {tokenizer_fingerprint(tok)}
    telemetry.clear()
    model.compile(backend="eager")  # nn.Module.compile: the module's calls go through torch.compile
    try:
        model.generate(**ids, max_new_tokens=2, do_sample=False)
        (compiled,) = telemetry.spans()
        assert compiled.attributes[A.MODEL_COMPILE_MODE] == "torch.compile"
    finally:
        model._compiled_call_impl = None  # the session's shared model back to eager
