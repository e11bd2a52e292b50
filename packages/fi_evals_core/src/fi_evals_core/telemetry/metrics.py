"""The GenAI request histograms: their names, units and advised bucket boundaries (one table), and
the SDK instruments made from it for a meter provider the application built (`GenAIMetrics`).
Providers `register()` builds record them in `histograms.HistogramStore` instead, from the same
table."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.metrics import Meter

from . import attributes as A

# Bucket boundaries the GenAI semantic conventions advise for these instruments.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TTFC_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(frozen=True)
class HistogramSpec:
    attribute: str  # the name it has on GenAIMetrics / StoreMetrics
    name: str
    unit: str
    description: str
    buckets: tuple[float, ...]


HISTOGRAMS = (
    HistogramSpec("operation_duration", A.METRIC_OPERATION_DURATION, "s", "GenAI operation duration",
                  DURATION_BUCKETS),
    HistogramSpec("token_usage", A.METRIC_TOKEN_USAGE, "{token}", "Number of input and output tokens used",
                  TOKEN_BUCKETS),
    HistogramSpec("server_request_duration", A.METRIC_SERVER_REQUEST_DURATION, "s",
                  "Generative AI server request duration such as time-to-last byte or last output token",
                  DURATION_BUCKETS),
    HistogramSpec("server_time_to_first_token", A.METRIC_SERVER_TIME_TO_FIRST_TOKEN, "s",
                  "Time to generate first token for successful responses", TTFC_BUCKETS),
    HistogramSpec("server_time_per_output_token", A.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN, "s",
                  "Time per output token generated after the first token for successful responses", TPOT_BUCKETS),
    HistogramSpec("time_to_first_chunk", A.METRIC_TIME_TO_FIRST_CHUNK, "s",
                  "Time to receive the first chunk of a streamed response (first token)", TTFC_BUCKETS),
)


class GenAIMetrics:
    """The SDK histograms of one meter (one attribute per `HistogramSpec.attribute`)."""

    def __init__(self, meter: Meter) -> None:
        for spec in HISTOGRAMS:
            setattr(self, spec.attribute, meter.create_histogram(
                spec.name, unit=spec.unit, description=spec.description,
                explicit_bucket_boundaries_advisory=list(spec.buckets)))
