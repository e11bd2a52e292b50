"""Wrap functions in third-party modules when, and only when, those modules are imported.

Instrumenting must not import transformers or vLLM (seconds of import time) for an application
that never uses them; a wrapt post-import hook patches each module the moment it is imported, or
at once if it already was. A target that is missing (the library moved it) is logged once and
skipped: the library is left as it was.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import wrapt
from opentelemetry.instrumentation.utils import unwrap

logger = logging.getLogger(__name__)

_hooked_modules: set[str] = set()
_active: list["Patcher"] = []
_lock = threading.RLock()


@dataclass(frozen=True)
class Target:
    module: str
    name: str  # "Class.method" or "function"
    wrapper: Callable[..., Any]
    optional: bool = False  # absent in some supported versions: no warning


def _on_import(module: Any) -> None:
    with _lock:
        for patcher in list(_active):
            patcher._apply_module(module)


class Patcher:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._targets: list[Target] = []
        self._applied: list[tuple[Any, str]] = []
        self.missing: list[str] = []

    def add(self, module: str, name: str, wrapper: Callable[..., Any], *, optional: bool = False) -> None:
        self._targets.append(Target(module, name, wrapper, optional))

    def apply(self) -> None:
        with _lock:
            if self in _active:
                return
            _active.append(self)
            for module_name in {t.module for t in self._targets}:
                if module_name not in _hooked_modules:
                    _hooked_modules.add(module_name)
                    wrapt.register_post_import_hook(_on_import, module_name)
                elif module_name in sys.modules:
                    self._apply_module(sys.modules[module_name])

    def remove(self) -> None:
        with _lock:
            if self in _active:
                _active.remove(self)
            for parent, attr in reversed(self._applied):
                try:
                    unwrap(parent, attr)
                except Exception:
                    logger.debug("could not unwrap %s.%s", parent, attr, exc_info=True)
            self._applied.clear()

    def _apply_module(self, module: Any) -> None:
        for target in self._targets:
            if target.module != module.__name__:
                continue
            parent: Any = module
            *path, attr = target.name.split(".")
            try:
                for part in path:
                    parent = getattr(parent, part)
                original = getattr(parent, attr)
            except AttributeError:
                if not target.optional:
                    where = f"{target.module}.{target.name}"
                    self.missing.append(where)
                    logger.warning("%s: %s not found; it is left uninstrumented", self.owner, where)
                continue
            if isinstance(original, wrapt.FunctionWrapper) and any(
                p is parent and a == attr for p, a in self._applied
            ):
                continue  # already ours
            wrapt.wrap_function_wrapper(parent, attr, target.wrapper)
            self._applied.append((parent, attr))
