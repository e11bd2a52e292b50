"""What the side-by-side benchmarks share: one worker process per variant, driven over pipes with
one JSON message a line, and the small statistics they report (medians, quartiles)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """A benchmark worker: `cmd` runs the script in worker mode; stderr goes to `log_path`."""

    def __init__(self, variant: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.variant = variant
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1, env=env, cwd=str(REPO_ROOT))
        self.info: dict[str, Any] = {}

    def request(self, obj: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if obj is not None:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.variant} died; log tail:\n{self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.variant}: {reply['error']}; log tail:\n{self.log_tail()}")
        return reply

    def log_tail(self, n: int = 25) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.request({"cmd": "quit"})
                self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a dead worker is closed all the same
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()


def worker_pipe() -> Any:
    """In a worker: the pipe protocol owns the real stdout (one JSON object a line); everything
    else that prints goes to stderr (the worker's log). Returns `send(obj)`; `send.flush()` too."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")

    send.flush = proto.flush  # type: ignore[attr-defined]
    return send


def round_order(variants: list[str], r: int) -> list[str]:
    """The order the workers run in round `r`: rotated every round, reversed every other one."""
    k = r % len(variants)
    order = variants[k:] + variants[:k]
    if r % 2:
        order.reverse()
    return order


def has_module(python: str, module: str, env: dict[str, str]) -> bool:
    """Whether `python` can import `module` (checked without importing it)."""
    probe = f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module.split('.')[0]!r}) and " \
            f"importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([python, "-c", probe], env=env, capture_output=True).returncode == 0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)  # NaN -> "-"
