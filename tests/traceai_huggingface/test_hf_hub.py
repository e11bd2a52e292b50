"""traceai-huggingface on `InferenceClient` / `AsyncInferenceClient` against a real local server.

The server (fi_evals_core.testing.hf_server) speaks TGI's `POST /` and OpenAI's chat route over real
HTTP, generating with a tiny local model, so every token count below is a real server count.
"""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from opentelemetry.trace import SpanKind, StatusCode

from fi_evals_core.telemetry import ContentCapture, drain
from fi_evals_core.telemetry import attributes as A
from fi_evals_core.testing.genai_messages import check_messages

pytestmark = pytest.mark.usefixtures("hub_online")

SECRET = "hf_supersecrettoken1234567890"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture
def client(hf_server):
    hf_server.clear_requests()
    return InferenceClient(base_url=hf_server.base_url, api_key=SECRET)


@pytest.fixture
def async_client(hf_server):
    hf_server.clear_requests()
    return AsyncInferenceClient(base_url=hf_server.base_url, api_key=SECRET)


def only_span(telemetry):
    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_text_generation_with_details_uses_server_counts(telemetry, client, hf_server):
    out = client.text_generation("The weather today", max_new_tokens=7, details=True, decoder_input_details=True)
    span = only_span(telemetry)
    a = span.attributes
    assert span.kind is SpanKind.CLIENT
    assert a[A.OPERATION_NAME] == "text_completion"
    assert a[A.USAGE_OUTPUT_TOKENS] == out.details.generated_tokens == 7
    assert a[A.USAGE_INPUT_TOKENS] == len(hf_server.prompt_token_ids("The weather today"))
    assert list(a[A.RESPONSE_FINISH_REASONS]) == ["length"]
    assert a[A.REQUEST_MAX_TOKENS] == 7
    assert a[A.SERVER_ADDRESS] == "127.0.0.1" and a[A.SERVER_PORT] == hf_server.port
    assert a[A.REQUEST_STREAM] is False


def test_text_generation_without_details_leaves_counts_out(telemetry, client, hf_server):
    text = client.text_generation("No details please", max_new_tokens=4)
    expected = hf_server.generate(hf_server.prompt_token_ids("No details please"), max_new_tokens=4)
    assert text == expected.generated_text  # the caller's result, unchanged
    a = only_span(telemetry).attributes
    assert A.USAGE_OUTPUT_TOKENS not in a and A.USAGE_INPUT_TOKENS not in a  # unknown, not 0


def test_text_generation_stream_counts_events_and_times_first_token(telemetry, client, hf_server):
    hf_server.token_delay_s = 0.005
    try:
        pieces = list(client.text_generation("Stream it", max_new_tokens=9, stream=True))
    finally:
        hf_server.token_delay_s = 0.0
    span = only_span(telemetry)
    a = span.attributes
    assert a[A.USAGE_OUTPUT_TOKENS] == len(pieces) == 9
    assert a[A.REQUEST_STREAM] is True
    assert a[A.STREAM_COMPLETED] is True
    duration = (span.end_time - span.start_time) / 1e9
    assert 0 < a[A.RESPONSE_TIME_TO_FIRST_CHUNK] < duration
    # (end - first chunk) over the 8 steps after it; no wall-time bound: under load the client may read
    # several paced events at once, so the client-side spacing can be shorter than the server's 5 ms
    assert a[A.TIME_PER_OUTPUT_TOKEN] == pytest.approx((duration - a[A.RESPONSE_TIME_TO_FIRST_CHUNK]) / 8, rel=1e-3)
    (ttfc,) = telemetry.metric_points(A.METRIC_TIME_TO_FIRST_CHUNK)
    assert ttfc.count == 1


def test_text_generation_stream_with_details_reads_final_details(telemetry, client, hf_server):
    hf_server.eos_token_ids = set()
    events = list(client.text_generation("Details stream", max_new_tokens=5, stream=True, details=True))
    a = only_span(telemetry).attributes
    assert a[A.USAGE_OUTPUT_TOKENS] == events[-1].details.generated_tokens == 5
    assert list(a[A.RESPONSE_FINISH_REASONS]) == ["length"]


