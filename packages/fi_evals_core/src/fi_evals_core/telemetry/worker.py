"""One background thread that finishes request spans off the request path.

Ending a span costs more than starting it: derived latency figures, attribute validation, the
span processor hand-off, four metric records, and for local generation the reading of token ids
(a device-to-host copy on a GPU). The request path only notes the end instant and queues the rest
here, where it runs in batches. `drain()` runs what is queued and waits: the providers' own
`force_flush()` / `shutdown()` call it first (`hook_flushes`), and it runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from typing import Callable

import wrapt

from . import handoff

logger = logging.getLogger(__name__)


class TelemetryWorker:
    """Runs queued jobs in batches: it wakes at most every `interval_s` (or when `max_batch` jobs
    wait, or on `drain()`), so the finishing code runs back to back with warm caches and takes the
    GIL from the serving thread once per batch rather than once per request."""

    def __init__(self, interval_s: float = 0.1, max_batch: int = 512) -> None:
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._jobs: deque[Callable[[], None]] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._flush_requested = False
        self._thread = threading.Thread(target=self._run, name="traceai-telemetry", daemon=True)
        self._thread.start()

    @property
    def on_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)  # deque.append is atomic: no lock on the request path
        if len(self._jobs) >= self.max_batch:
            with self._cond:
                self._flush_requested = True
                self._cond.notify_all()

    def run_or_submit(self, job: Callable[[], None]) -> None:
        """Run `job` now when called on this worker (it is already off the request path), else queue it."""
        if self.on_worker_thread:
            job()
        else:
            self.submit(job)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Run every queued job now and wait for them; False if `timeout_s` passed first."""
        if self.on_worker_thread:
            return True
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._jobs and self._pending == 0, timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._flush_requested, self.interval_s)
                self._flush_requested = False
                self._pending = len(self._jobs)
            for _ in range(self._pending):
                job = self._jobs.popleft()
                try:
                    job()
                except Exception:
                    logger.debug("telemetry job failed", exc_info=True)
            with self._cond:
                self._pending = 0
                self._cond.notify_all()


_worker: TelemetryWorker | None = None
_worker_lock = threading.Lock()


def get_worker() -> TelemetryWorker:
    global _worker
    if _worker is None:
        with _worker_lock:
            if _worker is None:
                _worker = TelemetryWorker()
                drain_before_exit_shutdowns(_finish_queued_at_exit)
    return _worker


def drain_before_exit_shutdowns(hook: Callable[[], object]) -> None:
    """Run `hook` at interpreter exit before the exit-time `shutdown()` of every provider that
    exists now. An SDK provider registers its bound `shutdown` with `atexit` when it is created, so
    for a provider created before the flush hooks were installed that bound method is the unhooked
    one; atexit runs handlers last-registered first, so (re)registering here puts `hook` ahead of
    them all. Without it, the requests that ended in the last moments before exit would be finished
    onto providers already shut down, and lost."""
    atexit.unregister(hook)
    atexit.register(hook)


def _forget_worker_after_fork() -> None:
    """A forked child has no worker thread (threads do not survive fork): start a new one on use.
    The SDK's batch span processor and periodic metric reader restart their own threads likewise."""
    global _worker
    _worker = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker_after_fork)


def hook_flushes(provider: object) -> None:
    """Make `provider.force_flush()` / `shutdown()` first finish what has ended and is still queued
    (here, and in inline evaluation), so code that flushes its providers (tests, serverless
    handlers, exit hooks) never misses a request that ended a moment before. Only the provider
    given is hooked (an instance attribute, once); the SDK's classes are left alone."""
    if (provider is None or not hasattr(provider, "force_flush") or provider in _hooked
            or getattr(type(provider), "finishes_queued_first", False)):  # register()'s own do it themselves
        return
    try:
        _hooked.add(provider)
    except TypeError:  # not weak-referenceable
        return
    for method in ("force_flush", "shutdown"):
        try:
            wrapt.wrap_function_wrapper(provider, method, _finish_queued_first)
        except Exception:
            logger.debug("could not hook %s.%s", type(provider).__name__, method, exc_info=True)
    drain_before_exit_shutdowns(_finish_queued_at_exit)


_hooked: "weakref.WeakSet[object]" = weakref.WeakSet()


def _finish_queued_first(wrapped: Callable, instance: object, args: tuple, kwargs: dict) -> object:
    finish_queued(shutdown=wrapped.__name__ == "shutdown")
    return wrapped(*args, **kwargs)


def finish_queued(shutdown: bool = False, timeout_s: float = 30.0) -> bool:
    """Emit every request that has ended, then have the in-process completion sink (inline
    evaluation) score what it holds; at shutdown, within a bound, and it is stopped."""
    done = drain(min(timeout_s, 10.0))
    sink = handoff.get_sink()
    if sink is not None:
        try:
            if shutdown:
                handoff.set_sink(None)
                done = sink.shutdown(min(timeout_s, 10.0)) and done
            else:
                done = sink.force_flush(timeout_s) and done
        except Exception:
            logger.debug("inline evaluation flush failed", exc_info=True)
            return False
    return done


def _finish_queued_at_exit() -> None:
    finish_queued(shutdown=True, timeout_s=5.0)


def drain(timeout_s: float = 10.0) -> bool:
    """Finish every request span that has ended but is still queued (no-op if none ever was)."""
    return _worker.drain(timeout_s) if _worker is not None else True


atexit.register(_finish_queued_at_exit)  # for providers created after the worker started (see drain_before_exit_shutdowns)
