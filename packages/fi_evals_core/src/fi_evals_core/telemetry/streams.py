"""Proxies for streamed responses that end their request span exactly once.

A stream can finish in many ways: exhausted, raised, closed, broken out of and dropped, cancelled,
or never consumed at all. The proxy turns each into one `observer.on_end(error, completed)`; the
request span it feeds is idempotent, so a late `__del__` after `close()` changes nothing.
Everything else (attributes, `send`, ...) passes through to the wrapped stream.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import wrapt

logger = logging.getLogger(__name__)


class StreamObserver(Protocol):
    def on_chunk(self, chunk: Any) -> None: ...
    def on_end(self, error: BaseException | None, completed: bool) -> None: ...


def _notify_chunk(observer: StreamObserver, chunk: Any) -> None:
    try:
        observer.on_chunk(chunk)
    except Exception:
        logger.debug("stream observer failed on a chunk", exc_info=True)


def _notify_end(proxy: Any, error: BaseException | None, completed: bool) -> None:
    if proxy._self_done:
        return
    proxy._self_done = True
    try:
        proxy._self_observer.on_end(error, completed)
    except Exception:
        logger.debug("stream observer failed at the end", exc_info=True)


class ObservedStream(wrapt.ObjectProxy):
    def __init__(self, wrapped: Any, observer: StreamObserver) -> None:
        super().__init__(wrapped)
        self._self_observer = observer
        self._self_done = False

    def __iter__(self) -> "ObservedStream":
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self.__wrapped__)
        except StopIteration:
            _notify_end(self, None, True)
            raise
        except BaseException as exc:
            _notify_end(self, exc, False)
            raise
        _notify_chunk(self._self_observer, chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self.__wrapped__, "close", None)
            if close is not None:
                close()
        finally:
            _notify_end(self, None, False)

    def __del__(self) -> None:
        _notify_end(self, None, False)


class ObservedAsyncStream(wrapt.ObjectProxy):
    def __init__(self, wrapped: Any, observer: StreamObserver) -> None:
        super().__init__(wrapped)
        self._self_observer = observer
        self._self_done = False

    def __aiter__(self) -> "ObservedAsyncStream":
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            _notify_end(self, None, True)
            raise
        except BaseException as exc:  # CancelledError included: the span ends as cancelled
            _notify_end(self, exc, False)
            raise
        _notify_chunk(self._self_observer, chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            aclose = getattr(self.__wrapped__, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            _notify_end(self, None, False)

    def __del__(self) -> None:
        _notify_end(self, None, False)
