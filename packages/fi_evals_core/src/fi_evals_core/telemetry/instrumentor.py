"""The shape both instrumentors share: an OpenTelemetry `BaseInstrumentor` that holds one
`TelemetryRuntime` and wraps library functions through a `Patcher` (lazily, on import)."""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from .patching import Patcher
from .runtime import TelemetryRuntime
from .worker import drain


class PatchingInstrumentor(BaseInstrumentor):
    """Subclasses name their scope and list their wrap targets in `add_targets`."""

    scope_name: str = ""
    scope_version: str = ""
    owner: str = ""
    strict_modules: frozenset[str] = frozenset()

    def add_targets(self, patcher: Patcher, runtime: TelemetryRuntime) -> None:
        raise NotImplementedError

    def _instrument(self, **kwargs: Any) -> None:
        self.runtime = TelemetryRuntime(
            self.scope_name,
            self.scope_version,
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            config=kwargs.get("config"),
        )
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
