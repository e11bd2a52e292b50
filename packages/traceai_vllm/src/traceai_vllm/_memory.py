"""Engine memory, as the processes that hold the model know it.

In vLLM's default deployment the front-end (API server, `LLM`'s process) holds no GPU: the model's
weights, its KV cache, the activation peak vLLM profiled and its CUDA graphs live in the worker
processes. The front-end asks each worker once, through vLLM's own `collective_rpc`, by the name of
a method the plugin gives every worker (`WorkerBase.traceai_engine_memory`): one report per rank.
The totals become attributes of every request span of that engine (computed once), and each rank's
figures observable gauges (`vllm.rank`, `gpu.index`), read at metric collection time.

What each figure is, on any device:
- weights: bytes of the model's parameter and buffer storage on this rank (tied weights once), as
  loaded and processed; a weight that processing moved out of its parameter (the CPU backend repacks
  linear layers into oneDNN handles and empties the parameter) counts at its loaded size;
- KV cache: bytes of the KV-cache tensors' storage on this rank (the whole cache, not what is used);
- activation peak: vLLM's profiled transient peak (CUDA, and only when vLLM profiles: not with
  `kv_cache_memory_bytes`);
- CUDA graphs: what `capture_model` reports it took (CUDA, CUDA graphs on).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import weakref
from typing import Any

from fi_evals_core.telemetry import attributes as A

logger = logging.getLogger(__name__)

WORKER_METHOD = "traceai_engine_memory"
_CUDA_GRAPH_BYTES = "_traceai_cuda_graph_bytes"  # set on the model runner by capture_model_wrapper
_WEIGHT_BYTES = "_traceai_weight_bytes"  # set on the model by process_weights_wrapper

#: report key -> span attribute and gauge name (totals over ranks on spans; per rank as gauges)
FIGURES = {
    "weights": A.VLLM_ENGINE_MEMORY_WEIGHTS,
    "kv_cache": A.VLLM_KV_CAPACITY_BYTES,
    "activation_peak": A.VLLM_ENGINE_MEMORY_ACTIVATION_PEAK,
    "cuda_graphs": A.VLLM_ENGINE_MEMORY_CUDA_GRAPHS,
}
_DESCRIPTIONS = {
    "weights": "Bytes of the model's parameters and buffers on this rank",
    "kv_cache": "Bytes of the KV-cache tensors on this rank",
    "activation_peak": "vLLM's profiled activation peak on this rank",
    "cuda_graphs": "Memory vLLM's CUDA graph capture took on this rank",
}


# -- in the worker ----------------------------------------------------------------------------
def _storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied weights counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _tensors(value: Any) -> Any:
    """The tensors in a KV-cache structure (a list per layer of tensors, or of tuples of them)."""
    if hasattr(value, "untyped_storage"):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def worker_engine_memory(worker: Any) -> dict[str, Any]:
    """This rank's memory figures. Runs in a worker process, called by `collective_rpc` through the
    method the instrumentor gives `WorkerBase` (once per engine, never per request)."""
    runner = worker.model_runner
    device = getattr(worker, "device", None)
    report: dict[str, Any] = {"rank": int(getattr(worker, "rank", 0) or 0),
                              "device": getattr(device, "type", None) or str(device)}
    if getattr(device, "type", None) == "cuda" and device.index is not None:
        report["gpu_index"] = int(device.index)
    model = runner.get_model()
    weights = getattr(model, _WEIGHT_BYTES, None)
    report["weights"] = weights if weights is not None else \
        _storage_bytes([*model.parameters(), *model.buffers()])
    kv_caches = getattr(runner, "kv_caches", None)
    if kv_caches:
        report["kv_cache"] = _storage_bytes(_tensors(kv_caches))
    peak = getattr(worker, "peak_activation_memory", None)
    if peak is not None:
        report["activation_peak"] = int(peak)
    graphs = getattr(runner, _CUDA_GRAPH_BYTES, None)
    if graphs is not None:
        report["cuda_graphs"] = int(graphs)
    return report


def process_weights_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """The model loader's `process_weights_after_loading(model, ...)`: the weights' bytes once
    processed, with those it moved out of reach (emptied parameters) at their loaded size."""
    model = args[0] if args else kwargs.get("model")
    loaded = None
    try:
        loaded = {name: p.untyped_storage().nbytes() for name, p in model.named_parameters()}
    except Exception:  # noqa: BLE001
        logger.debug("could not size the loaded weights", exc_info=True)
    result = wrapped(*args, **kwargs)
    if loaded is not None:
        try:
            params = dict(model.named_parameters())
            moved = sum(size for name, size in loaded.items()
                        if size and (name not in params or params[name].numel() == 0))
            setattr(model, _WEIGHT_BYTES, _storage_bytes([*params.values(), *model.buffers()]) + moved)
        except Exception:  # noqa: BLE001
            logger.debug("could not size the processed weights", exc_info=True)
    return result


def capture_model_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """GPUModelRunner.capture_model (vLLM's V1 and V2 model runners) returns the bytes its CUDA graphs
    took: keep them for the report. V2's profiling pass (`profile_only=True`) captures nothing kept."""
    result = wrapped(*args, **kwargs)
    if isinstance(result, int) and not kwargs.get("profile_only"):
        setattr(instance, _CUDA_GRAPH_BYTES, result)
    return result


# -- in the front-end ---------------------------------------------------------------------------
def span_attributes(reports: list[dict[str, Any]]) -> dict[str, int]:
    """Totals over the engine's ranks, for the figures every rank reported."""
    totals: dict[str, int] = {}
    for key, name in FIGURES.items():
        values = [r[key] for r in reports if isinstance(r, dict) and key in r]
        if values and len(values) == len(reports):
            totals[name] = int(sum(values))
    return totals


class EngineMemoryGauges:
    """One observable gauge per figure, in this process, over every engine that reported."""

    def __init__(self, meter: Any) -> None:
        self._engines: "weakref.WeakKeyDictionary[Any, tuple[str, list[dict[str, Any]]]]" = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        for key, name in FIGURES.items():
            meter.create_observable_gauge(name, [self._reader(key)], unit="By", description=_DESCRIPTIONS[key])

    def add(self, engine_info: Any, model: str, reports: list[dict[str, Any]]) -> None:
        with self._lock:
            self._engines[engine_info] = (model, reports)

    def _reader(self, key: str) -> Any:
        def callback(options: Any) -> list:
            from opentelemetry.metrics import Observation

            with self._lock:
                engines = list(self._engines.values())
            out = []
            for model, reports in engines:
                for report in reports:
                    if key in report:
                        attributes = {A.REQUEST_MODEL: model, A.VLLM_RANK: report["rank"]}
                        if "gpu_index" in report:
                            attributes[A.GPU_INDEX] = report["gpu_index"]
                        out.append(Observation(report[key], attributes))
            return out

        return callback


RPC_TIMEOUT_S = 60.0
_gauges: "weakref.WeakKeyDictionary[Any, EngineMemoryGauges]" = weakref.WeakKeyDictionary()
_gauges_lock = threading.Lock()


def gauges_for(meter: Any) -> EngineMemoryGauges:
    """One set of gauges per meter, made when its first engine reports: instrumenting again (or a
    process that holds no engine) adds no instruments and no callbacks."""
    with _gauges_lock:
        gauges = _gauges.get(meter)
        if gauges is None:
            gauges = _gauges[meter] = EngineMemoryGauges(meter)
        return gauges


class EngineMemoryReader:
    """Asks each engine's workers for their memory once, and keeps the answers on its EngineInfo
    (span attributes) and in the gauges."""

    def __init__(self, meter: Any | None) -> None:
        self._meter = meter
        self._tasks: set = set()
        self._reported_missing = False

    def ask(self, engine: Any, info: Any) -> None:
        """A synchronous engine now (its construction); an AsyncLLM in its event loop: now when one
        runs, else at its first request (`info.memory_asked` stays False until then)."""
        rpc = getattr(engine, "collective_rpc", None)
        if rpc is None:
            info.memory_asked = True
            return
        if inspect.iscoroutinefunction(rpc):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            info.memory_asked = True
            task = loop.create_task(self._ask_async(rpc, info))
            self._tasks.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)
            return
        info.memory_asked = True
        try:
            reports = rpc(WORKER_METHOD, timeout=RPC_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - never into the user's code
            self._failed(exc)
        else:
            self._apply(info, reports)

    async def _ask_async(self, rpc: Any, info: Any) -> None:
        try:
            reports = await rpc(WORKER_METHOD, timeout=RPC_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        else:
            self._apply(info, reports)

    def _apply(self, info: Any, reports: Any) -> None:
        try:
            reports = [r for r in reports if isinstance(r, dict)]
            # a new dict, not an update: finished requests still being emitted hold the old one
            info.framework = {**info.framework, **span_attributes(reports)}
            if self._meter is not None:
                gauges_for(self._meter).add(info, info.model, reports)
        except Exception:  # noqa: BLE001
            logger.debug("could not read the vLLM workers' memory reports", exc_info=True)

    def _failed(self, exc: BaseException) -> None:
        if self._reported_missing:
            return
        self._reported_missing = True
        if isinstance(exc, NotImplementedError) or WORKER_METHOD in str(exc):
            logger.info("traceai: the vLLM engine's workers are not instrumented, so request spans carry no "
                        "engine memory (weights, KV cache); register() or TRACEAI_VLLM_AUTO=1 before the "
                        "engine starts instruments them")
        else:
            logger.warning("traceai: could not read the vLLM engine's memory from its workers: %s", exc)
