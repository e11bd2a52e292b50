"""Riding out a collector outage: spans the OTLP exporter could not deliver wait here, bounded, and
go out once the collector answers again.

`OutageBuffer` wraps the OTLP span exporter `register()` (or the export process) builds, under the
SDK's batch span processor. A batch that fails (after the exporter's own retries) is kept, oldest
first, and the collector is tried again with growing pauses (1 s, doubling, at most
`MAX_BACKOFF_S`) by a retry thread of its own that runs only while spans wait (with no new spans
the batch processor would never call again); meanwhile new batches are kept without waiting on the
collector, so the batch processor's own queue keeps moving and the serving process is never slowed. With the collector
back, the backlog goes out in order. Delivery is at least once: a batch whose answer timed out
after the collector took it is sent again (backends see the same span ids twice). Bounds, each
loss counted by reason (losses.py) and logged:

- at most `max_spans` spans are kept (`TRACEAI_EXPORT_BUFFER_SPANS`): past it the oldest batches
  are dropped (`buffer_full`);
- `force_flush` tries the backlog once (not again within a pause) and says False if some is left;
- `shutdown` waits at most `SHUTDOWN_WAIT_S` (3 s) for an export in flight and then aborts it (a
  hung or blackholed collector), makes one more attempt only for a collector that refused
  connections at its last failure and takes them now (restarted a moment before the stop, as with
  Ctrl-C after a redeploy: not one that took the connection and hung, which would hang again), and
  counts what is left (`collector_unreachable`). Stopping with a collector that hangs costs about
  3 s for spans, whatever `OTEL_EXPORTER_OTLP_TIMEOUT` says. An attempt aborted exactly as its
  collector answered can be counted though delivered (delivered + counted > finished, by a batch).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Sequence
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .losses import BUFFER_FULL, COLLECTOR_UNREACHABLE, losses, settled

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
SHUTDOWN_WAIT_S = 3.0  # at shutdown, the longest wait for an export in flight (then it is aborted)
__all__ = ["OutageBuffer", "BUFFER_FULL", "COLLECTOR_UNREACHABLE"]


class OutageBuffer(SpanExporter):
    def __init__(self, exporter: SpanExporter, max_spans: int = 10_000, endpoint: str | None = None) -> None:
        self.exporter = exporter
        self.max_spans = max_spans
        self._address = _address(endpoint)  # (host, port) of the collector, to ask whether it listens
        self._refused = False  # the collector's port refused connections at the last failure
        self._backlog: deque[list[ReadableSpan]] = deque()
        self._buffered = 0
        self._lock = threading.Lock()  # the batch processor's thread, and flush/shutdown callers
        self._retry_at = 0.0  # monotonic: no attempt before this while the collector is down
        self._backoff = 1.0
        self._down_since: float | None = None
        self._shut = False
        self._retrying: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def buffered(self) -> int:
        """Spans waiting for the collector."""
        return self._buffered

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._shut:
                losses.add(COLLECTOR_UNREACHABLE, len(spans))
                settled(spans)
                return SpanExportResult.FAILURE
            self._keep(list(spans))
            if time.monotonic() >= self._retry_at:
                self._drain()
            return SpanExportResult.SUCCESS  # delivered, or kept here (and counted if it never goes)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Try the backlog (unless the collector failed less than a pause ago); True when nothing
        is left waiting."""
        with self._lock:
            if self._backlog and time.monotonic() >= self._retry_at:
                self._drain()
            return not self._backlog and self.exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """Count what is still kept (`collector_unreachable`), after one more attempt only for a
        collector that refused connections at its last failure and takes them now. An export that
        hangs (a blackholed collector, in the batch worker or the retry thread) is waited for at most
        `timeout_millis` (default `SHUTDOWN_WAIT_S`), then aborted: the OTLP gRPC exporter's shutdown
        cancels its call in flight."""
        wait_s = SHUTDOWN_WAIT_S if timeout_millis is None else max(0.5, timeout_millis / 1000.0)
        locked = self._lock.acquire(timeout=wait_s)
        exporter_shut = False
        if not locked:
            self._shut = True  # what the hung attempt holds is counted here; it will not touch it again
            self._stop.set()
            self.exporter.shutdown()
            exporter_shut = True
            locked = self._lock.acquire(timeout=1.0)
        try:
            if locked and not self._shut and self._backlog and self._refused and _listens(self._address):
                self._drain()  # restarted since it refused (a redeploy, then a Ctrl-C): one more attempt
            kept = [span for batch in list(self._backlog) for span in batch]
            self._backlog.clear()
            self._buffered = 0
            self._shut = True
            self._stop.set()
        finally:
            if locked:
                self._lock.release()
        if kept:
            losses.add(COLLECTOR_UNREACHABLE, len(kept))
            settled(kept)
        if not exporter_shut:
            self.exporter.shutdown()

    def _retry_loop(self) -> None:
        """Try the backlog at each retry time while it waits; ends when it is sent or at shutdown."""
        while not self._stop.wait(max(0.0, self._retry_at - time.monotonic())):
            with self._lock:
                if self._shut or not self._backlog:
                    return
                if time.monotonic() >= self._retry_at:
                    self._drain()
                if not self._backlog:
                    return

    def _keep(self, batch: list[ReadableSpan]) -> None:
        if not batch:
            return
        self._backlog.append(batch)
        self._buffered += len(batch)
        while self._buffered > self.max_spans and self._backlog:
            oldest = self._backlog.popleft()
            self._buffered -= len(oldest)
            losses.add(BUFFER_FULL, len(oldest))
            settled(oldest)

    def _drain(self) -> None:
        """Send the backlog, oldest first, until a batch fails (then pause before the next try)."""
        while self._backlog:
            batch = self._backlog[0]
            try:
                ok = self.exporter.export(batch) is SpanExportResult.SUCCESS
            except Exception:
                logger.debug("span exporter raised", exc_info=True)
                ok = False
            if self._shut:  # given up on at shutdown while this attempt hung: counted there
                return
            if not ok:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    logger.warning("traceai: the collector did not take spans; keeping up to %d and retrying "
                                   "(TRACEAI_EXPORT_BUFFER_SPANS)", self.max_spans)
                self._refused = _listens(self._address) is False
                self._retry_at = now + self._backoff
                self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
                if self._retrying is None or not self._retrying.is_alive():
                    self._retrying = threading.Thread(target=self._retry_loop, name="traceai-outage-retry",
                                                      daemon=True)
                    self._retrying.start()
                return
            self._backlog.popleft()
            self._buffered -= len(batch)
            settled(batch)
        if self._down_since is not None:
            logger.warning("traceai: the collector takes spans again after %.0f s; the kept spans were sent",
                           time.monotonic() - self._down_since)
        self._down_since = None
        self._backoff = 1.0
        self._retry_at = 0.0


def _address(endpoint: str | None) -> tuple[str, int] | None:
    if not endpoint:
        return None
    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        return parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 4317)
    except ValueError:
        return None


def _listens(address: tuple[str, int] | None, timeout_s: float = 0.25) -> bool | None:
    """Whether something takes TCP connections at `address` (None: unknown). A refused connection
    costs nothing to ask; a port that takes it may still hang an export."""
    if address is None:
        return None
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None
