"""The OTLP path end to end: `register()` from the environment -> real rotel collector, gRPC and HTTP."""

from __future__ import annotations

import pytest

from fi_evals_core import register
from fi_evals_core.telemetry import TelemetryConfig
from fi_evals_core.telemetry import attributes as A


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_and_metrics_reach_a_real_collector(protocol, collector, gpt2, hf_server, hub_online):
    from huggingface_hub import InferenceClient

    collector.clear()
    env = {**collector.otel_env(protocol), "OTEL_SERVICE_NAME": f"otlp-{protocol}",
           "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20collector-secret",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "5000"}
    telemetry = register(config=TelemetryConfig.from_env(env), set_global=False)
    try:
        model, tok = gpt2
        enc = tok(["over the wire", "two"], return_tensors="pt", padding=True)
        model.generate(**enc, max_new_tokens=5)
        chat = InferenceClient(base_url=hf_server.base_url).chat_completion(
            [{"role": "user", "content": "hi"}], max_tokens=4)
    finally:
        telemetry.shutdown()  # flushes spans and metrics

    spans = collector.wait_for_spans(lambda s: s["scope_name"] == "traceai_huggingface", count=2, timeout=15)
    local = next(s for s in spans if s["name"].startswith("text_completion"))
    remote = next(s for s in spans if s["name"].startswith("chat"))
    assert local["resource_attributes"]["service.name"] == f"otlp-{protocol}"
    attrs = local["attributes"]
    assert attrs[A.USAGE_INPUT_TOKENS] == int(enc["attention_mask"].sum())  # ints stay ints on the wire
    assert isinstance(attrs[A.RESPONSE_TIME_TO_FIRST_CHUNK], float)
    assert isinstance(attrs[A.RESPONSE_FINISH_REASONS], list) and len(attrs[A.RESPONSE_FINISH_REASONS]) == 2
    assert attrs[A.MODEL_FRAMEWORK] == "pytorch"
    assert local["kind"] == "INTERNAL" and remote["kind"] == "CLIENT"
    assert remote["attributes"][A.USAGE_OUTPUT_TOKENS] == chat.usage.completion_tokens
    assert remote["attributes"][A.SERVER_ADDRESS] == "127.0.0.1"

    def ours(name):
        service = f"otlp-{protocol}"
        return lambda m: m["name"] == name and m["resource_attributes"].get("service.name") == service

    # one export at shutdown: one duration point per operation, each request counted once
    (duration,) = collector.wait_for_metrics(ours(A.METRIC_OPERATION_DURATION), timeout=15)
    assert duration["unit"] == "s" and duration["scope_name"] == "traceai_huggingface"
    assert sorted((p["attributes"][A.OPERATION_NAME], p["count"]) for p in duration["data_points"]) == [
        ("chat", 1), ("text_completion", 1)]
    (usage,) = collector.wait_for_metrics(ours(A.METRIC_TOKEN_USAGE), timeout=15)
    sums = sorted((p["attributes"][A.OPERATION_NAME], p["attributes"][A.TOKEN_TYPE], p["sum"])
                  for p in usage["data_points"])
    assert sums == sorted([
        ("text_completion", "input", attrs[A.USAGE_INPUT_TOKENS]),
        ("text_completion", "output", attrs[A.USAGE_OUTPUT_TOKENS]),
        ("chat", "input", chat.usage.prompt_tokens), ("chat", "output", chat.usage.completion_tokens)])
