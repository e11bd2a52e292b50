"""Self-check for fi_evals_core.testing: tiny models, the local inference server and the rotel collector
really work.

Kept fast (seconds): the models, the server and the collector are the session's own (tests/conftest.py),
built once and shared with every other test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fi_evals_core.testing.collector import RotelCollector
from fi_evals_core.testing.hf_server import HFServer
from fi_evals_core.testing.tiny_models import PAD_TOKEN


PROGRAMS = Path(__file__).resolve().parent / "programs"


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_dirs(model_dirs: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny models (conftest.py: build_gpt2, build_llama and build_t5, built once)."""
    return model_dirs


@pytest.fixture(scope="session")
def server(hf_server: HFServer) -> HFServer:
    """The session's HFServer on the tiny Llama (conftest.py)."""
    return hf_server


@pytest.fixture
def client(server: HFServer, monkeypatch: pytest.MonkeyPatch):
    """InferenceClient on the local server. HF_HUB_OFFLINE would block even 127.0.0.1, so switch it off here."""
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server.clear_requests()
    return InferenceClient(base_url=server.base_url, api_key="sk-selfcheck", headers={"traceparent": TRACEPARENT})


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


# ----------------------------------------------------------------------------------------------- the module
def test_importing_the_testing_module_stays_light() -> None:
    """fi_evals_core.testing and all its modules import without torch, transformers, tokenizers, rotel
    or triton: those load inside the builders (a fresh process: this one has them all loaded)."""
    proc = subprocess.run([sys.executable, str(PROGRAMS / "import_testing_light.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY ")]
    assert json.loads(line[len("HEAVY "):]) == []


# ----------------------------------------------------------------------------------------------- tiny models
def test_tokenizer_special_tokens_and_template(tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    assert 500 <= len(tok) <= 1000
    assert len({tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id}) == 4
    assert tok.pad_token == PAD_TOKEN
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == "Hello world"
    rendered = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith(tok.bos_token) and rendered.endswith("<|assistant|>\n")
    t5_ids = AutoTokenizer.from_pretrained(tiny_dirs["t5"])("Hello world")["input_ids"]
    assert t5_ids[-1] == tok.eos_token_id and tok.bos_token_id not in t5_ids


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causal_models_generate_and_pipeline(tiny_dirs: dict[str, Path], name: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[name])
    tok = AutoTokenizer.from_pretrained(tiny_dirs[name])
    enc = tok("The cat sees the door", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 6
    assert model.generation_config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    gen = pipeline("text-generation", model=str(tiny_dirs[name]))
    text = gen("The cat sees the door", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("The cat sees the door") and len(text) > len("The cat sees the door")


def test_t5_generates(tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_dirs["t5"])
    tok = AutoTokenizer.from_pretrained(tiny_dirs["t5"])
    assert model.config.decoder_start_token_id == tok.pad_token_id
    out = model.generate(**tok("Hello world", return_tensors="pt"), max_new_tokens=5)
    assert out[0, 0].item() == tok.pad_token_id and out.shape[1] == 6
    # real text, not the decoder start (pad) token echoed (what a fresh tied-embedding T5 would do)
    assert out[0, 1:].tolist() != [tok.pad_token_id] * 5
    assert tok.decode(out[0], skip_special_tokens=True).strip() != ""


# ----------------------------------------------------------------------------------------------- server
def test_text_generation_plain_and_headers(server: HFServer, client) -> None:
    expected = server.generate(server.prompt_token_ids("Hello world"), max_new_tokens=5)
    assert client.text_generation("Hello world", max_new_tokens=5) == expected.generated_text
    req = server.last_request
    assert (req.method, req.path) == ("POST", "/")
    assert req.headers["authorization"] == "Bearer sk-selfcheck"
    assert req.headers["traceparent"] == TRACEPARENT
    assert req.body == {"inputs": "Hello world", "parameters": {"max_new_tokens": 5}}


def test_text_generation_details(server: HFServer, client) -> None:
    prompt_ids = server.prompt_token_ids("Hello world")
    out = client.text_generation("Hello world", max_new_tokens=4, details=True, decoder_input_details=True)
    d = out.details
    assert d.finish_reason == "length" and d.generated_tokens == 4 and len(d.tokens) == 4 and d.seed is None
    assert [p.id for p in d.prefill] == prompt_ids and d.prefill[0].logprob is None
    assert all(isinstance(t.logprob, float) and t.logprob < 0 for t in d.tokens)
    assert "".join(t.text for t in d.tokens) == out.generated_text


def test_text_generation_stream(server: HFServer, client) -> None:
    events = list(client.text_generation("Hello world", max_new_tokens=5, stream=True, details=True))
    assert [e.index for e in events] == [1, 2, 3, 4, 5]
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    final = events[-1]
    assert final.details.finish_reason == "length" and final.details.generated_tokens == 5
    assert final.details.input_length == len(server.prompt_token_ids("Hello world"))
    assert "".join(e.token.text for e in events) == final.generated_text == client.text_generation("Hello world", max_new_tokens=5)
    assert list(client.text_generation("Hello world", max_new_tokens=5, stream=True)) == [e.token.text for e in events]


def test_eos_finish_reason(server: HFServer, client) -> None:
    greedy = server.generate(server.prompt_token_ids("Hello world"), max_new_tokens=6).token_ids
    saved = set(server.eos_token_ids)
    server.eos_token_ids.add(greedy[2])  # pretend the 3rd greedy token is an EOS token
    try:
        out = client.text_generation("Hello world", max_new_tokens=6, details=True)
    finally:
        server.eos_token_ids = saved
    assert out.details.finish_reason == "eos_token" and out.details.generated_tokens == 3


def test_sampling_with_seed_is_reproducible(client) -> None:
    a = client.text_generation("Hello world", max_new_tokens=6, temperature=0.9, seed=7, details=True)
    b = client.text_generation("Hello world", max_new_tokens=6, temperature=0.9, seed=7, details=True)
    assert a.details.seed == 7 and a.generated_text == b.generated_text


def test_chat_completion_plain(server: HFServer, client) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.model_dir)
    prompt_tokens = len(tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert prompt_tokens == len(server.chat_prompt_token_ids(MESSAGES))
    out = client.chat_completion(MESSAGES, max_tokens=6)
    assert out.id.startswith("chatcmpl-") and out.model == "dummy"  # InferenceClient sends "dummy" for URL models
    assert out.choices[0].finish_reason == "length" and out.choices[0].message.role == "assistant"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (prompt_tokens, 6, prompt_tokens + 6)
    assert out.choices[0].message.content == server.generate(server.chat_prompt_token_ids(MESSAGES), max_new_tokens=6).generated_text
    assert server.last_request.path == "/v1/chat/completions"


def test_chat_completion_stream_with_usage(server: HFServer, client) -> None:
    chunks = list(client.chat_completion(MESSAGES, max_tokens=5, stream=True, stream_options={"include_usage": True}))
    content_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(content_chunks) == 5 and usage_chunk.choices == []
    assert [c.choices[0].finish_reason for c in content_chunks] == [None] * 4 + ["length"]
    assert usage_chunk.usage.completion_tokens == 5
    assert usage_chunk.usage.prompt_tokens == len(server.chat_prompt_token_ids(MESSAGES))
    streamed = "".join(c.choices[0].delta.content for c in content_chunks)
    assert streamed == client.chat_completion(MESSAGES, max_tokens=5).choices[0].message.content
    no_usage = list(client.chat_completion(MESSAGES, max_tokens=2, stream=True))
    assert len(no_usage) == 2 and all(c.usage is None for c in no_usage)


def test_stop_sequence(server: HFServer, client) -> None:
    tokens = server.generate(server.prompt_token_ids("Hello world"), max_new_tokens=6).tokens
    stop = tokens[1].text  # text of the 2nd greedy token
    out = client.text_generation("Hello world", max_new_tokens=6, stop=[stop], details=True)
    assert out.details.finish_reason == "stop_sequence" and out.generated_text.endswith(stop)
    assert client.chat_completion(MESSAGES, max_tokens=6, stop=["\x00never"]).choices[0].finish_reason == "length"


def test_async_client_and_concurrency(server: HFServer, client) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub import AsyncInferenceClient

    async def run() -> tuple[str, list[str]]:
        aclient = AsyncInferenceClient(base_url=server.base_url, api_key="sk-async")
        plain = await aclient.chat_completion(MESSAGES, max_tokens=4)
        stream = await aclient.chat_completion(MESSAGES, max_tokens=4, stream=True)
        return plain.choices[0].message.content, [c.choices[0].delta.content async for c in stream]

    plain, parts = asyncio.run(run())
    assert plain == "".join(parts) and len(parts) == 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: client.chat_completion(MESSAGES, max_tokens=4).choices[0].message.content, range(4)))
    assert results == [plain] * 4


def test_feature_extraction(server: HFServer, client) -> None:
    emb = client.feature_extraction("Hello world")
    assert emb.shape == (1, server.model.config.hidden_size)
    assert abs(float((emb**2).sum()) - 1.0) < 1e-4  # TEI normalises by default
    assert server.last_request.body == {"inputs": "Hello world"}


def test_http_500_injection(server: HFServer, client) -> None:
    from huggingface_hub.errors import GenerationError, HfHubHTTPError

    server.fail_next(500)
    with pytest.raises(HfHubHTTPError) as exc:
        client.chat_completion(MESSAGES, max_tokens=2)
    assert exc.value.response.status_code == 500
    server.fail_next(500, error_type="generation", message="boom")
    with pytest.raises(GenerationError, match="boom"):
        client.text_generation("Hello world", max_new_tokens=2)
    expected = server.generate(server.prompt_token_ids("Hello world"), max_new_tokens=2).generated_text
    assert client.text_generation("Hello world", max_new_tokens=2) == expected  # only the armed ones failed


def test_stream_faults(server: HFServer, client) -> None:
    from huggingface_hub.errors import GenerationError, UnknownError

    server.fault_next_stream(after_tokens=2, mode="error")
    received = []
    with pytest.raises(GenerationError):
        for ev in client.text_generation("Hello world", max_new_tokens=5, stream=True):
            received.append(ev)
    assert len(received) == 2

    server.fault_next_stream(after_tokens=1, mode="error", message="chat broke")
    with pytest.raises(UnknownError, match="chat broke"):
        list(client.chat_completion(MESSAGES, max_tokens=5, stream=True))

    server.fault_next_stream(after_tokens=1, mode="disconnect")
    received = []
    with pytest.raises(Exception) as exc:
        for chunk in client.chat_completion(MESSAGES, max_tokens=5, stream=True):
            received.append(chunk)
    assert len(received) == 1 and "GenerationError" not in type(exc.value).__name__

    server.fault_next_stream(after_tokens=1, mode="stall", stall_seconds=0.4)
    t0 = time.monotonic()
    assert len(list(client.text_generation("Hello world", max_new_tokens=3, stream=True))) == 3
    assert time.monotonic() - t0 >= 0.4


def test_server_generation_is_not_instrumented_when_suppressed() -> None:
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    from fi_evals_core.testing.hf_server import suppressed_instrumentation

    assert is_instrumentation_enabled()
    with suppressed_instrumentation():
        assert not is_instrumentation_enabled()
    assert is_instrumentation_enabled()


# ----------------------------------------------------------------------------------------------- collector
ATTRS = {"s": "x, (y)", "i": 3, "f": 1.5, "b": True, "li": [1, 2], "ls": ["a", "b"], "lf": [0.5, 2.0], "lb": [True, False]}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_collector_roundtrip_spans(collector: RotelCollector, protocol: str) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=collector.http_endpoint + "/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": f"selfcheck-{protocol}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("selfcheck.scope", "1.2.3")
    with tracer.start_as_current_span(f"parent-{protocol}", kind=SpanKind.CLIENT, attributes=ATTRS) as parent:
        with tracer.start_as_current_span(f"child-{protocol}") as child:
            child.add_event("tick", {"n": 1})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    spans = collector.wait_for_spans(lambda s: s["resource_attributes"].get("service.name") == f"selfcheck-{protocol}", count=2, timeout=10)
    by_name = {s["name"]: s for s in spans}
    p, c = by_name[f"parent-{protocol}"], by_name[f"child-{protocol}"]
    assert p["attributes"] == ATTRS
    assert [type(v) for v in p["attributes"].values()] == [type(v) for v in ATTRS.values()]
    assert p["trace_id"] == f"{parent.get_span_context().trace_id:032x}" == c["trace_id"]
    assert p["span_id"] == f"{parent.get_span_context().span_id:016x}" and c["span_id"] == f"{child.get_span_context().span_id:016x}"
    assert c["parent_span_id"] == p["span_id"] and p["parent_span_id"] is None
    assert (p["kind"], c["kind"]) == ("CLIENT", "INTERNAL")
    assert (c["status_code"], c["status_message"], p["status_code"]) == ("ERROR", "boom", "UNSET")
    assert c["events"][0]["name"] == "tick" and c["events"][0]["attributes"] == {"n": 1}
    assert (p["scope_name"], p["scope_version"]) == ("selfcheck.scope", "1.2.3")


def test_collector_metrics_and_logs(collector: RotelCollector) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=collector.http_endpoint + "/v1/metrics"), export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    meter = meter_provider.get_meter("selfcheck.metrics")
    meter.create_counter("selfcheck.tokens", unit="{token}").add(7, {"kind": "input"})
    meter.create_histogram("selfcheck.duration", unit="s").record(0.25, {"ok": True})
    meter_provider.shutdown()
    collector.wait_for_metrics("selfcheck.duration")
    [tokens] = collector.metric_points("selfcheck.tokens")
    assert tokens["value"] == 7 and tokens["attributes"] == {"kind": "input"}
    hist = collector.latest_metric("selfcheck.duration")
    assert hist["type"] == "histogram" and hist["unit"] == "s"
    assert hist["data_points"][0]["count"] == 1 and hist["data_points"][0]["sum"] == 0.25

    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=collector.grpc_endpoint, insecure=True)))
    logger = logger_provider.get_logger("selfcheck.logs")
    emit_kwargs = {"body": {"content": "hi"}, "attributes": {"gen_ai.system": "test"}}
    try:
        logger.emit(event_name="selfcheck.event", **emit_kwargs)
    except TypeError:  # older SDKs: emit(LogRecord)
        from opentelemetry.sdk._logs import LogRecord

        logger.emit(LogRecord(**emit_kwargs))
    logger_provider.shutdown()
    [record] = collector.wait_for_logs(lambda r: r["scope_name"] == "selfcheck.logs")
    assert record["body"] == {"content": "hi"} and record["attributes"] == {"gen_ai.system": "test"}


def test_collector_clean_shutdown(tmp_path: Path) -> None:
    col = RotelCollector(tmp_path).start()
    pid = col.pid
    assert pid is not None
    col.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "rotel-agent.log").exists()