def test_chat_completion_usage_id_and_model_from_the_response(telemetry, client, hf_server):
    out = client.chat_completion(MESSAGES, max_tokens=6, seed=3, temperature=0.7)
    span = only_span(telemetry)
    a = span.attributes
    assert a[A.OPERATION_NAME] == "chat"
    assert a[A.USAGE_INPUT_TOKENS] == out.usage.prompt_tokens == len(hf_server.chat_prompt_token_ids(MESSAGES))
    assert a[A.USAGE_OUTPUT_TOKENS] == out.usage.completion_tokens
    assert a[A.RESPONSE_ID] == out.id
    assert a[A.RESPONSE_MODEL] == out.model
    assert list(a[A.RESPONSE_FINISH_REASONS]) == [out.choices[0].finish_reason]
    assert a[A.REQUEST_SEED] == 3 and a[A.REQUEST_TEMPERATURE] == 0.7
    usage = {p.attributes[A.TOKEN_TYPE]: p.sum for p in telemetry.metric_points(A.METRIC_TOKEN_USAGE)}
    assert usage == {"input": out.usage.prompt_tokens, "output": out.usage.completion_tokens}


def test_chat_stream_through_the_openai_style_alias(telemetry, client):
    chunks = list(client.chat.completions.create(messages=MESSAGES, max_tokens=5, stream=True,
                                                stream_options={"include_usage": True}))
    a = only_span(telemetry).attributes
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert a[A.USAGE_OUTPUT_TOKENS] == usage.completion_tokens
    assert a[A.USAGE_INPUT_TOKENS] == usage.prompt_tokens
    assert a[A.RESPONSE_ID] == chunks[0].id
    span = only_span(telemetry)
    assert 0 < a[A.RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9
    assert a[A.STREAM_COMPLETED] is True


def test_chat_stream_without_usage_leaves_counts_out(telemetry, client):
    list(client.chat_completion(MESSAGES, max_tokens=4, stream=True))
    span = only_span(telemetry)
    a = span.attributes
    assert A.USAGE_OUTPUT_TOKENS not in a and A.USAGE_INPUT_TOKENS not in a
    assert 0 < a[A.RESPONSE_TIME_TO_FIRST_CHUNK] < (span.end_time - span.start_time) / 1e9


def test_feature_extraction(telemetry, client):
    vectors = client.feature_extraction(["embed me", "and me"])
    a = only_span(telemetry).attributes
    assert a[A.OPERATION_NAME] == "embeddings"
    assert a[A.EMBEDDINGS_DIMENSION_COUNT] == vectors.shape[-1]


def test_server_error_marks_span_and_reaches_caller_unchanged(telemetry, client, hf_server):
    hf_server.fail_next(500, message="boom")
    with pytest.raises(HfHubHTTPError) as err:
        client.chat_completion(MESSAGES, max_tokens=3)
    assert err.value.response.status_code == 500
    span = only_span(telemetry)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == f"{type(err.value).__module__}.{type(err.value).__qualname__}"
    assert span.end_time is not None


def test_a_401_with_credentials_in_the_url_records_none_of_them(telemetry, hf_server):
    """A real 401 from the server, the client's base URL holding user:password@: the exception the
    caller gets is untouched, the span's status description and attributes hold no credential."""
    hf_server.clear_requests()
    base = hf_server.base_url.replace("http://", "http://alice:pa55w0rd@")
    client = InferenceClient(base_url=base, api_key=SECRET)
    hf_server.fail_next(401, message="Invalid credentials")
    with pytest.raises(HfHubHTTPError) as err:
        client.chat_completion(MESSAGES, max_tokens=3)
    assert err.value.response.status_code == 401
    span = only_span(telemetry)
    exported = json.dumps({"status": span.status.description, "attrs": dict(span.attributes),
                           "events": [dict(e.attributes) for e in span.events]}, default=str)
    assert span.status.status_code is StatusCode.ERROR and "401" in span.status.description
    for secret in ("pa55w0rd", "alice:", SECRET):
        assert secret not in exported, secret


def test_stream_broken_out_of_ends_the_span(telemetry, client):
    stream = client.text_generation("Break early", max_new_tokens=20, stream=True)
    for _ in stream:
        break
    del stream
    gc.collect()
    a = only_span(telemetry).attributes
    assert a[A.STREAM_COMPLETED] is False
    assert A.USAGE_OUTPUT_TOKENS not in a  # the server's count is unknown for an abandoned stream


def test_stream_never_consumed_ends_when_collected(telemetry, client):
    client.chat_completion(MESSAGES, max_tokens=3, stream=True)  # dropped at once
    gc.collect()
    span = only_span(telemetry)
    assert span.attributes[A.STREAM_COMPLETED] is False
    assert span.end_time is not None


def test_stream_closed_explicitly(telemetry, client):
    stream = client.chat_completion(MESSAGES, max_tokens=10, stream=True)
    next(iter(stream))
    stream.close()
    assert drain(10)
    assert len(telemetry.exporter.get_finished_spans()) == 1  # ended at close, not at GC


def test_stream_failing_midway(telemetry, client, hf_server):
    hf_server.fault_next_stream(mode="error", after_tokens=2)
    with pytest.raises(Exception) as err:
        list(client.text_generation("Fail midway", max_new_tokens=10, stream=True))
    span = only_span(telemetry)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE].endswith(type(err.value).__name__)


