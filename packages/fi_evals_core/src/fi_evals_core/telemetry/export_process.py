"""Export from a separate process: the serving process hands finished spans and GenAI histogram
points over a pipe, and a child process encodes and sends them and aggregates the histograms.

Why: inside the serving process every exported span costs its OTLP encoding (about 45 µs for a
vLLM request span, in Python) and every histogram point about 5 µs of SDK aggregation, and on a
busy host all of it takes the GIL from the engine loop. Handing a span over as a pickled tuple
costs a few microseconds, and the child runs on another core. On with `TRACEAI_EXPORT_PROCESS=1`
for what `register()` builds; providers you build yourself are left as they are.

What stays in the serving process: span creation and sampling for the spans the app can see (so
trace ids, parent links and `span.get_span_context()` are what the app sees), and every other
instrument (GPU memory gauges, evaluation metrics). What moves: OTLP (or JSONL/console) span export
and the GenAI histograms of the request spans (`gen_ai.client.*`, `gen_ai.server.*`), exported by
the child with the same resource and instrumentation scopes. A request whose span was deferred and
that nothing in the serving process needs (no child span, no inline evaluation) goes over whole,
as a record of plain values (`RequestSpan._record`): the child derives its attributes, samples it
with the same sampler, gives it ids, exports it and records its histograms, running the very code
(`RequestSpan._finish`) that would have run in the serving process. A deferred span that did
become a parent is handed over as a `DirectSpan`.

Protocol: length-prefixed pickle frames on the child's stdin; the child acknowledges flush and
shutdown markers by writing their token to a pipe of their own (its stdout and stderr stay the
app's, so a console exporter prints where it would have). Bounded: at most `MAX_PENDING` spans and as many
points wait in the parent; beyond that they are dropped and counted (`dropped`), never blocking the
caller. If no child can be started, or the child dies, one warning is logged and the sender thread
does the child's work in the serving process from then on (`_Handler`: exporting in-process, as
without the flag); what a dead child had read but not exported is lost with it. After a
fork, the child process starts its own export process on first use.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

logger = logging.getLogger(__name__)

MAX_PENDING = 65536  # spans (and, separately, histogram points) waiting in the parent
SEND_INTERVAL_S = 0.5  # what waits goes to the child at least this often
SEND_BATCH = 512  # or as soon as this many spans wait
_HEADER = struct.Struct(">I")
_instances: "weakref.WeakSet[ExportProcess]" = weakref.WeakSet()
_inherited_after_fork: list[tuple] = []


class ExportProcess:
    """The parent's handle on the export process (started on first use)."""

    def __init__(self, config: Any, resource_attributes: dict[str, Any]) -> None:
        self._config = config
        self._resource = dict(resource_attributes)
        self.dropped = 0  # spans and points that never reached the child
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._spans: deque = deque()
        self._records: deque = deque()  # finished requests (RequestSpan records), finished in the child
        self._points: deque = deque()
        self._markers: deque = deque()
        self._acks: dict[int, threading.Event] = {}
        self._next_token = 0
        self._cond = threading.Condition()
        self._closed = False
        self._stopping = False  # a shutdown marker was queued: the child's exit is expected
        self._dead = False
        self._local: _Handler | None = None  # the child's work, done here: no child could run
        self._child_gone = False  # the child died: the sender switches to `_local`
        self._sent_tokens: set[int] = set()  # markers written to the child, not yet acknowledged
        self._lost_tokens: set[int] = set()  # markers the child died with
        self._acks_in: Any = None
        self._die_lock = threading.Lock()
        self._sender: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- the parent side ------------------------------------------------------------------------

    def _ensure_started(self) -> bool:
        """Start the sender thread on first use; it starts the child, so the caller (possibly a
        request's thread, ending the first span) only pays for a thread start."""
        if self._sender is not None:
            return not self._dead
        with self._start_lock:
            if self._sender is None and not self._closed:
                self._sender = threading.Thread(target=self._send_loop, name="traceai-export-sender", daemon=True)
                self._sender.start()
        return not self._dead

    def _spawn(self) -> bool:
        try:
            ack_read, ack_write = os.pipe()
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "fi_evals_core.telemetry.export_process", str(ack_write)],
                    stdin=subprocess.PIPE, close_fds=True, pass_fds=(ack_write,))
            finally:
                os.close(ack_write)
            self._acks_in = os.fdopen(ack_read, "rb")
        except Exception:
            logger.warning("traceai: could not start the export process; exporting in-process instead",
                           exc_info=True)
            return self._go_local()
        threading.Thread(target=self._ack_loop, name="traceai-export-acks", daemon=True).start()
        self._write([("config", self._config, self._resource)])
        return not self._dead

    def send_spans(self, spans: list[tuple]) -> bool:
        """Ended spans (`span_to_tuple`), exported by the child."""
        return all([self._enqueue(self._spans, span) for span in spans])

    def send_request(self, scope: tuple, describe: Any, facts: Any) -> None:
        """One finished request, made into its span and histograms in the child by
        `request.finish_described(<the scope's runtime there>, describe, facts)`."""
        self._enqueue(self._records, (scope, describe, facts))

    def record(self, point: tuple) -> None:
        """One histogram point: (scope, instrument, value, attributes), recorded in the child."""
        self._enqueue(self._points, point)

    def _enqueue(self, queue: deque, item: Any) -> bool:
        """A deque append for the sender thread, or counted as dropped (bounded, never blocking)."""
        if self._stopping or len(queue) >= MAX_PENDING or not self._ensure_started():
            self.dropped += 1
            return False
        queue.append(item)
        if self._dead:  # it died meanwhile: what is queued will never be sent
            self._count_queued_as_dropped()
            return False
        if len(queue) >= SEND_BATCH:
            with self._cond:
                self._cond.notify()
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Everything handed over so far is exported by the child (spans sent, metrics collected)."""
        return self._marker("flush", timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, stop the child and wait for it; idempotent."""
        if self._closed:
            return
        if self._sender is not None and not self._dead:
            self._marker("shutdown", timeout_s)
        self._stopping = self._closed = True
        with self._cond:
            self._cond.notify()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self.dropped:
            logger.warning("traceai: %d spans or metric points were dropped by the export process hand-over",
                           self.dropped)

    def _marker(self, kind: str, timeout_s: float) -> bool:
        if self._stopping or not self._ensure_started():
            return False
        with self._cond:
            if kind == "shutdown":
                self._stopping = True
            self._next_token += 1
            token = self._next_token
            event = self._acks[token] = threading.Event()
            self._markers.append((kind, token))
            self._cond.notify()
        done = event.wait(timeout_s)
        self._acks.pop(token, None)
        lost = token in self._lost_tokens
        self._lost_tokens.discard(token)
        return done and not lost and not self._dead

    def _send_loop(self) -> None:
        if not self._spawn():
            return
        while not self._dead:
            if self._child_gone and self._local is None and not self._go_local():
                return
            with self._cond:
                if not (self._spans or self._records or self._markers or self._closed):
                    self._cond.wait(SEND_INTERVAL_S)
                markers = [self._markers.popleft() for _ in range(len(self._markers))]
            frames: list[tuple] = []
            for kind, queue in (("spans", self._spans), ("requests", self._records), ("points", self._points)):
                if queue:
                    frames.append((kind, [queue.popleft() for _ in range(len(queue))]))
            frames.extend(markers)
            if frames:
                self._write(frames)
            if self._closed and not (self._spans or self._records or self._markers):
                return

    def _write(self, frames: list[tuple]) -> None:
        if self._local is None and self._child_gone and not self._go_local():
            return
        if self._local is not None:
            self._handle_here(frames)
            return
        if self._dead or self._proc is None or self._proc.stdin is None:
            return
        try:
            payload = pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an item that does not pickle: it alone is dropped (and counted)
            frames = self._picklable(frames)
            payload = pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL)
        tokens = [f[1] for f in frames if f[0] in ("flush", "shutdown")]
        self._sent_tokens.update(tokens)
        try:
            self._proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            self._proc.stdin.flush()
        except Exception:  # the child is gone: these frames never reached it, so they are done here
            self._sent_tokens.difference_update(tokens)
            self._gone()
            if self._go_local():
                self._handle_here(frames)

    def _go_local(self) -> bool:
        """Do the child's work in this process from now on (on the sender thread): exporting
        in-process, as without TRACEAI_EXPORT_PROCESS, rather than dropping."""
        try:
            self._local = _Handler(self._config, self._resource)
            return True
        except Exception:
            logger.warning("traceai: could not export in-process either; telemetry is dropped", exc_info=True)
            self._die(0)
            return False

    def _handle_here(self, frames: list[tuple]) -> None:
        for frame in frames:
            self._local.handle(frame)
            if frame[0] in ("flush", "shutdown"):
                event = self._acks.get(frame[1])
                if event is not None:
                    event.set()

    def _picklable(self, frames: list[tuple]) -> list[tuple]:
        kept: list[tuple] = []
        for frame in frames:
            if frame[0] not in ("spans", "requests", "points"):
                kept.append(frame)  # a marker
                continue
            items = []
            for item in frame[1]:
                try:
                    pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                    items.append(item)
                except Exception:
                    if not self.dropped:
                        logger.warning("traceai: telemetry that does not pickle was dropped by the export process "
                                       "hand-over", exc_info=True)
                    self.dropped += 1
            kept.append((frame[0], items))
        return kept

    def _gone(self) -> None:
        """The child exited. Expected after a shutdown marker; otherwise one warning, and the sender
        does the child's work here from now on. What the child had read but not exported yet is lost
        with it (a flush that was waiting on it returns False)."""
        with self._die_lock:  # the writer and the ack reader may both notice
            if self._stopping:
                self._dead = True
            elif not self._child_gone:
                logger.warning("traceai: the export process is gone (exit status %s); exporting in-process from now "
                               "on", self._exit_status())
            self._child_gone = True
            lost_tokens = list(self._sent_tokens)
            self._sent_tokens.clear()
            self._lost_tokens.update(lost_tokens)
        for token in lost_tokens:  # their flushes return (False): the child died with them
            event = self._acks.get(token)
            if event is not None:
                event.set()
        if self._dead:
            for event in list(self._acks.values()):
                event.set()
        else:
            with self._cond:
                self._cond.notify()

    def _exit_status(self) -> int | None:
        try:
            return self._proc.wait(timeout=1) if self._proc is not None else None
        except Exception:
            return None

    def _die(self, lost: int) -> None:
        """Nothing can export any more: what is queued, and all that follows, is counted as dropped."""
        with self._die_lock:
            self._dead = True
        self.dropped += lost
        self._count_queued_as_dropped()
        for event in list(self._acks.values()):
            event.set()

    def _count_queued_as_dropped(self) -> None:
        for queue in (self._spans, self._records, self._points):
            while True:
                try:
                    queue.popleft()
                except IndexError:
                    break
                self.dropped += 1

    def _ack_loop(self) -> None:
        acks = self._acks_in
        if acks is None:
            return
        for line in acks:
            try:
                token = int(line)
            except ValueError:
                continue
            self._sent_tokens.discard(token)
            event = self._acks.get(token)
            if event is not None:
                event.set()
        self._gone()

    def _after_fork_in_child(self) -> None:
        """Threads and pipes belong to the parent: start afresh on first use. The inherited pipe
        objects are kept, never closed or finalised here: a parent thread may have held their
        internal locks at the fork, and closing them would wait forever."""
        _inherited_after_fork.append((self._proc, self._acks_in))
        self._reset()

    # -- what register() plugs in ---------------------------------------------------------------

    def span_processor(self) -> "ExportProcessSpanProcessor":
        return ExportProcessSpanProcessor(self)

    def genai_metrics(self, scope_name: str, scope_version: str | None) -> "ShippedGenAIMetrics":
        return ShippedGenAIMetrics(self, (scope_name, scope_version))


