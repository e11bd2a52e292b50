"""Telemetry that did not reach the backend, counted by reason, in one ledger per process.

Every place that gives up on a span, a finished request or a metric point says so here
(`losses.add(reason, n)`): the export process hand-over (its queue full, a value that does not
pickle, the child dead with what it held), the batch span processor (its queue full, spans ended
after its shutdown or left at its shutdown's timeout), a span exporter that failed after its own
retries (`CountingSpanExporter`: a collector down, a destination that cannot be written), the
outage buffer (outage.py), and a metric export that failed. The ledger:

- is exported as the `traceai.telemetry.dropped` counter, one series per `reason` (with `signal`:
  `traces` for spans and finished requests, `metrics` for metric points), by every meter provider
  `register()` (or the export process) builds;
- logs one WARNING per reason at most once a minute while losses go on (`WARN_INTERVAL_S`);
- logs the totals once when telemetry shuts down (`report_totals`).

Where a span's fate is final (delivered, or counted here), the exporters say so (`settled`): the
export process's child uses it to tell its parent which hand-over frames it no longer holds, so a
child that dies is counted for exactly what it still held.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

logger = logging.getLogger(__name__)

DROPPED_COUNTER = "traceai.telemetry.dropped"
WARN_INTERVAL_S = 60.0
# the reasons, as the counter's `reason` attribute says them
HANDOVER_QUEUE_FULL = "handover_queue_full"  # the export process's hand-over queue was full
NOT_PICKLABLE = "not_picklable"  # a value that cannot cross to the export process
EXPORT_PROCESS_LOST = "export_process_lost"  # neither the child nor this process could export them
EXPORT_FAILED = "export_failed"  # the span exporter gave up (after its own retries)
QUEUE_FULL = "queue_full"  # the batch span processor's queue was full (OTEL_BSP_MAX_QUEUE_SIZE)
ENDED_AFTER_SHUTDOWN = "ended_after_shutdown"  # a span ended after its processor was shut down
SHUTDOWN_TIMEOUT = "shutdown_timeout"  # still queued when the batch processor's shutdown timed out
BUFFER_FULL = "buffer_full"  # the outage buffer was full: its oldest spans made room
COLLECTOR_UNREACHABLE = "collector_unreachable"  # still waiting for the collector at shutdown
METRIC_EXPORT_FAILED = "metric_export_failed"  # metric points in an export that failed

_WORDS = {
    HANDOVER_QUEUE_FULL: "the export process's hand-over queue was full",
    NOT_PICKLABLE: "they could not be handed to the export process (not picklable)",
    EXPORT_PROCESS_LOST: "no export process could take them",
    EXPORT_FAILED: "the exporter failed to deliver them",
    QUEUE_FULL: "the batch span processor's queue was full (OTEL_BSP_MAX_QUEUE_SIZE)",
    ENDED_AFTER_SHUTDOWN: "they ended after telemetry was shut down",
    SHUTDOWN_TIMEOUT: "they were still queued when the shutdown timed out",
    BUFFER_FULL: "the outage buffer was full (TRACEAI_EXPORT_BUFFER_SPANS); the oldest made room",
    COLLECTOR_UNREACHABLE: "the collector was still unreachable at shutdown",
    METRIC_EXPORT_FAILED: "the metric export failed (a cumulative series carries their totals in its next export)",
}
_SIGNALS = {METRIC_EXPORT_FAILED: "metrics"}  # every other reason counts spans or finished requests


class Losses:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._warned_at: dict[str, float] = {}
        self._reported: dict[str, int] = {}

    def add(self, reason: str, count: int = 1, what: str = "spans") -> None:
        if count <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + count
            total = self._counts[reason]
            last = self._warned_at.get(reason)
            warn = last is None or now - last >= WARN_INTERVAL_S
            if warn:
                self._warned_at[reason] = now
        if warn:
            logger.warning("traceai: %d %s dropped: %s (%d so far; counted in %s{reason=%s})", count, what,
                           _WORDS.get(reason, reason), total, DROPPED_COUNTER, reason)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def observe(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"reason": reason, "signal": _SIGNALS.get(reason, "traces")})
                for reason, count in self.counts().items()]

    def attach(self, meter_provider: Any) -> None:
        """Export the ledger from `meter_provider` (an SDK meter provider with readers)."""
        meter_provider.get_meter("fi_evals_core.telemetry").create_observable_counter(
            DROPPED_COUNTER, callbacks=[self.observe], unit="{item}",
            description="Spans and finished requests that did not reach the backend, by reason")

    def report_totals(self) -> None:
        """One WARNING with what was lost since the last report (at shutdown); nothing if nothing."""
        counts = self.counts()
        new = {r: c - self._reported.get(r, 0) for r, c in counts.items() if c > self._reported.get(r, 0)}
        self._reported = counts
        if new:
            logger.warning("traceai: telemetry dropped in this process: %s",
                           ", ".join(f"{count} ({reason})" for reason, count in sorted(new.items())))


losses = Losses()
# Told of every span whose fate is final (delivered, or counted above), by the exporters; set by the
# export process's child only (export_process.Custody), None elsewhere.
on_settled: Callable[[Sequence[ReadableSpan]], None] | None = None


def settled(spans: Sequence[ReadableSpan]) -> None:
    """`spans` are out of this process's hands: delivered, or counted as dropped."""
    listener = on_settled
    if listener is not None and spans:
        try:
            listener(spans)
        except Exception:
            logger.debug("settled listener failed", exc_info=True)


class CountingSpanExporter(SpanExporter):
    """`exporter`, with what it fails to deliver counted in `losses` (EXPORT_FAILED)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:
            logger.debug("span exporter raised", exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            losses.add(EXPORT_FAILED, len(spans))
        settled(spans)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.exporter.shutdown()
