"""One engine with vLLM's own tracing on (its `llm_request` spans to an OTLP endpoint) and traceai on.

    python compare_vllm_tracing.py MODEL_DIR ENGINE_ARGS_JSON OTLP_GRPC_ENDPOINT

In a process of its own: vLLM's tracer writes OTEL_EXPORTER_OTLP_TRACES_ENDPOINT into the process
environment. Prints `OURS <attributes as JSON>` for each traceai request span.
"""

import json
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from traceai_vllm import VLLMInstrumentor

from fi_evals_core.telemetry import drain

MODEL_DIR, ENGINE_ARGS, ENDPOINT = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
VLLMInstrumentor().instrument(tracer_provider=provider)

from vllm import LLM, SamplingParams  # noqa: E402

llm = LLM(model=MODEL_DIR, disable_log_stats=False, otlp_traces_endpoint=ENDPOINT, **ENGINE_ARGS)
llm.generate(["compare me", "and me as well", "third"], SamplingParams(max_tokens=7, ignore_eos=True))
drain()
for span in exporter.get_finished_spans():
    if span.name.startswith("text_completion"):
        print("OURS", json.dumps(dict(span.attributes)))