def _after_fork() -> None:
    for instance in list(_instances):
        instance._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class ExportProcessSpanProcessor(SpanProcessor):
    """The span processor of a provider that exports through the export process: each ended,
    sampled span becomes a tuple in its queue (the export process batches, like a batch span
    processor would); `force_flush` returns once the child has exported everything handed over,
    as an in-process exporter's would."""

    def __init__(self, process: ExportProcess) -> None:
        self.process = process

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        try:
            self.process.send_spans([span_to_tuple(span)])
        except Exception:
            logger.debug("hand-over to the export process failed", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.process.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.process.close()


class _ShippedHistogram:
    __slots__ = ("_process", "_key")

    def __init__(self, process: ExportProcess, key: tuple) -> None:
        self._process = process
        self._key = key

    def record(self, amount: float, attributes: dict[str, Any] | None = None, context: Any = None) -> None:
        self._process.record((self._key, amount, attributes))


class ShippedGenAIMetrics:
    """`GenAIMetrics`' instruments, recorded in the export process (same names, units, buckets)."""

    def __init__(self, process: ExportProcess, scope: tuple[str, str | None]) -> None:
        from opentelemetry.metrics import NoOpMeter

        from .metrics import GenAIMetrics

        self.process = process  # RequestSpan._shipped_to: requests recorded here may be finished there

        for name in vars(GenAIMetrics(NoOpMeter("names"))):  # the same attributes, read off the class
            setattr(self, name, _ShippedHistogram(process, (scope, name)))


class DirectSpan(NonRecordingSpan):
    """A request span that goes straight to the export process, with no SDK span in between.

    For the spans the telemetry worker creates when a request is finished (deferred spans), when
    the provider's only span processor is a batch processor feeding this export process: the SDK
    span would be built, its attributes validated, queued, batched and then turned into the same
    tuple `span_to_tuple` makes. Ids and the sampling decision come from the provider's own id
    generator and sampler, exactly as `Tracer.start_span` takes them; the span is handed over when
    it ends, if sampled.
    """

    def __init__(self, process: ExportProcess, context: SpanContext, parent: SpanContext | None, name: str,
                 kind: Any, attributes: dict[str, Any], start_time: int, scope: tuple) -> None:
        super().__init__(context)
        self._process = process
        self._parent = parent
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._start_time = start_time
        self._scope = scope
        self._status: tuple[int, str | None] = (StatusCode.UNSET.value, None)
        self._events: list[tuple] = []
        self._ended = False

    @property
    def attributes(self) -> dict[str, Any]:
        return self._attributes

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Any) -> None:
        self._attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self._attributes[key] = value

    def set_status(self, status: Any, description: str | None = None) -> None:
        if isinstance(status, Status):
            self._status = (status.status_code.value, status.description)
        else:
            self._status = (status.value, description)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        self._events.append((name, dict(attributes or {}), timestamp if timestamp is not None else time.time_ns()))

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        ctx = self.get_span_context()
        if not ctx.trace_flags.sampled:
            return
        self._process.send_spans([_span_tuple(
            self._name, ctx, self._parent, self._kind, self._start_time,
            end_time if end_time is not None else time.time_ns(), self._status, self._attributes, self._events,
            [], self._scope)])


