"""Export from a separate process: the serving process hands finished requests (and the ended spans
of its provider) over a pipe, and a child process makes their spans and histograms, exports them,
and runs inline evaluation when it is on.

Why: inside the serving process every exported span costs its creation, its OTLP encoding and its
histogram points (benchmarks/RESULTS.md has the figures), and on a busy host all of it takes the
GIL from the engine loop. Handing a `FinishedRequest` over costs its pickling, and the
child runs on another core. On with `TRACEAI_EXPORT_PROCESS=1` for what `register()` builds (the
vLLM plugin's default); providers you build yourself are left as they are.

What stays in the serving process: the spans the application can see (its own, and request spans
it needs before they end: client calls, grouping spans), made and sampled by its provider, whose
span processor here (`ExportProcessSpanProcessor`) hands them over as `SpanData`; and every other
instrument (GPU memory gauges). What moves: span export, the request spans made from records (the
same `Emitter.emit` as in-process, with the same sampler built from the same configuration), the
GenAI histograms, and the completion sinks (inline evaluation), started there from the same
environment.

Wire format: length-prefixed pickle frames on the child's stdin, each a list of `Start`,
`FinishedRequest`, `SpanData` and `Marker` values; the child answers on a pipe of its own (its
stdout and stderr stay the app's, so a console exporter prints where it would have): a flush or
shutdown marker's token once everything before it is exported, and `s N` once every span that
frames 1..N gave it is out of its hands (delivered, or counted as dropped in its own ledger:
`Custody`). Bounded: at most `MAX_PENDING` items wait in the parent; beyond that they are dropped
and counted (`dropped`), never blocking the caller. If no child can be started, or the child dies,
one warning is logged and the sender thread does the child's work in the serving process from then
on (`_Handler`: exporting in-process, as without the flag); the items of the frames a dead child had
not settled are counted as lost (`export_process_lost`): those it had not read, those it held in
its queues or its outage buffer. (A span delivered in the instant between its export's answer and
the child's `s N` line is counted too: delivered + counted can exceed finished by that batch, never
fall short of it.) The child ignores SIGINT and SIGTERM sent to its process group (Ctrl-C): it
stops when the serving process shuts it down or exits. After a fork, the child process starts its
own export process on first use.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from . import handoff, losses, providers
from .config import TelemetryConfig
from .emit import DirectSpans, Emitter
from .finished import FinishedRequest, SpanIds
from .outage import SHUTDOWN_WAIT_S

logger = logging.getLogger(__name__)

MAX_PENDING = 65536  # items waiting in the parent
SEND_INTERVAL_S = 0.5  # what waits goes to the child at least this often
SEND_BATCH = 512  # or as soon as this many items wait
_HEADER = struct.Struct(">I")
_instances: "weakref.WeakSet[ExportProcess]" = weakref.WeakSet()
# The child's entry: this module imported under its own name (not run as __main__, whose classes
# would not be the ones the frames unpickle to).
# Ctrl-C and SIGTERM to the process group are ignored from the child's first instruction, before
# its imports (a child started during a shutdown would otherwise die of the same signal).
_CHILD_PROGRAM = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); import sys; "
                  "from fi_evals_core.telemetry.export_process import child_main; sys.exit(child_main())")
_inherited_after_fork: list[tuple] = []


# -- the wire format ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """The first item the child reads: what to export with, and as which resource."""

    config: TelemetryConfig
    resource_attributes: Mapping[str, Any]


@dataclass(frozen=True)
class Marker:
    """A flush or shutdown: acknowledged by the child once everything before it is exported."""

    kind: str  # "flush" or "shutdown"
    token: int


@dataclass(frozen=True)
class SpanData:
    """An ended span of the serving process's provider, as plain values."""

    name: str
    ids: SpanIds
    parent: SpanIds | None
    kind: int
    start_time: int | None
    end_time: int | None
    status_code: int
    status_description: str | None
    attributes: Mapping[str, Any]
    events: tuple[tuple[str, Mapping[str, Any], int], ...]
    links: tuple[tuple[SpanIds, Mapping[str, Any]], ...]
    scope: tuple[str, str | None, str | None] | None

    @classmethod
    def of(cls, span: ReadableSpan) -> "SpanData":
        scope = span.instrumentation_scope
        return cls(
            span.name, SpanIds.of(span.context), SpanIds.of(span.parent) if span.parent is not None else None,
            span.kind.value, span.start_time, span.end_time, span.status.status_code.value,
            span.status.description, dict(span.attributes or {}),
            tuple((e.name, dict(e.attributes or {}), e.timestamp) for e in span.events),
            tuple((SpanIds.of(link.context), dict(link.attributes or {})) for link in span.links
                  if link.context.is_valid),
            (scope.name, scope.version, scope.schema_url) if scope is not None else None)

    def readable(self, resource: Resource) -> ReadableSpan:
        return ReadableSpan(
            name=self.name, context=self.ids.span_context(),
            parent=self.parent.span_context() if self.parent is not None else None, resource=resource,
            attributes=self.attributes, events=[Event(n, a, t) for n, a, t in self.events],
            links=[Link(ids.span_context(), a) for ids, a in self.links], kind=SpanKind(self.kind),
            status=Status(StatusCode(self.status_code), self.status_description), start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=InstrumentationScope(*self.scope) if self.scope is not None else None)


