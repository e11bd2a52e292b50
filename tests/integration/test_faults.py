"""Faults against the zero-code vLLM server (the export process on, its outage buffer), as an
operator meets them: the collector absent at start, killed and restarted mid-load, blackholed; the
export process SIGKILLed holding a backlog; the server stopped by SIGTERM and by Ctrl-C (SIGINT to
its process group) right after its last answer; a trace file that becomes unwritable; a 401. Each asserts that serving answered every request
and that every request's span is delivered or counted (`traceai.telemetry.dropped`, as exported to
the collector): delivered + counted = finished. The 2,000-request runs are benchmarks/soak_faults.py."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from fi_evals_core.telemetry.losses import EXPORT_PROCESS_LOST
from fi_evals_core.testing.accounting import complete, counted, delivered
from fi_evals_core.testing.collector import RotelCollector
from fi_evals_core.testing.servers import Blackhole, wait_until
from fi_evals_core.testing.vllm_server import vllm_server

SERVICE = "fault-server"
EXPORT_CHILD = "export_process import child_main"
KEPT = "the collector did not take spans"  # the outage buffer's line when an outage begins


def _load(pool: ThreadPoolExecutor, base_url: str, numbers: range) -> list[str]:
    return list(pool.map(lambda i: complete(base_url, i), numbers))


def _delivered(collector) -> set[str]:
    return delivered(collector, SERVICE)


def _counted(collector) -> dict[str, int]:
    return counted(collector, SERVICE)


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"TRACEAI_VLLM_AUTO": "1", "OTEL_SERVICE_NAME": SERVICE, "OTEL_BSP_SCHEDULE_DELAY": "200",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_EXPORTER_OTLP_TIMEOUT": "2000", "HF_HUB_OFFLINE": "1",
                **overrides})
    return env


def _log_count(server, text: str) -> int:
    return server.log.read_text(errors="replace").count(text)


def _accounted(collector, answered: set[str], finished: int) -> tuple[int, dict[str, int]]:
    wait_until(lambda: len(_delivered(collector) & answered) + sum(_counted(collector).values()) >= finished, 90,
               "every request delivered or counted")
    return len(_delivered(collector) & answered), _counted(collector)


def test_a_collector_killed_mid_load_then_ctrl_c_loses_no_request_span(tmp_path, model_dirs):
    """The collector killed with requests coming and restarted on the same ports; the server then
    interrupted (SIGINT to its process group) right after its last answer, with spans still in the
    export process's buffer: all 40 delivered, none counted, and the server stops by itself. The
    server requires an API key: a request with a wrong one is refused (401), and neither key shows
    in anything the collector received. The export process, having exported real vLLM records,
    says at its stop that it imported none of torch, transformers, vllm."""
    import json
    import urllib.error

    import pytest

    from fi_evals_core.testing.vllm_server import CPU_ARGS

    key, wrong = "sk-fault-0123456789abcdef", "sk-wrong-fedcba9876543210"

    def load(pool, numbers):
        return list(pool.map(lambda i: complete(server.base_url, i, api_key=key), numbers))

    with RotelCollector(tmp_path / "rotel") as collector:
        with vllm_server(sys.executable, model_dirs["llama"], _env(**collector.otel_env("grpc")),
                         tmp_path / "server.log", args=(*CPU_ARGS, "--api-key", key)) as server:
            with ThreadPoolExecutor(4) as pool:
                first = load(pool, range(10))
                collector.kill()  # the collector goes down with requests still coming
                during = load(pool, range(10, 30))
                # the export process has tried the dead collector and kept the spans (its log says so)
                wait_until(lambda: _log_count(server, KEPT) >= 1, 60, "a failed export in the server's log")
                collector.restart()
                with pytest.raises(urllib.error.HTTPError) as refused:
                    complete(server.base_url, 99, api_key=wrong)
                assert refused.value.code == 401
                after = load(pool, range(30, 40))
            assert server.stop(signal.SIGINT) is not None  # Ctrl-C: it stopped on its own
        answered = set(first + during + after)
        assert len(answered) == 40  # serving answered every request
        delivered, counted = _accounted(collector, answered, 40)
        received = json.dumps([collector.spans(), collector.metrics()], default=str)
    # delivered + counted = finished; with the outage shorter than the buffer holds, nothing is lost
    assert delivered + sum(counted.values()) == 40
    assert delivered == 40 and not counted
    assert key not in received and wrong not in received
    log = server.log.read_text(errors="replace")
    assert "imported none of torch, transformers, vllm" in log and "not a plain built-in type" not in log


def test_collector_absent_at_start_and_an_export_process_sigkilled_holding_a_backlog(tmp_path, model_dirs):
    """No collector when the server starts (the spans wait, then go when it comes); later, in a
    second outage, the export process is SIGKILLed holding 10 spans: exactly those are counted
    (export_process_lost), the server exports in-process from then on, and a SIGTERM right after
    the last answer loses nothing more."""
    with RotelCollector(tmp_path / "rotel") as collector:
        collector.kill()  # absent at start: nothing listens on its ports
        with vllm_server(sys.executable, model_dirs["llama"], _env(**collector.otel_env("grpc")),
                         tmp_path / "server.log") as server:
            with ThreadPoolExecutor(4) as pool:
                absent = _load(pool, server.base_url, range(10))
                wait_until(lambda: _log_count(server, KEPT) >= 1, 60, "the first outage in the server's log")
                collector.restart()
                wait_until(lambda: len(_delivered(collector) & set(absent)) == 10, 90, "the kept spans delivered")
                collector.kill()
                held = _load(pool, server.base_url, range(10, 20))
                wait_until(lambda: _log_count(server, KEPT) >= 2, 60, "the second outage in the server's log")
                children = server.children(EXPORT_CHILD, recursive=False)  # the API server's own
                assert len(children) == 1, children
                os.kill(children[0], signal.SIGKILL)
                wait_until(lambda: "export process is gone" in server.log.read_text(errors="replace"), 30,
                           "the server noticing its export process is gone")
                collector.restart()
                after = _load(pool, server.base_url, range(20, 30))
            assert server.stop(signal.SIGTERM) is not None
        answered = set(absent + held + after)
        assert len(answered) == 30
        delivered, counted = _accounted(collector, answered, 30)
    assert delivered + sum(counted.values()) == 30
    assert counted == {EXPORT_PROCESS_LOST: 10}  # exactly what the killed process held
    assert _delivered(collector) & answered == set(absent + after)


def test_a_blackholed_collector_costs_a_bounded_stop_and_every_span_is_counted(tmp_path, model_dirs):
    """The traces endpoint takes connections and never answers (metrics go to a real collector):
    serving is unaffected, the server stops by itself on SIGTERM (the outage buffer makes at most
    one more attempt, bounded by OTEL_EXPORTER_OTLP_TIMEOUT), and every span is counted
    (collector_unreachable), none delivered."""
    with RotelCollector(tmp_path / "rotel") as collector, Blackhole() as hole:
        env = _env(**collector.otel_env("grpc"), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=hole.endpoint)
        with vllm_server(sys.executable, model_dirs["llama"], env, tmp_path / "server.log") as server:
            with ThreadPoolExecutor(4) as pool:
                answered = set(_load(pool, server.base_url, range(12)))
            wait_until(lambda: _log_count(server, KEPT) >= 1, 60, "the blackholed export in the server's log")
            assert server.stop(signal.SIGTERM) is not None
        assert len(answered) == 12
        delivered, counted = _accounted(collector, answered, 12)
    assert delivered == 0 and counted == {"collector_unreachable": 12}


def test_a_trace_file_that_becomes_unwritable_mid_load_counts_every_span_it_loses(tmp_path, model_dirs):
    """Spans to a JSONL file (metrics to the collector): the file is replaced by a directory while
    the server runs, and every write fails from then on. Serving is unaffected; the spans written
    before are in the file, every later one is counted (export_failed): delivered + counted =
    finished."""
    import json

    from fi_evals_core.telemetry.losses import EXPORT_FAILED

    traces = tmp_path / "spans.jsonl"

    def written() -> set[str]:
        if not traces.is_file():
            return set()
        return {json.loads(line)["attributes"].get("gen_ai.response.id") for line in traces.read_text().splitlines()
                if json.loads(line)["scope"]["name"] == "traceai_vllm"}

    with RotelCollector(tmp_path / "rotel") as collector:
        env = _env(OTEL_TRACES_EXPORTER="jsonl", TRACEAI_TRACES_FILE=str(traces),
                   OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=collector.grpc_endpoint, OTEL_EXPORTER_OTLP_INSECURE="true")
        with vllm_server(sys.executable, model_dirs["llama"], env, tmp_path / "server.log") as server:
            with ThreadPoolExecutor(4) as pool:
                before = _load(pool, server.base_url, range(10))
                wait_until(lambda: set(before) <= written(), 60, "the first spans in the file")
                traces.unlink()
                traces.mkdir()  # the destination is gone, a directory in its place
                after = _load(pool, server.base_url, range(10, 25))
            assert server.stop(signal.SIGTERM) is not None
        answered = set(before + after)
        assert len(answered) == 25
        wait_until(lambda: _counted(collector).get(EXPORT_FAILED, 0) >= 15, 60, "the failed writes counted")
        counted = _counted(collector)
    assert counted == {EXPORT_FAILED: 15}  # exactly the spans written after the file was gone
    assert "dropped: the exporter failed to deliver them" in server.log.read_text(errors="replace")