def start_direct_span(process: ExportProcess, provider: Any, scope: tuple, name: str, kind: Any,
                      context: Any, attributes: dict[str, Any], start_time: int) -> DirectSpan | NonRecordingSpan:
    """`Tracer.start_span`'s decisions (ids, sampler, trace flags and state), for a `DirectSpan`."""
    from opentelemetry import trace

    parent = trace.get_current_span(context).get_span_context()
    if parent is None or not parent.is_valid:
        parent = None
        trace_id = provider.id_generator.generate_trace_id()
        random_id = provider.id_generator.is_trace_id_random()
    else:
        trace_id = parent.trace_id
        random_id = parent.trace_flags.random_trace_id
    result = provider.sampler.should_sample(context, trace_id, name, kind, attributes, ())
    flags = TraceFlags.SAMPLED if result.decision.is_sampled() else TraceFlags.DEFAULT
    if random_id:
        flags |= TraceFlags.RANDOM_TRACE_ID
    span_context = SpanContext(trace_id, provider.id_generator.generate_span_id(), is_remote=False,
                               trace_flags=TraceFlags(flags), trace_state=result.trace_state)
    if not result.decision.is_recording():
        return NonRecordingSpan(span_context)
    return DirectSpan(process, span_context, parent, name, kind, dict(result.attributes or {}), start_time, scope)


