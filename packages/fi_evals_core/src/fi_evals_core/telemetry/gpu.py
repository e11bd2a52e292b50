"""GPU memory for a request, read without synchronising the device.

Two sources: the torch caching allocator (allocated / reserved / peak; host-side counters, no
device sync) and NVML (device-wide used / total, as `nvidia-smi` shows). NVML calls take tens of
microseconds and can block on a busy driver, so a daemon thread refreshes them into a cache and
the request path only reads the cache.

Allocator health, for the OOM story: reserved minus allocated (memory the caching allocator holds
but no tensor uses: fragmentation), its cumulative `num_alloc_retries` and `num_ooms` counters
(`torch.cuda.memory_stats`, host-side) and `PYTORCH_CUDA_ALLOC_CONF`, on every request span on a
CUDA device (an out-of-memory failure included: its span ends with `error.type` and these figures
at that moment) and as gauges per device.

`GpuMemorySource` is the seam: tests inject a fake source; production uses `TorchNvmlSource`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from . import attributes as A

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceMemory:
    name: str
    used: int
    total: int


class GpuMemorySource(Protocol):
    """Where GPU memory numbers come from (one CUDA device index at a time)."""

    def allocated(self, index: int) -> int: ...
    def reserved(self, index: int) -> int: ...
    def peak(self, index: int) -> int: ...
    def reset_peak(self, index: int) -> None: ...
    def device_memory(self, index: int) -> DeviceMemory | None: ...
    def allocator_counters(self, index: int) -> dict[str, int]: ...


def alloc_conf() -> str | None:
    """The caching allocator's configuration as this process was started with it."""
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF") or None


class TorchNvmlSource:
    """torch.cuda allocator counters plus an NVML reading refreshed off the request path."""

    def __init__(self, poll_interval_s: float = 1.0) -> None:
        self._poll_interval_s = poll_interval_s
        self._cache: dict[int, DeviceMemory] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._nvml_failed = False

    def allocated(self, index: int) -> int:
        import torch

        return int(torch.cuda.memory_allocated(index))

    def reserved(self, index: int) -> int:
        import torch

        return int(torch.cuda.memory_reserved(index))

    def peak(self, index: int) -> int:
        import torch

        return int(torch.cuda.max_memory_allocated(index))

    def reset_peak(self, index: int) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(index)

    def allocator_counters(self, index: int) -> dict[str, int]:
        import torch

        # the allocator's host-side counters (no device sync), unflattened: these two are top-level
        stats = torch.cuda.memory_stats_as_nested_dict(index)
        return {"num_alloc_retries": int(stats.get("num_alloc_retries", 0)), "num_ooms": int(stats.get("num_ooms", 0))}

    def device_memory(self, index: int) -> DeviceMemory | None:
        if self._thread is None and not self._nvml_failed:
            self._start_poller()
        return self._cache.get(index)

    def _start_poller(self) -> None:
        with self._lock:
            if self._thread is not None or self._nvml_failed:
                return
            try:
                import pynvml

                pynvml.nvmlInit()
            except Exception as exc:  # no nvidia-ml-py, no driver, no GPU: no NVML attributes
                logger.debug("NVML unavailable, GPU device memory not recorded: %s", exc)
                self._nvml_failed = True
                return
            self._thread = threading.Thread(
                target=self._poll, args=(pynvml,), name="traceai-nvml-poller", daemon=True
            )
            self._thread.start()

    def _poll(self, pynvml) -> None:  # pragma: no cover - needs a GPU
        handles = None
        while True:
            try:
                if handles is None:
                    import torch

                    handles = nvml_handles(pynvml, [str(torch.cuda.get_device_properties(i).uuid)
                                                    for i in range(torch.cuda.device_count())])
                for index, handle in handles.items():
                    info = pynvml.nvmlDeviceGetMemoryInfo(handle)
                    name = pynvml.nvmlDeviceGetName(handle)
                    if isinstance(name, bytes):
                        name = name.decode()
                    self._cache[index] = DeviceMemory(name=name, used=int(info.used), total=int(info.total))
            except Exception as exc:
                logger.debug("NVML read failed: %s", exc)
            time.sleep(self._poll_interval_s)


def nvml_handles(pynvml: Any, torch_uuids: list[str]) -> dict[int, Any]:
    """torch device index -> NVML handle of the same device, matched by UUID: torch's indices follow
    CUDA_VISIBLE_DEVICES and CUDA's device order, NVML's the PCI bus, and a MIG instance is not its
    card. A device NVML cannot match is left out (logged once), never read under another's index."""
    handles = {}
    for index, uuid in enumerate(torch_uuids):
        for prefix in ("", "GPU-", "MIG-"):  # torch prints the bare UUID; NVML names its kind
            try:
                handles[index] = pynvml.nvmlDeviceGetHandleByUUID(prefix + uuid)
                break
            except Exception:  # noqa: BLE001 - NVML_ERROR_NOT_FOUND for the wrong prefix
                continue
        else:
            logger.info("traceai: NVML has no device with torch's cuda:%d UUID %s; its gpu.memory.* and "
                        "gpu.name are not recorded", index, uuid)
    return handles


