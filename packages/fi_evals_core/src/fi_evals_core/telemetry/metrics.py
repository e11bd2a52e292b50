"""The GenAI client metric instruments, created once per meter provider."""

from __future__ import annotations

from opentelemetry.metrics import Meter

from . import attributes as A

# Bucket boundaries the GenAI semantic conventions advise for these instruments.
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
TTFC_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


class GenAIMetrics:
    def __init__(self, meter: Meter) -> None:
        self.operation_duration = meter.create_histogram(
            A.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.token_usage = meter.create_histogram(
            A.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.server_request_duration = meter.create_histogram(
            A.METRIC_SERVER_REQUEST_DURATION,
            unit="s",
            description="Generative AI server request duration such as time-to-last byte or last output token",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.server_time_to_first_token = meter.create_histogram(
            A.METRIC_SERVER_TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to generate first token for successful responses",
            explicit_bucket_boundaries_advisory=TTFC_BUCKETS,
        )
        self.server_time_per_output_token = meter.create_histogram(
            A.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN,
            unit="s",
            description="Time per output token generated after the first token for successful responses",
            explicit_bucket_boundaries_advisory=TPOT_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            A.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response (first token)",
            explicit_bucket_boundaries_advisory=TTFC_BUCKETS,
        )