def direct_export_process(provider: Any) -> ExportProcess | None:
    """The export process `provider` feeds through its one span processor, if that is all it has
    (register() with TRACEAI_EXPORT_PROCESS=1); None otherwise (then spans are SDK spans)."""
    process = getattr(provider, "_fi_export_process", None)
    if process is None:
        return None
    try:
        processors = provider._active_span_processor._span_processors
    except AttributeError:
        return None
    if len(processors) != 1:
        return None
    only = processors[0]
    return process if isinstance(only, ExportProcessSpanProcessor) and only.process is process else None


def span_to_tuple(span: ReadableSpan) -> tuple:
    """What the child needs to rebuild `span` (plain, picklable values)."""
    scope = span.instrumentation_scope
    return _span_tuple(
        span.name, span.context, span.parent, span.kind, span.start_time, span.end_time,
        (span.status.status_code.value, span.status.description), dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        [(link.context.trace_id, link.context.span_id, int(link.context.trace_flags), dict(link.attributes or {}))
         for link in span.links],
        (scope.name, scope.version, scope.schema_url) if scope is not None else None)


def _span_tuple(name: str, ctx: SpanContext, parent: SpanContext | None, kind: Any, start: int | None,
                end: int | None, status: tuple[int, str | None], attributes: dict[str, Any], events: list,
                links: list, scope: tuple | None) -> tuple:
    """The hand-over format, read back by `span_from_tuple`."""
    return (
        name, ctx.trace_id, ctx.span_id, int(ctx.trace_flags), ctx.trace_state.to_header() if ctx.trace_state else "",
        (parent.span_id, parent.is_remote, int(parent.trace_flags)) if parent is not None else None,
        kind.value, start, end, status[0], status[1], attributes, events, links, scope,
    )


# -- the child ------------------------------------------------------------------------------------