class ExportProcess:
    """The parent's handle on the export process (started on first use)."""

    def __init__(self, config: Any, resource_attributes: dict[str, Any]) -> None:
        self._config = config
        self._resource = dict(resource_attributes)
        self.dropped = 0  # requests and spans that never reached the child
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._items: deque = deque()  # FinishedRequest and SpanData values for the child
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
        self._undelivered_tokens: set[int] = set()  # flushes the child answered "not all delivered"
        self._acks_in: Any = None
        self._frames_written = 0  # frames written to the child, the Start frame being 1
        self._unsettled: deque[tuple[int, int]] = deque()  # (frame, items) the child may still hold
        self._unsettled_lock = threading.Lock()
        self._frame_markers: dict[int, list[int]] = {}  # frame -> its markers' tokens, until settled
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
                    [sys.executable, "-c", _CHILD_PROGRAM, str(ack_write)],
                    stdin=subprocess.PIPE, close_fds=True, pass_fds=(ack_write,))
            finally:
                os.close(ack_write)
            self._acks_in = os.fdopen(ack_read, "rb")
        except Exception:
            logger.warning("traceai: could not start the export process; exporting in-process instead",
                           exc_info=True)
            return self._go_local()
        threading.Thread(target=self._ack_loop, name="traceai-export-acks", daemon=True).start()
        self._write([Start(self._config, self._resource)])
        return not self._dead

    def send_span(self, span: SpanData) -> bool:
        """An ended span of the serving process's provider, exported by the child."""
        return self._enqueue(span)

    def send_request(self, record: FinishedRequest) -> bool:
        """A finished request, made into its span and histograms by the child (emit.py)."""
        return self._enqueue(record)

    def _enqueue(self, item: Any) -> bool:
        """A deque append for the sender thread, or counted as dropped (bounded, never blocking)."""
        queue = self._items
        if self._stopping or len(queue) >= MAX_PENDING or not self._ensure_started():
            self._drop(losses.HANDOVER_QUEUE_FULL if len(queue) >= MAX_PENDING else losses.EXPORT_PROCESS_LOST)
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

    def _marker(self, kind: str, timeout_s: float) -> bool:
        if self._stopping or not self._ensure_started():
            return False
        with self._cond:
            if kind == "shutdown":
                self._stopping = True
            self._next_token += 1
            token = self._next_token
            event = self._acks[token] = threading.Event()
            self._markers.append(Marker(kind, token))
            self._cond.notify()
        done = event.wait(timeout_s)
        self._acks.pop(token, None)
        lost = token in self._lost_tokens or token in self._undelivered_tokens
        self._lost_tokens.discard(token)
        self._undelivered_tokens.discard(token)
        return done and not lost and not self._dead

    def _send_loop(self) -> None:
        if not self._spawn():
            return
        while not self._dead:
            if self._child_gone and self._local is None and not self._go_local():
                return
            with self._cond:
                if not (self._items or self._markers or self._closed):
                    self._cond.wait(SEND_INTERVAL_S)
                markers = [self._markers.popleft() for _ in range(len(self._markers))]
            items = self._items
            frame: list[Any] = [items.popleft() for _ in range(len(items))]
            frame.extend(markers)
            if frame:
                self._write(frame)
            if self._closed and not (self._items or self._markers):
                return

    def _write(self, frames: list[Any]) -> None:
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
        tokens = [f.token for f in frames if isinstance(f, Marker)]
        self._sent_tokens.update(tokens)
        items = sum(1 for f in frames if isinstance(f, (FinishedRequest, SpanData)))
        with self._unsettled_lock:  # before the write: the child may settle it before write() returns
            self._frames_written += 1
            if items:
                self._unsettled.append((self._frames_written, items))
            if tokens:
                self._frame_markers[self._frames_written] = tokens
        try:
            self._proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            self._proc.stdin.flush()
        except Exception:  # the child is gone: these frames never reached it, so they are done here
            with self._unsettled_lock:
                if self._unsettled and self._unsettled[-1][0] == self._frames_written:
                    self._unsettled.pop()
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

    def _handle_here(self, frames: list[Any]) -> None:
        for frame in frames:
            ok = self._local.handle(frame)
            if isinstance(frame, Marker):
                self._acknowledged(frame.token, ok)

    def _picklable(self, frames: list[Any]) -> list[Any]:
        kept: list[Any] = []
        for item in frames:
            try:
                pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                kept.append(item)
            except Exception:
                logger.debug("not picklable: %r", item, exc_info=True)
                self._drop(losses.NOT_PICKLABLE)
        return kept

    def _gone(self) -> None:
        """The child exited. Expected after a shutdown marker; otherwise one warning, and the sender
        does the child's work here from now on. The items of the frames it had not settled died with
        it and are counted (`export_process_lost`); a flush that was waiting on it returns False."""
        with self._unsettled_lock:  # what it had not settled died with it
            held = sum(items for _, items in self._unsettled)
            self._unsettled.clear()
        if held:
            self._drop(losses.EXPORT_PROCESS_LOST, held)
        with self._die_lock:  # the writer and the ack reader may both notice
            if self._stopping:
                self._dead = True
            elif not self._child_gone:
                logger.warning("traceai: the export process is gone (pid %s, started by pid %d, exit status %s); "
                               "exporting in-process from now on", getattr(self._proc, "pid", None), os.getpid(),
                               self._exit_status())
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
        self._drop(losses.EXPORT_PROCESS_LOST, lost)
        self._count_queued_as_dropped()
        for event in list(self._acks.values()):
            event.set()

    def _count_queued_as_dropped(self) -> None:
        queue = self._items
        while True:
            try:
                queue.popleft()
            except IndexError:
                break
            self._drop(losses.EXPORT_PROCESS_LOST)

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped += count
        losses.losses.add(reason, count, "finished requests or spans")

    def _ack_loop(self) -> None:
        acks = self._acks_in
        if acks is None:
            return
        for line in acks:
            if line.startswith(b"s "):  # "s N": frames up to N settled
                self._settled(int(line[2:]))
                continue
            if line.startswith(b"x "):  # "x N": frame N could not be read back: its items are lost
                self._unreadable(int(line[2:]))
                continue
            try:  # "<token> <1: all delivered | 0: not>"
                token_text, _, ok = line.decode().partition(" ")
                token = int(token_text)
            except ValueError:
                continue
            self._sent_tokens.discard(token)
            self._acknowledged(token, ok.strip() != "0")
        self._gone()

    def _settled(self, frame: int) -> None:
        with self._unsettled_lock:
            unsettled = self._unsettled
            while unsettled and unsettled[0][0] <= frame:
                unsettled.popleft()
            for done in [f for f in self._frame_markers if f <= frame]:
                del self._frame_markers[done]

    def _unreadable(self, frame: int) -> None:
        with self._unsettled_lock:
            lost = [entry for entry in self._unsettled if entry[0] == frame]
            for entry in lost:
                self._unsettled.remove(entry)
            tokens = self._frame_markers.pop(frame, [])
        for _, items in lost:
            self._drop(losses.NOT_PICKLABLE, items)
        for token in tokens:  # its flush never reached the child: it says so (False)
            self._sent_tokens.discard(token)
            self._acknowledged(token, False)

    def _acknowledged(self, token: int, delivered: bool) -> None:
        if not delivered:
            self._undelivered_tokens.add(token)
        event = self._acks.get(token)
        if event is not None:
            event.set()

    def _after_fork_in_child(self) -> None:
        """Threads and pipes belong to the parent: start afresh on first use. The inherited pipe
        objects are kept, never closed or finalised here: a parent thread may have held their
        internal locks at the fork, and closing them would wait forever."""
        _inherited_after_fork.append((self._proc, self._acks_in))
        self._reset()

    # -- what register() plugs in ---------------------------------------------------------------

    def span_processor(self) -> "ExportProcessSpanProcessor":
        return ExportProcessSpanProcessor(self)


