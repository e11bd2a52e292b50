"""Shared fixtures: tiny local models, and an instrumented telemetry pipeline per test.

The SDK's in-memory exporter and metric reader are real OpenTelemetry components: spans go
through the same processor path as in production. The OTLP wire path is covered separately
against a real collector (integration/test_otlp_export.py). The builders (tiny models, the local
inference server, the rotel collector) live in `fi_evals_core.testing`, shared with the demo and the
benchmarks; fixtures used by one folder only live in that folder's conftest.py.
"""

from __future__ import annotations

import os

# Before anything imports torch (and with it triton): Triton decides interpreter or compiler when
# its functions are decorated, and these machines have no GPU. The fused kernels' tests run
# interpreted (fi_evals_core/test_evals_fused.py); the ahead-of-time GPU compile check runs in a child
# without it.
os.environ["TRITON_INTERPRET"] = "1"

import gc  # noqa: E402
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fi_evals_core.telemetry import ContentCapture, TelemetryConfig, drain
from fi_evals_core.testing.tiny_models import build_gpt2, build_llama, build_t5

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HF_SCOPE = "traceai_huggingface"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "gpt2": build_gpt2(root / "gpt2"),
        "llama": build_llama(root / "llama"),
        "t5": build_t5(root / "t5"),
    }


@pytest.fixture(scope="session")
def gpt2(model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"]), AutoTokenizer.from_pretrained(model_dirs["gpt2"])


@pytest.fixture(scope="session")
def llama(model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dirs["llama"]), AutoTokenizer.from_pretrained(model_dirs["llama"])


def metric_points(reader, name: str) -> list:
    """The data points of the metric `name` an in-memory reader collects now (after a drain)."""
    assert drain(10)
    data = reader.get_metrics_data()
    points = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


@dataclass
class Captured:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans(self, scope: str = HF_SCOPE) -> list[ReadableSpan]:
        gc.collect()
        assert drain(10)  # spans are finished on the telemetry worker
        return [s for s in self.exporter.get_finished_spans() if s.instrumentation_scope.name == scope]

    def clear(self) -> None:
        assert drain(10)
        self.exporter.clear()

    def metric_points(self, name: str) -> list:
        return metric_points(self.reader, name)


def _instrumented(capture: ContentCapture = ContentCapture.NO_CONTENT, max_len: int = 8192):
    from traceai_huggingface import HuggingFaceInstrumentor

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = HuggingFaceInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        config=TelemetryConfig(capture_content=capture, max_content_length=max_len),
    )
    return instrumentor, Captured(exporter, reader, tracer_provider, meter_provider)


@pytest.fixture
def telemetry():
    instrumentor, captured = _instrumented()
    yield captured
    instrumentor.uninstrument()


@pytest.fixture
def instrument_with():
    """Instrument with a chosen content-capture mode: `captured = instrument_with(mode, max_len)`."""
    started = []

    def start(capture: ContentCapture, max_len: int = 8192) -> Captured:
        instrumentor, captured = _instrumented(capture, max_len)
        started.append(instrumentor)
        return captured

    yield start
    for instrumentor in started:
        instrumentor.uninstrument()


@pytest.fixture(scope="session")
def hf_server(model_dirs):
    """A real HTTP server on 127.0.0.1 speaking TGI and OpenAI chat, backed by the tiny Llama."""
    from fi_evals_core.testing.hf_server import HFServer

    with HFServer(model_dirs["llama"], model_id="tiny-llama") as server:
        yield server


@pytest.fixture(scope="session")
def collector(tmp_path_factory):
    """The real rotel OTLP collector (gRPC and HTTP receivers) on free 127.0.0.1 ports."""
    from fi_evals_core.testing.collector import RotelCollector

    with RotelCollector(tmp_path_factory.mktemp("rotel")) as running:
        yield running


@pytest.fixture
def hub_online(monkeypatch):
    """HF_HUB_OFFLINE (read once at import) blocks InferenceClient even on 127.0.0.1: lift it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def nli_checkpoint(tmp_path_factory):
    """Factory: a tiny random NLI checkpoint of a family and label order, built once per session."""
    from fi_evals_core.testing.tiny_nli import NLI_LABELS, build_nli_checkpoint

    built: dict[tuple, str] = {}

    def get(family: str = "bert", labels: tuple[str, ...] = NLI_LABELS, **kwargs) -> str:
        key = (family, tuple(labels), tuple(sorted(kwargs.items())))
        if key not in built:
            path = tmp_path_factory.mktemp(f"nli-{family}")
            built[key] = str(build_nli_checkpoint(path, family, labels, **kwargs))
        return built[key]

    return get