def span_from_tuple(data: tuple, resource: Any) -> ReadableSpan:
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

    (name, trace_id, span_id, flags, trace_state, parent, kind, start, end, code, description,
     attributes, events, links, scope) = data
    state = TraceState.from_header([trace_state]) if trace_state else None
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state)
    parent_context = None
    if parent is not None:
        parent_context = SpanContext(trace_id, parent[0], is_remote=parent[1], trace_flags=TraceFlags(parent[2]))
    return ReadableSpan(
        name=name, context=context, parent=parent_context, resource=resource, attributes=attributes,
        events=[Event(n, a, t) for n, a, t in events],
        links=[Link(SpanContext(t, s, is_remote=True, trace_flags=TraceFlags(f)), a) for t, s, f, a in links],
        kind=SpanKind(kind), status=Status(StatusCode(code), description), start_time=start, end_time=end,
        instrumentation_scope=InstrumentationScope(*scope) if scope is not None else None,
    )


def _read_frame(stream: Any) -> list[tuple] | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


class _Collected(SpanProcessor):
    """The span processor of the request spans made from records: collects them for one export
    per frame (the handler's exporter is shared with the span tuples, on one thread)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


class _Handler:
    """The export process's work on what it is handed: span tuples exported, request records made
    into spans and histograms, histogram points recorded, flushes and shutdown. Run by the child
    (`child_main`), or by the serving process's sender thread when no child could run."""

    def __init__(self, config: Any, resource_attributes: dict[str, Any]) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        from .setup import _metric_readers, _sampler, _span_exporter

        self._config = config
        self._resource = Resource(resource_attributes)
        self._exporter = _span_exporter(config)
        # Shut down by a shutdown frame (the serving process's provider shutdown, or EOF in the child).
        self._meter_provider = MeterProvider(resource=self._resource, metric_readers=_metric_readers(config),
                                             shutdown_on_exit=False)
        # Request spans are sampled and given ids as the serving process's provider would: the same
        # sampler, built from the same configuration.
        self._tracer_provider = TracerProvider(resource=self._resource, sampler=_sampler(config),
                                               shutdown_on_exit=False)
        self._collected = _Collected()
        self._tracer_provider.add_span_processor(self._collected)
        self._runtimes: dict[tuple, Any] = {}
        self._stopped = False

    def _runtime_of(self, scope: tuple) -> Any:  # (name, version[, schema url])
        from .runtime import TelemetryRuntime

        runtime = self._runtimes.get(scope[:2])
        if runtime is None:
            runtime = self._runtimes[scope[:2]] = TelemetryRuntime(
                scope[0], scope[1], tracer_provider=self._tracer_provider, meter_provider=self._meter_provider,
                config=self._config)
        return runtime

    def _export(self, spans: list[ReadableSpan]) -> None:
        if self._exporter is not None and spans:
            self._exporter.export(spans)

    def handle(self, frame: tuple) -> None:
        from .request import finish_described

        kind = frame[0]
        try:
            if kind == "spans":
                self._export([span_from_tuple(t, self._resource) for t in frame[1]])
            elif kind == "requests":
                for scope, describe, facts in frame[1]:
                    try:
                        finish_described(self._runtime_of(scope), describe, facts)
                    except Exception:
                        logger.debug("traceai export process: a request record failed", exc_info=True)
                self._export(self._collected.spans)
                self._collected.spans.clear()
            elif kind == "points":
                for (scope, name), value, attributes in frame[1]:
                    getattr(self._runtime_of(scope).metrics, name).record(value, attributes)
            elif kind == "flush":
                if self._exporter is not None:
                    self._exporter.force_flush()
                self._meter_provider.force_flush()
            elif kind == "shutdown":
                self.stop()
        except Exception:
            logger.warning("traceai export process: %s failed", kind, exc_info=True)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._exporter is not None:
            self._exporter.shutdown()
        self._meter_provider.shutdown()


def child_main() -> int:
    """The export process: handle each frame read from stdin; ack flush and shutdown markers."""
    stdin = sys.stdin.buffer
    acks = os.fdopen(int(sys.argv[1]), "w")
    first = _read_frame(stdin)
    if not first or first[0][0] != "config":
        return 2
    _, config, resource_attributes = first[0]
    handler = _Handler(config, resource_attributes)
    while True:
        frames = _read_frame(stdin)
        if frames is None:  # the parent is gone: export what was received, then stop
            handler.stop()
            return 0
        for frame in frames:
            handler.handle(frame)
            if frame[0] in ("flush", "shutdown"):
                acks.write(f"{frame[1]}\n")
                acks.flush()
            if frame[0] == "shutdown":
                return 0


if __name__ == "__main__":
    sys.exit(child_main())
