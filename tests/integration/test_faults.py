"""Faults against the zero-code vLLM server (the export process on, its outage buffer): the
collector killed mid-load and restarted on the same ports. Serving answers every request, and every
request's span is delivered or counted (`traceai.telemetry.dropped`): delivered + counted = finished.
The 2,000-request run is not here (CI time); this is its shape at CI size."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from fi_evals_core.telemetry.losses import DROPPED_COUNTER
from fi_evals_core.testing.collector import RotelCollector
from fi_evals_core.testing.servers import wait_until
from fi_evals_core.testing.vllm_server import vllm_server

SERVICE = "fault-server"
REQUESTS = 40


def _complete(base_url: str, i: int) -> str:
    body = json.dumps({"model": "tiny-llama", "prompt": f"Request number {i}", "max_tokens": 4}).encode()
    request = urllib.request.Request(f"{base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["id"]


def _delivered(collector) -> set[str]:
    return {s["attributes"]["gen_ai.response.id"] for s in collector.spans()
            if s["resource_attributes"].get("service.name") == SERVICE and s["scope_name"] == "traceai_vllm"}


def _counted(collector) -> int:
    """The export processes' dropped counters, as last exported (cumulative), summed over reasons."""
    latest: dict[tuple, float] = {}
    for metric in collector.metrics():
        if metric["name"] != DROPPED_COUNTER or metric["resource_attributes"].get("service.name") != SERVICE:
            continue
        for point in metric["data_points"]:
            key = (metric["resource_attributes"].get("service.instance.id"), point["attributes"].get("reason"))
            latest[key] = point["value"]
    return int(sum(latest.values()))


def test_a_collector_killed_mid_load_loses_no_request_span(tmp_path, model_dirs):
    with RotelCollector(tmp_path / "rotel") as collector:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
        env.update({**collector.otel_env("grpc"), "TRACEAI_VLLM_AUTO": "1", "OTEL_SERVICE_NAME": SERVICE,
                    "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                    "OTEL_EXPORTER_OTLP_TIMEOUT": "2000", "HF_HUB_OFFLINE": "1"})
        with vllm_server(sys.executable, model_dirs["llama"], env, tmp_path / "server.log") as server:
            with ThreadPoolExecutor(4) as pool:
                first = list(pool.map(lambda i: _complete(server.base_url, i), range(10)))
                collector.kill()  # the collector goes down with requests still coming
                during = list(pool.map(lambda i: _complete(server.base_url, i), range(10, 30)))
                # the export process has tried the dead collector and kept the spans (its log says so)
                wait_until(lambda: "the collector did not take spans" in server.log.read_text(errors="replace"),
                           60, "a failed export in the server's log")
                collector.restart()
                after = list(pool.map(lambda i: _complete(server.base_url, i), range(30, REQUESTS)))
            answered = set(first + during + after)
            assert len(answered) == REQUESTS  # serving answered every request
            # the buffer's next try comes after its pause (1 s, doubling)
            wait_until(lambda: len(_delivered(collector) & answered) + _counted(collector) >= REQUESTS, 90,
                       "every request delivered or counted")
    delivered = _delivered(collector) & answered
    # delivered + counted = finished; with the outage shorter than the buffer holds, nothing is lost
    assert len(delivered) + _counted(collector) == REQUESTS
    assert len(delivered) == REQUESTS and _counted(collector) == 0
