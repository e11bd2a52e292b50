"""The shape both instrumentors share: an OpenTelemetry `BaseInstrumentor` that holds one
`TelemetryRuntime` and wraps library functions through a `Patcher` (lazily, on import)."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from .patching import Patcher
from .runtime import TelemetryRuntime
from .worker import drain, hook_flushes


class PatchingInstrumentor(BaseInstrumentor):
    """Subclasses name their scope and list their wrap targets in `add_targets`."""

    scope_name: str = ""
    scope_version: str = ""
    owner: str = ""
    strict_modules: frozenset[str] = frozenset()

    def add_targets(self, patcher: Patcher, runtime: TelemetryRuntime) -> None:
        raise NotImplementedError

    def _instrument(self, **kwargs: Any) -> None:
        """`tracer_provider`, `meter_provider` (None: the global ones), `config`, and from
        `register()` the `telemetry_sink` its finished requests go to (otherwise this process's
        telemetry worker emits them on the providers)."""
        sink = kwargs.get("telemetry_sink")
        self.runtime = TelemetryRuntime(
            self.scope_name,
            self.scope_version,
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            config=kwargs.get("config"),
            sink=sink,
        )
        if sink is None:  # providers register() did not build: their flushes emit what has ended first
            hook_flushes(kwargs.get("tracer_provider") or trace.get_tracer_provider())
            hook_flushes(kwargs.get("meter_provider") or metrics.get_meter_provider())
        patcher = Patcher(self.owner, self.strict_modules)
        self.add_targets(patcher, self.runtime)
        patcher.apply()
        self._patcher = patcher

    def _uninstrument(self, **kwargs: Any) -> None:
        patcher = getattr(self, "_patcher", None)
        if patcher is not None:
            patcher.remove()
            self._patcher = None
        drain()  # finish the spans of calls that already returned
