"""Wrap functions in third-party modules when, and only when, those modules are imported.

Instrumenting must not import transformers or vLLM (seconds of import time) for an application
that never uses them; a wrapt post-import hook patches each module the moment it is imported, or
at once if it already was. A target that is missing (the library moved it) is logged once and
skipped: the library is left as it was.

Wrappers take wrapt's signature, `wrapper(wrapped, instance, args, kwargs)`. A plain synchronous
function (a method defined in its class, or a module function) is replaced by a plain function
that calls the wrapper: in a running vLLM engine wrapt's proxies (a bound proxy built on every
attribute access) cost measurably per request over its seven hooked calls, a plain function about
nothing (benchmarks/RESULTS.md). Everything else (async functions, generators, descriptors,
inherited attributes) is wrapped by wrapt.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
from dataclasses import dataclass
from types import MethodType
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
    provided: bool = False  # `wrapper` is a new attribute of `name`'s parent, set and later removed


def _on_import(module: Any) -> None:
    with _lock:
        for patcher in list(_active):
            patcher._apply_module(module)


class Patcher:
    """`strict_modules`: modules whose targets work only together (a request span started by one
    hook is ended by another): if any of them is missing, none in that module is wrapped."""

    def __init__(self, owner: str, strict_modules: set[str] | frozenset[str] = frozenset()) -> None:
        self.owner = owner
        self.strict_modules = frozenset(strict_modules)
        self._targets: list[Target] = []
        self._provided: list[tuple[Any, str]] = []
        self._applied: list[tuple[Any, str]] = []
        self.missing: list[str] = []

    def add(self, module: str, name: str, wrapper: Callable[..., Any], *, optional: bool = False) -> None:
        self._targets.append(Target(module, name, wrapper, optional))

    def provide(self, module: str, name: str, value: Any) -> None:
        """Give `module.name` (a class attribute the library lacks, such as a method other
        processes call by name) the value `value`, while applied; removed with the wrappers."""
        self._targets.append(Target(module, name, value, provided=True))

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
                    _unwrap(parent, attr)
                except Exception:
                    logger.debug("could not unwrap %s.%s", parent, attr, exc_info=True)
            self._applied.clear()
            for parent, attr in self._provided:
                with contextlib.suppress(AttributeError):
                    delattr(parent, attr)
            self._provided.clear()

    def _apply_module(self, module: Any) -> None:
        resolved = []
        missing = []
        for target in self._targets:
            if target.module != module.__name__:
                continue
            parent: Any = module
            *path, attr = target.name.split(".")
            try:
                for part in path:
                    parent = getattr(parent, part)
                if target.provided:
                    if not hasattr(parent, attr):
                        setattr(parent, attr, target.wrapper)
                        self._provided.append((parent, attr))
                    continue
                getattr(parent, attr)
            except AttributeError:
                if not target.optional:
                    missing.append(f"{target.module}.{target.name}")
                continue
            resolved.append((parent, attr, target))
        if missing:
            self.missing.extend(missing)
            strict = module.__name__ in self.strict_modules
            logger.warning(
                "%s: %s not found (this version of the library moved it); %s",
                self.owner, ", ".join(missing),
                f"{module.__name__} is left untouched" if strict else "it is left uninstrumented",
            )
            if strict:
                return
        for parent, attr, target in resolved:
            if any(p is parent and a == attr for p, a in self._applied):
                continue  # already ours
            _wrap(parent, attr, target.wrapper)
            self._applied.append((parent, attr))


_ORIGINAL = "__traceai_original__"  # on a plain wrapper: the function it replaced


def _wrap(parent: Any, attr: str, wrapper: Callable[..., Any]) -> None:
    original = vars(parent).get(attr)
    if not (inspect.isfunction(original) and not inspect.iscoroutinefunction(original)
            and not inspect.isgeneratorfunction(original) and not inspect.isasyncgenfunction(original)):
        wrapt.wrap_function_wrapper(parent, attr, wrapper)
        return
    if isinstance(parent, type):
        def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            return wrapper(MethodType(original, self), self, args, kwargs)
    else:
        def patched(*args: Any, **kwargs: Any) -> Any:
            return wrapper(original, None, args, kwargs)
    functools.update_wrapper(patched, original)  # name, docstring, __wrapped__ (signature)
    setattr(patched, _ORIGINAL, original)
    setattr(parent, attr, patched)


def is_patched(parent: Any, attr: str) -> bool:
    """Whether `parent.attr` is one of the wrappers above (plain or wrapt)."""
    current = vars(parent).get(attr)
    return hasattr(current, _ORIGINAL) or isinstance(current, wrapt.FunctionWrapper)


def _unwrap(parent: Any, attr: str) -> None:
    current = vars(parent).get(attr)
    original = getattr(current, _ORIGINAL, None)
    if original is not None:
        setattr(parent, attr, original)
    else:
        unwrap(parent, attr)
