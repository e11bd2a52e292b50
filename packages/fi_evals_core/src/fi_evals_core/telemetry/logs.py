"""traceai's own log lines reach the operator.

Python prints a library's warnings only through the root logger's handlers, or, when there are
none, through its last-resort handler (WARNING and above). Servers change that under us: vLLM's
API server imports a package that raises the root logger's level to ERROR, and then "the export
process is gone" or "N spans dropped" are never seen. `make_visible()` (called by `register()` and
by the export process) gives traceai's loggers a level of their own, `TRACEAI_LOG_LEVEL` (default
INFO: one line at start-up, then warnings only), and a stderr handler that writes only while the
application has configured no handler on the root logger: once it has, traceai's records go
where the application's go, and nothing is printed twice. Silence it with
`TRACEAI_LOG_LEVEL=WARNING` (or ERROR), or `logging.getLogger("fi_evals_core").setLevel(...)`.
"""

from __future__ import annotations

import logging
import sys
from typing import Mapping

from .config import EnvReader

LOGGERS = ("fi_evals_core", "traceai_vllm", "traceai_huggingface")
LEVELS = ("debug", "info", "warning", "error", "critical")


class _StderrUnlessConfigured(logging.StreamHandler):
    """stderr, while the root logger has no handler (the application configured no logging)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def make_visible(environ: Mapping[str, str] | None = None) -> None:
    """Give traceai's loggers their level (unless the application set one) and the fallback
    handler; idempotent."""
    level = getattr(logging, EnvReader(environ).choice("TRACEAI_LOG_LEVEL", LEVELS, "info").upper())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or getattr(logger, "_traceai_level", None) == logger.level:
            logger.setLevel(level)
            logger._traceai_level = level  # type: ignore[attr-defined]  # ours to change again
        if not any(isinstance(h, _StderrUnlessConfigured) for h in logger.handlers):
            logger.addHandler(_StderrUnlessConfigured())