def _after_fork() -> None:
    for instance in list(_instances):
        instance._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class ExportProcessSpanProcessor(SpanProcessor):
    """The span processor of a provider that exports through the export process: each ended,
    sampled span is handed over as `SpanData` (the child batches, like a batch span processor);
    `force_flush` returns once the child has exported everything handed over, as an in-process
    exporter's would."""

    def __init__(self, process: ExportProcess) -> None:
        self.process = process

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        try:
            self.process.send_span(SpanData.of(span))
        except Exception:
            logger.debug("hand-over to the export process failed", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.process.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.process.close()


# -- the child ------------------------------------------------------------------------------------

def _read_frame(stream: Any) -> list[Any] | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


class Custody:
    """In the child: which hand-over frames it still holds spans of. Each span the frame being
    handled gives the batch processor is noted (`hold`); when its fate is final (delivered, or
    counted as dropped: losses.settled) it is crossed off; once frames 1..N hold nothing and are
    handled, `s N` goes to the parent, which then no longer counts them as lost if the child dies.
    Spans the child makes itself (inline evaluation's) are not hand-over items and are not noted."""

    def __init__(self, write_line: Callable[[str], None]) -> None:
        self._write_line = write_line
        self._lock = threading.Lock()
        self._frame_of: dict[int, int] = {}  # span id -> the frame that gave it
        self._held: dict[int, int] = {}  # frame -> its spans not settled yet
        self._current = 0  # the frame being handled
        self._handled = 0  # every frame up to this one is handled
        self._said = 0  # the last `s N` written

    def begin(self, frame: int) -> None:
        self._current = frame

    def hold(self, span: ReadableSpan) -> None:
        frame = self._current
        with self._lock:
            self._frame_of[span.context.span_id] = frame
            self._held[frame] = self._held.get(frame, 0) + 1

    def end(self, frame: int) -> None:
        with self._lock:
            self._handled = frame
            self._say()

    def settled(self, spans: Any) -> None:
        with self._lock:
            frame_of, held = self._frame_of, self._held
            for span in spans:
                frame = frame_of.pop(span.context.span_id, None)
                if frame is not None:
                    left = held[frame] - 1
                    if left:
                        held[frame] = left
                    else:
                        del held[frame]
            self._say()

    def _say(self) -> None:
        upto = min(min(self._held, default=self._handled + 1) - 1, self._handled)
        if upto > self._said:
            self._said = upto
            self._write_line(f"s {upto}")


class _HoldingProcessor(SpanProcessor):
    """The batch processor, as the hand-over items' spans reach it in the child: each noted in
    `custody` first."""

    def __init__(self, batch: SpanProcessor, custody: Custody) -> None:
        self.batch = batch
        self.custody = custody

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.custody.hold(span)
        self.batch.on_end(span)


class _Handler:
    """The export process's work on what it is handed: finished requests emitted (spans through
    the same sampler as the serving process's, histograms, evaluation), spans exported, flushes and
    shutdown. Run by the child (`child_main`), or by the serving process's sender thread when no
    child could run."""

    def __init__(self, config: TelemetryConfig, resource_attributes: Mapping[str, Any],
                 custody: Custody | None = None) -> None:
        self._resource = Resource(dict(resource_attributes))
        exporter = providers.span_exporter(config)
        # Shut down by a shutdown frame (the serving process's provider shutdown, or EOF in the child).
        self._meter_provider, histograms = providers.meter_provider(config, self._resource, shutdown_on_exit=False)
        self._tracer_provider = TracerProvider(resource=self._resource, sampler=providers.sampler(config),
                                               shutdown_on_exit=False)
        self._batch = providers.ExportingSpanProcessor(exporter) if exporter is not None else None
        # where the hand-over items' spans go: the batch processor, through the child's custody
        self._items: SpanProcessor | None = self._batch
        direct = None
        if self._batch is not None:
            self._tracer_provider.add_span_processor(self._batch)
            if custody is not None:
                self._items = _HoldingProcessor(self._batch, custody)
            # request spans go straight to the batch processor, sampled as the provider would
            direct = DirectSpans(self._tracer_provider.sampler, self._tracer_provider.id_generator, self._resource,
                                 self._items)
        self._emitter = Emitter(self._tracer_provider, self._meter_provider, config.capture_content, direct,
                                histograms)
        # Inline evaluation, when the environment turns it on: here, where the request spans are made.
        self._completion_sink = handoff.start_sink(handoff.enabled_sink_factories(), self._tracer_provider,
                                                   self._meter_provider)
        self._stopped = False

    def handle(self, item: Any) -> bool:
        """Handle one item; for a flush marker, whether everything was delivered (False while an
        outage buffer still holds spans, say)."""
        try:
            if isinstance(item, FinishedRequest):
                self._emitter.emit_safely(item)
            elif isinstance(item, SpanData):
                if self._items is not None:
                    self._items.on_end(item.readable(self._resource))
            elif isinstance(item, Marker):
                if item.kind == "flush":
                    return self._flush()
                self.stop()
            return True
        except Exception:
            logger.warning("traceai export process: %s failed", type(item).__name__, exc_info=True)
            return False

    def _flush(self) -> bool:
        if self._completion_sink is not None:  # its results are exported with this flush
            self._completion_sink.force_flush(30.0)
        spans = self._batch.force_flush() if self._batch is not None else True
        metrics = self._meter_provider.force_flush()
        return bool(spans and metrics)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._completion_sink is not None:
            self._completion_sink.shutdown(10.0)
            if handoff.get_sink() is self._completion_sink:
                handoff.set_sink(None)
        self._tracer_provider.shutdown()
        self._meter_provider.shutdown(timeout_millis=SHUTDOWN_WAIT_S * 1000)  # a hung collector: then aborted
        losses.losses.report_totals()


# What the export process must never import: a hand-over value that pulls one in (a TorchVersion
# for a str, say) costs the child hundreds of MB and seconds before its first export.
HEAVY_MODULES = ("torch", "transformers", "vllm")


def heavy_modules_line() -> tuple[int, str]:
    """The export process's last log line: which of HEAVY_MODULES it imported (none: INFO)."""
    imported = [name for name in HEAVY_MODULES if name in sys.modules]
    if not imported:
        return logging.INFO, f"traceai export process: stopped; imported none of {', '.join(HEAVY_MODULES)}"
    return logging.WARNING, (f"traceai export process: stopped; imported {', '.join(imported)} (a value handed "
                             "over from the serving process is not a plain built-in type)")


def child_main() -> int:
    """The export process: handle each item read from stdin; ack flush and shutdown markers.

    Ctrl-C and a SIGTERM sent to the terminal's (or a service manager's) process group reach this
    process too: it ignores both and stops when its parent says so (a shutdown marker) or is gone
    (end of its stdin), after exporting what it holds. SIGKILL still ends it."""
    from . import logs

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    logs.make_visible()
    stdin = sys.stdin.buffer
    acks = os.fdopen(int(sys.argv[1]), "w")
    acks_lock = threading.Lock()  # lines come from this thread and from the exporters' threads

    def write_line(line: str) -> None:
        with acks_lock:
            acks.write(line + "\n")
            acks.flush()

    first = _read_frame(stdin)
    if not first or not isinstance(first[0], Start):
        return 2
    custody = Custody(write_line)
    losses.on_settled = custody.settled
    handler = _Handler(first[0].config, first[0].resource_attributes, custody)
    frame_number = 1  # the Start frame
    while True:
        try:
            frame = _read_frame(stdin)
        except EOFError:
            frame = None
        except Exception:  # a frame that cannot be read back: the parent counts it lost; this goes on
            logger.warning("traceai export process: a hand-over frame could not be read", exc_info=True)
            frame_number += 1
            write_line(f"x {frame_number}")
            custody.end(frame_number)
            continue
        if frame is None:  # the parent is gone: export what was received, then stop
            handler.stop()
            logger.log(*heavy_modules_line())
            return 0
        frame_number += 1
        custody.begin(frame_number)
        for item in frame:
            if isinstance(item, Marker):
                # a frame's markers follow its items: those are handled, so what the flush or the
                # shutdown settles is said (`s N`) before the marker's answer
                custody.end(frame_number)
            ok = handler.handle(item)
            if isinstance(item, Marker):
                if item.kind == "shutdown":
                    logger.log(*heavy_modules_line())
                write_line(f"{item.token} {int(ok)}")
                if item.kind == "shutdown":
                    return 0
        custody.end(frame_number)
