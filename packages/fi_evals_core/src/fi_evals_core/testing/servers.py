"""Helpers for tests that start real servers on 127.0.0.1: a free port, waiting until a process
answers HTTP 200 on a URL (failing early, with its log, if it exits), and waiting, with a deadline,
for anything else a real component does asynchronously (`wait_until`)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float, log: Path, what: str = "server") -> None:
    """Return once `url` answers 200; raise RuntimeError naming `log` if `process` exits first or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s: see {log}")
        time.sleep(0.5)


def wait_until(probe: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.25) -> T:
    """`probe()`'s first truthy result, polled until `timeout_s` has passed; AssertionError naming
    `what` (and the last result) otherwise. For what a real component does on its own schedule: a
    server's ingest, an exporter's retry pause."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s:.0f} s, still not {what} (last: {result!r})")
        time.sleep(interval_s)


class Blackhole:
    """A TCP port on 127.0.0.1 that takes connections and never answers (a firewall that drops, a
    hung collector): the kernel completes the handshake into the listen backlog, nothing reads.
    `with Blackhole() as hole:` then point an exporter at `hole.endpoint`."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
