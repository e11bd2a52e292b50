"""Memory of the outage buffer (fi_evals_core.telemetry.outage) while the collector is down: a fresh
process per run registers telemetry against a port where nothing listens, ends N request-like spans
(the attributes a vLLM request span carries), flushes (the buffer keeps what the collector did not
take), and reports its RSS growth, how many spans are kept and how many were counted as dropped
(`buffer_full`). Past `TRACEAI_EXPORT_BUFFER_SPANS` the memory must stop growing: the ratio of the
largest run's growth to the bound's run is printed last.

    .venv/bin/python benchmarks/outage_memory.py [--buffer 10000] [--spans 2500,5000,10000,20000,40000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def one_run(spans: int, buffer: int) -> dict:
    import os

    import psutil

    from fi_evals_core import register
    from fi_evals_core.telemetry import TelemetryConfig
    from fi_evals_core.telemetry.losses import BUFFER_FULL, losses
    from fi_evals_core.telemetry.outage import OutageBuffer
    from fi_evals_core.testing.servers import free_port

    config = TelemetryConfig.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500", "TRACEAI_EXPORT_BUFFER_SPANS": str(buffer),
        "OTEL_BSP_MAX_QUEUE_SIZE": "100000"})
    telemetry = register(config=config, set_global=False, instrument=False)
    tracer = telemetry.tracer_provider.get_tracer("traceai_vllm")
    process = psutil.Process(os.getpid())
    tracer.start_span("warm-up").end()
    telemetry.tracer_provider.force_flush()
    before = process.memory_info().rss
    for i in range(spans):
        span = tracer.start_span("text_completion tiny-llama", attributes={
            "gen_ai.operation.name": "text_completion", "gen_ai.system": "vllm", "gen_ai.request.model": "tiny-llama",
            "gen_ai.response.model": "tiny-llama", "gen_ai.response.id": f"cmpl-{i:032x}",
            "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 4, "gen_ai.request.max_tokens": 4,
            "gen_ai.request.temperature": 0.0, "gen_ai.response.finish_reasons": ("length",),
            "vllm.request.queue_time": 0.0012, "vllm.request.prefill_time": 0.0041, "vllm.request.decode_time": 0.012,
            "gen_ai.server.time_to_first_token": 0.0053, "gen_ai.server.time_per_output_token": 0.004,
            "model.framework": "pytorch", "model.framework.version": "2.13.0", "vllm.version": "0.32.0",
            "model.dtype": "float32", "server.address": "127.0.0.1", "server.port": 8000})
        span.end()
    telemetry.tracer_provider.force_flush()  # the collector is not there: kept, or counted past the bound
    exporter = next(p.exporter for p in telemetry.tracer_provider._active_span_processor._span_processors
                    if isinstance(getattr(p, "exporter", None), OutageBuffer))
    after = process.memory_info().rss
    result = {"spans": spans, "kept": exporter.buffered, "buffer_full": losses.counts().get(BUFFER_FULL, 0),
              "rss_growth_mib": (after - before) / 2**20}
    os._exit(print(json.dumps(result), flush=True) or 0)  # no shutdown: it would count the kept spans again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buffer", type=int, default=10_000, help="TRACEAI_EXPORT_BUFFER_SPANS")
    parser.add_argument("--spans", default="2500,5000,10000,20000,40000", help="comma-separated span counts")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a worker run
    args = parser.parse_args()
    if args.one is not None:
        one_run(args.one, args.buffer)
        return 0
    rows = []
    for spans in [int(n) for n in args.spans.split(",")]:
        done = subprocess.run([sys.executable, __file__, "--one", str(spans), "--buffer", str(args.buffer)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"TRACEAI_EXPORT_BUFFER_SPANS={args.buffer}, the collector down (nothing listens), one process per run")
    print("| spans ended | kept | counted buffer_full | kept + counted | RSS growth MiB | per kept span KiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        per = r["rss_growth_mib"] * 1024 / r["kept"] if r["kept"] else float("nan")
        print(f"| {r['spans']} | {r['kept']} | {r['buffer_full']} | {r['kept'] + r['buffer_full']} "
              f"| {r['rss_growth_mib']:.1f} | {per:.2f} |")
    at_bound = next((r for r in rows if r["spans"] >= args.buffer), rows[-1])
    print(f"RSS growth at {rows[-1]['spans']} spans / at {at_bound['spans']}: "
          f"{rows[-1]['rss_growth_mib'] / at_bound['rss_growth_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
