"""Where finished requests go: chosen once, by `register()` (or by the instrumentor's providers).

- `WorkerSink`: the telemetry worker thread of this process emits them (emit.py) on the given
  providers. The default, and the only choice for providers the application built itself.
- `ExportProcessSink`: they are pickled to the export process, which emits them on providers of
  its own (export_process.py). `register()` with `TRACEAI_EXPORT_PROCESS=1` (the vLLM plugin's
  default).

A request whose span already exists here (a client span the application's own spans nest under,
or a grouping span whose children needed its ids) is finished here in both cases; with the export
process its histograms and evaluation still happen there, from the same record.
"""

from __future__ import annotations

from typing import Any, Protocol

from opentelemetry.trace import Span

from .emit import Emitter
from .finished import FinishedRequest, SpanIds
from .worker import get_worker


class RequestSink(Protocol):
    #: True when `submit` is cheap and thread-safe anywhere (a queue append): records are then
    #: built and handed over on the request's own thread, with no hop to the telemetry worker.
    direct: bool
    #: Completions are evaluated where this sink emits (another process): ship their texts.
    evaluates_remotely: bool

    def submit(self, record: FinishedRequest) -> None:
        """Emit `record` off the request path; never blocks, never raises."""

    def submit_live(self, record: FinishedRequest, span: Span) -> None:
        """Finish `span`, made in this process, from `record` (called on the telemetry worker)."""


_NO_SPAN = SpanIds(0, 0, 0)  # a span that exists but has no valid ids (no SDK): nothing to link


class WorkerSink:
    direct = False
    evaluates_remotely = False

    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter

    def submit(self, record: FinishedRequest) -> None:
        get_worker().run_or_submit(lambda: self.emitter.emit_safely(record))

    def submit_live(self, record: FinishedRequest, span: Span) -> None:
        self.emitter.emit_safely(record, span)


class ExportProcessSink:
    direct = True

    def __init__(self, process: Any, local: Emitter, evaluates_remotely: bool = False) -> None:
        self.process = process  # export_process.ExportProcess
        self.local = local  # for spans made here: finished here, exported through the provider
        self.evaluates_remotely = evaluates_remotely

    def keep_spans_here(self) -> None:
        """From now on request spans are made in this process (on the telemetry worker), where
        every span processor of the provider sees them (one the application added, say); their
        histograms and evaluation stay with the export process."""
        self.direct = False

    def submit(self, record: FinishedRequest) -> None:
        if self.direct:
            self.process.send_request(record)
            return
        get_worker().run_or_submit(lambda: self._emit_here(record, None))

    def submit_live(self, record: FinishedRequest, span: Span) -> None:
        self._emit_here(record, span)

    def _emit_here(self, record: FinishedRequest, span: Span | None) -> None:
        context = self.local.emit_safely(record, span, histograms=False, evaluate=False)
        if context is not None and (record.metrics or record.eval_pairs):  # the child's work
            self.process.send_request(record._replace(span_ids=SpanIds.of(context) or _NO_SPAN))