def test_credentials_never_recorded_and_traceparent_sent(instrument_with, client, hf_server):
    captured = instrument_with(ContentCapture.SPAN_AND_EVENT)
    client.chat_completion(MESSAGES, max_tokens=3)
    (request,) = hf_server.requests_to("/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {SECRET}"  # the client did send it
    span = only_span(captured)
    exported = json.dumps({"attrs": dict(span.attributes), "events": [dict(e.attributes) for e in span.events]},
                          default=str)
    assert SECRET not in exported
    # trace context went out with the request: the server can join the client's trace
    version, trace_id, span_id, flags = request.headers["traceparent"].split("-")
    assert int(trace_id, 16) == span.context.trace_id and int(span_id, 16) == span.context.span_id
    assert "traceparent" not in client.headers  # the client's own headers are untouched
    messages = check_messages(span.attributes[A.INPUT_MESSAGES], "input")
    assert messages[1] == {"role": "user", "parts": [{"type": "text", "content": "Name a colour."}]}
    (reply,) = check_messages(span.attributes[A.OUTPUT_MESSAGES], "output")
    assert reply["role"] == "assistant" and reply["finish_reason"] in ("stop", "length")


def test_async_chat_and_stream(telemetry, async_client):
    async def main():
        out = await async_client.chat_completion(MESSAGES, max_tokens=4)
        chunks = [c async for c in await async_client.text_generation("async stream", max_new_tokens=6,
                                                                        stream=True)]
        return out, chunks

    out, chunks = asyncio.run(main())
    spans = sorted(telemetry.spans(), key=lambda s: s.start_time)
    assert len(spans) == 2
    assert spans[0].attributes[A.USAGE_OUTPUT_TOKENS] == out.usage.completion_tokens
    assert spans[1].attributes[A.USAGE_OUTPUT_TOKENS] == len(chunks) == 6
    duration = (spans[1].end_time - spans[1].start_time) / 1e9
    assert 0 < spans[1].attributes[A.RESPONSE_TIME_TO_FIRST_CHUNK] < duration


def test_async_stream_cancelled_task_ends_span(telemetry, async_client, hf_server):
    # The server sends one token, then holds the stream until released: the task is cancelled
    # mid-stream, whatever the machine's load.
    hf_server.fault_next_stream(mode="stall", after_tokens=1, stall_seconds=60)
    received = []

    async def consume(first: asyncio.Event):
        async for chunk in await async_client.text_generation("cancel me", max_new_tokens=50, stream=True):
            received.append(chunk)
            first.set()

    async def main():
        first = asyncio.Event()
        task = asyncio.create_task(consume(first))
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        hf_server.release_stall()
    assert len(received) == 1
    span = only_span(telemetry)
    assert span.attributes[A.ERROR_TYPE] == "asyncio.exceptions.CancelledError"
    assert span.attributes[A.STREAM_COMPLETED] is False


def test_async_stream_aclose(telemetry, async_client):
    async def main():
        stream = await async_client.chat_completion(MESSAGES, max_tokens=10, stream=True)
        await stream.__anext__()
        await stream.aclose()
        assert drain(10)
        return len(telemetry.exporter.get_finished_spans())

    assert asyncio.run(main()) == 1
    assert only_span(telemetry).attributes[A.STREAM_COMPLETED] is False
