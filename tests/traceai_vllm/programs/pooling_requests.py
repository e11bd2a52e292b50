"""The tiny Llama as a pooling model: embed, score and encode on an embedding model, then classify.

    python pooling_requests.py MODEL_DIR ENGINE_ARGS_JSON

In a process of its own: a second in-process engine resets vLLM's process-wide parallel state.
Prints `SCORED`, `ENCODED`, `TRACKER`, `OUT`, `CLASSIFIED`, `SPAN` and `TREE` lines (JSON after the tag).
"""

import json
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from traceai_vllm import VLLMInstrumentor

from fi_evals_core.telemetry import drain

MODEL_DIR, ENGINE_ARGS = sys.argv[1], json.loads(sys.argv[2])
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
instrumentor = VLLMInstrumentor()
instrumentor.instrument(tracer_provider=provider)

from vllm import LLM  # noqa: E402

embedder = LLM(model=MODEL_DIR, runner="pooling", convert="embed", **ENGINE_ARGS)
outputs = embedder.embed(["embed this", "and this one"], use_tqdm=False)
scores = embedder.score("what is this", ["doc one", "doc two"], use_tqdm=False)
encoded = embedder.encode(["encode me"], pooling_task="embed", use_tqdm=False)
print("SCORED", json.dumps(len(scores)))
print("ENCODED", json.dumps([encoded[0].request_id, len(encoded[0].prompt_token_ids)]))
del embedder  # one in-process engine at a time
classifier = LLM(model=MODEL_DIR, runner="pooling", convert="classify", **ENGINE_ARGS)
classified = classifier.classify(["classify me"], use_tqdm=False)
drain()
print("TRACKER", len(instrumentor.tracker))
for out in outputs:
    print("OUT", json.dumps([out.request_id, len(out.prompt_token_ids), len(out.outputs.embedding)]))
print("CLASSIFIED", json.dumps([classified[0].request_id, len(classified[0].prompt_token_ids)]))
for span in exporter.get_finished_spans():
    print("SPAN", json.dumps([span.name, dict(span.attributes)]))
    print("TREE", json.dumps([span.name, span.context.span_id, span.parent.span_id if span.parent else None]))