class GpuMonitor:
    """Per-request GPU memory attributes for requests that run on a CUDA device.

    The request's peak comes from the allocator's peak counter, reset when a request starts on an
    idle device; with overlapping requests on one device it is the peak of the whole busy period,
    an upper bound of each request's own peak.
    """

    def __init__(self, source: GpuMemorySource) -> None:
        self.source = source
        self.alloc_conf = alloc_conf()  # fixed when the process started: read once, not per request
        self._in_flight: dict[int, int] = {}
        self._lock = threading.Lock()

    def begin(self, index: int) -> None:
        try:
            with self._lock:
                busy = self._in_flight.get(index, 0)
                self._in_flight[index] = busy + 1
                if busy == 0:
                    self.source.reset_peak(index)
        except Exception as exc:
            logger.debug("GPU peak reset failed: %s", exc)

    def end(self, index: int) -> dict[str, object]:
        with self._lock:
            self._in_flight[index] = max(0, self._in_flight.get(index, 1) - 1)
        attrs: dict[str, object] = {A.GPU_INDEX: index}
        try:
            allocated = attrs[A.GPU_TORCH_ALLOCATED] = self.source.allocated(index)
            reserved = attrs[A.GPU_TORCH_RESERVED] = self.source.reserved(index)
            attrs[A.GPU_TORCH_FRAGMENTATION] = max(0, reserved - allocated)
            attrs[A.GPU_TORCH_PEAK] = self.source.peak(index)
            counters = self.source.allocator_counters(index)
            attrs[A.GPU_TORCH_ALLOC_RETRIES] = counters["num_alloc_retries"]
            attrs[A.GPU_TORCH_OOMS] = counters["num_ooms"]
        except Exception as exc:
            logger.debug("torch GPU memory read failed: %s", exc)
        if self.alloc_conf:
            attrs[A.GPU_TORCH_ALLOC_CONF] = self.alloc_conf
        try:
            device = self.source.device_memory(index)
        except Exception as exc:
            logger.debug("device memory read failed: %s", exc)
            device = None
        if device is not None:
            attrs[A.GPU_NAME] = device.name
            attrs[A.GPU_MEMORY_USED] = device.used
            attrs[A.GPU_MEMORY_TOTAL] = device.total
        return attrs


def register_gpu_memory_gauges(meter: Any, source: GpuMemorySource | None = None,
                               device_count: int | None = None) -> bool:
    """Observable gauges of the torch allocator per CUDA device (`gpu.index`), read when metrics
    are collected, never on a request path. For processes that hold a model but serve no request
    spans (vLLM's EngineCore and workers). Returns False (and registers nothing) without a GPU."""
    if device_count is None:
        try:
            import torch

            device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            device_count = 0
    if not device_count:
        return False
    source = source or TorchNvmlSource()
    indices = range(device_count)

    def reader(read: Any) -> Any:
        def callback(options: Any) -> list:
            from opentelemetry.metrics import Observation

            out = []
            for index in indices:
                try:
                    out.append(Observation(read(index), {A.GPU_INDEX: index}))
                except Exception:
                    logger.debug("GPU memory gauge read failed", exc_info=True)
            return out

        return callback

    meter.create_observable_gauge(A.GPU_TORCH_ALLOCATED, [reader(source.allocated)], unit="By",
                                  description="Memory held by tensors (torch caching allocator)")
    meter.create_observable_gauge(A.GPU_TORCH_RESERVED, [reader(source.reserved)], unit="By",
                                  description="Memory reserved by the torch caching allocator")
    meter.create_observable_gauge(A.GPU_TORCH_FRAGMENTATION,
                                  [reader(lambda i: max(0, source.reserved(i) - source.allocated(i)))], unit="By",
                                  description="Reserved by the caching allocator but held by no tensor")
    meter.create_observable_gauge(A.GPU_TORCH_ALLOC_RETRIES,
                                  [reader(lambda i: source.allocator_counters(i)["num_alloc_retries"])],
                                  description="cudaMalloc calls that failed and were retried after freeing the cache")
    meter.create_observable_gauge(A.GPU_TORCH_OOMS, [reader(lambda i: source.allocator_counters(i)["num_ooms"])],
                                  description="Out-of-memory errors raised by the caching allocator")
    return True
