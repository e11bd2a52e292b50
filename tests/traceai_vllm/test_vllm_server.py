"""Zero code, real server: vLLM's OpenAI server in its default multi-process mode, traceai enabled
only by `TRACEAI_VLLM_AUTO=1` (the `vllm.general_plugins` entry point), spans to a real collector.

The client is an instrumented `InferenceClient` in this process: its span and the server's request
span must share one trace, with the server span's parent the client span.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request

import pytest

from fi_evals_core.telemetry import attributes as A
from fi_evals_core.testing.servers import wait_until
from fi_evals_core.testing.vllm_server import CPU_ARGS
from fi_evals_core.testing.vllm_server import vllm_server as running_vllm_server
from fi_evals_core.testing.genai_messages import check_messages
from tests.traceai_vllm.conftest import LORA_NAME

@pytest.fixture(scope="module")
def vllm_server(model_dirs, collector, tmp_path_factory, llama_lora):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({
        "TRACEAI_VLLM_AUTO": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        # named only here: the plugin's default name ("vllm") must not override it
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=vllm-server-under-test,deployment.environment=test",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "HF_HUB_OFFLINE": "1",
    })
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    # serving a LoRA adapter too, under its own model name (test_a_served_adapter_...)
    args = (*CPU_ARGS, "--enable-lora", "--lora-modules", f"{LORA_NAME}={llama_lora}")
    with running_vllm_server(sys.executable, model_dirs["llama"], env, log, args=args,
                             module="vllm.entrypoints.launchers.api_server.entry") as server:
        _server_group[:] = [server.process.pid]  # its own session: the group of every process it starts
        _server_log[:] = [str(log)]
        yield server.base_url


_server_group: list[int] = []
_server_log: list[str] = []
_chats_sent: list[str] = []  # chat requests the tests made, for the histogram count


#: vLLM's own Prometheus histograms of the request breakdown (GET /metrics), by the span attribute that
#: must carry the same figure
VLLM_HISTOGRAMS = {
    A.VLLM_QUEUE_TIME: "vllm:request_queue_time_seconds",
    A.VLLM_PREFILL_TIME: "vllm:request_prefill_time_seconds",
    A.VLLM_DECODE_TIME: "vllm:request_decode_time_seconds",
    A.RESPONSE_TIME_TO_FIRST_CHUNK: "vllm:time_to_first_token_seconds",
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def _vllm_histograms(base_url: str) -> dict[str, float]:
    """`<histogram>_sum` and `<histogram>_count` of VLLM_HISTOGRAMS, summed over their label sets."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {f"{h}{suffix}" for h in VLLM_HISTOGRAMS.values() for suffix in ("_sum", "_count")}
    values = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in wanted:
            values[match.group(1)] += float(match.group(3))
    return values


def _vllm_histograms_after(base_url: str, before: dict[str, float], requests: int) -> dict[str, float]:
    """vLLM's histograms once it has recorded `requests` more requests than in `before` (its stat
    logger records after the response may have left: a bounded poll of the server's endpoint)."""
    def recorded() -> dict[str, float] | None:
        after = _vllm_histograms(base_url)
        return after if all(after[f"{h}_count"] - before[f"{h}_count"] >= requests
                            for h in VLLM_HISTOGRAMS.values()) else None

    return wait_until(recorded, 30, f"{requests} more requests in vLLM's histograms")


def _server_spans(collector, count: int):
    return collector.wait_for_spans(
        lambda s: s["scope_name"] == "traceai_vllm" and s["resource_attributes"].get("service.name")
        == "vllm-server-under-test", count=count, timeout=30)


def test_vllm_start_up_spans_stay_out_of_the_backend(vllm_server, collector):
    """vLLM's own spans ("Overall Loading", model loading: seconds long, made through the global
    tracer provider under vllm.* scopes in every server process) are not exported by default. Runs
    first and clears nothing: everything the server exported since it started is in the collector;
    a request span that arrived after them is the proof that exporting worked meanwhile."""
    body = json.dumps({"model": "tiny-llama", "prompt": "Hi", "max_tokens": 2}).encode()
    request = urllib.request.Request(f"{vllm_server}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
    assert _server_spans(collector, 1)
    ours = [s for s in collector.spans() if s["resource_attributes"].get("service.name") == "vllm-server-under-test"]
    vllm_own = sorted({(s["scope_name"], s["name"]) for s in ours if s["scope_name"].startswith("vllm")})
    assert vllm_own == [], vllm_own


def test_server_request_span_joins_the_client_trace(vllm_server, collector, telemetry, hub_online):
    from huggingface_hub import InferenceClient

    collector.clear()
    before = _vllm_histograms(vllm_server)
    client = InferenceClient(base_url=vllm_server)
    _chats_sent.append("joins")
    out = client.chat_completion([{"role": "user", "content": "Say something."}], model="tiny-llama",
                                 max_tokens=6, seed=1)
    (client_span,) = telemetry.spans()
    (server_span,) = _server_spans(collector, 1)
    assert server_span["trace_id"] == format(client_span.context.trace_id, "032x")
    assert server_span["parent_span_id"] == format(client_span.context.span_id, "016x")
    assert server_span["kind"] == "SERVER"
    assert server_span["name"] == "chat tiny-llama"  # the chat route's requests are chat operations
    assert server_span["attributes"][A.RESPONSE_ID] == out.id
    a = server_span["attributes"]
    assert a[A.USAGE_INPUT_TOKENS] == out.usage.prompt_tokens
    assert a[A.USAGE_OUTPUT_TOKENS] == out.usage.completion_tokens
    assert a[A.REQUEST_MODEL] == "tiny-llama"
    assert a[A.REQUEST_MAX_TOKENS] == 6
    # the server keeps request stats (its default): vLLM's own breakdown is on the span, the very
    # figures vLLM's Prometheus histograms recorded for this one request
    after = _vllm_histograms_after(vllm_server, before, 1)
    for key, histogram in VLLM_HISTOGRAMS.items():
        assert after[f"{histogram}_count"] - before[f"{histogram}_count"] == 1, histogram
        assert a[key] == pytest.approx(after[f"{histogram}_sum"] - before[f"{histogram}_sum"], abs=1e-9), key
    assert a[A.VLLM_PREFILL_TIME] > 0 and a[A.VLLM_DECODE_TIME] > 0 and a[A.RESPONSE_TIME_TO_FIRST_CHUNK] > 0
    assert a[A.MODEL_ENGINE] == "vllm" and a[A.MODEL_FRAMEWORK] == "pytorch"


def test_client_disconnect_mid_stream_ends_the_server_span_as_aborted(vllm_server, collector, hub_online):
    """The client reads three chunks and hangs up: vLLM aborts the request and its span says so.
    A race by nature (a loaded machine may let the request finish first: then it says "length"),
    so up to five tries; abort handling that never works fails every one."""
    from huggingface_hub import InferenceClient

    reasons = []
    for _ in range(5):
        collector.clear()
        client = InferenceClient(base_url=vllm_server)  # kept: the client owns the response stream
        _chats_sent.append("disconnect")
        stream = client.chat_completion(
            [{"role": "user", "content": "Talk for a long time."}], model="tiny-llama", max_tokens=480,
            stream=True, extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        client.close()  # the HTTP connection goes; vLLM aborts the request
        (server_span,) = _server_spans(collector, 1)
        reasons.append(list(server_span["attributes"][A.RESPONSE_FINISH_REASONS]))
        if reasons[-1] == ["abort"]:
            break
    assert reasons[-1] == ["abort"] and all(r in (["abort"], ["length"]) for r in reasons), reasons
    # an uninstrumented client sends no trace context: still the server side of a remote call
    assert server_span["kind"] == "SERVER" and server_span["parent_span_id"] is None
    assert server_span["attributes"][A.REQUEST_STREAM] is True


def test_the_plugin_exports_from_export_processes_by_default(vllm_server, collector, hub_online):
    """Under TRACEAI_VLLM_AUTO, TRACEAI_EXPORT_PROCESS defaults to on: the spans above came from
    export processes, children of the server's processes (in its process group), and so do the
    request histograms (recorded there, from the requests' records)."""
    durations = collector.wait_for_metrics(
        lambda m: m["name"] == A.METRIC_SERVER_REQUEST_DURATION
        and m["resource_attributes"].get("service.name") == "vllm-server-under-test"
        and sum(p["count"] for p in m["data_points"] if p["attributes"][A.OPERATION_NAME] == "chat")
        >= len(_chats_sent), timeout=30)
    chat = [p for p in durations[-1]["data_points"] if p["attributes"][A.OPERATION_NAME] == "chat"]
    assert durations[-1]["scope_name"] == "traceai_vllm"
    assert sum(p["count"] for p in chat) == len(_chats_sent) >= 2  # the chat requests above, once each
    (pgid,) = _server_group  # the API server's pid: the leader of the group its processes share
    members, exporters = set(), {}  # pids in the server's group; export process -> its parent
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            ppid, group = (int(v) for v in open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1:3])
        except (OSError, ValueError, IndexError):
            continue
        if group != pgid:
            continue
        members.add(int(entry))
        if any(b"fi_evals_core.telemetry.export_process" in arg for arg in cmdline):
            exporters[int(entry)] = ppid
    # the request spans and histograms above came from the API server's own export process: one
    assert list(exporters.values()).count(pgid) == 1, exporters
    # and any other is the one export process of another vLLM process of the server (EngineCore, worker)
    parents = list(exporters.values())
    assert len(set(parents)) == len(parents), exporters
    assert all(parent in members and parent not in exporters for parent in parents), exporters
    # each is lean: after exporting real vLLM request records it has loaded neither torch nor vLLM
    # (their native libraries would show in its memory map), and its resident memory stays small
    for pid in exporters:
        loaded = {line.split()[-1] for line in open(f"/proc/{pid}/maps") if "/site-packages/" in line}
        # (vLLM's CPU platform LD_PRELOADs torch's libgomp into every child process: not torch itself)
        heavy = sorted(path for path in loaded if ("/torch/" in path or "/vllm/" in path) and "libgomp" not in path)
        assert heavy == [], (pid, heavy)
        rss_kib = int(next(line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:")).split()[1])
        assert rss_kib < 150 * 1024, (pid, rss_kib)
        print(f"export process {pid} (of {exporters[pid]}): {rss_kib / 1024:.0f} MiB resident")


def test_completions_spans_carry_the_id_the_client_receives_one_per_prompt(vllm_server, collector):
    """/v1/completions with two prompts: vLLM runs them as `<id>-0` and `<id>-1`; each span says
    the response's id and its prompt's index. Not streamed, no trace context. (After the
    test above, which counts the chat requests' histogram points.)"""
    collector.clear()
    body = json.dumps({"model": "tiny-llama", "prompt": ["Once upon a time", "The weather today"],
                       "max_tokens": 3, "seed": 1}).encode()
    request = urllib.request.Request(f"{vllm_server}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    spans = sorted(_server_spans(collector, 2), key=lambda s: s["attributes"][A.VLLM_PROMPT_INDEX])
    assert [s["attributes"][A.VLLM_PROMPT_INDEX] for s in spans] == [0, 1]
    for span, choice in zip(spans, sorted(answer["choices"], key=lambda c: c["index"])):
        a = span["attributes"]
        assert a[A.RESPONSE_ID] == answer["id"]
        assert span["name"] == "text_completion tiny-llama" and span["kind"] == "SERVER"
        assert a[A.REQUEST_STREAM] is False
        assert list(a[A.RESPONSE_FINISH_REASONS]) == [choice["finish_reason"]]
        # content capture is on in this module: the prompt and the choice, in the GenAI message schema
        (prompt,) = check_messages(a[A.INPUT_MESSAGES], "input")
        assert prompt["parts"][0]["content"] in ("Once upon a time", "The weather today")
        (reply,) = check_messages(a[A.OUTPUT_MESSAGES], "output")
        assert reply["finish_reason"] == choice["finish_reason"] and reply["parts"][0]["content"] == choice["text"]
    assert sum(s["attributes"][A.USAGE_OUTPUT_TOKENS] for s in spans) == answer["usage"]["completion_tokens"]
    assert spans[0]["resource_attributes"]["deployment.environment"] == "test"
    # what the EngineCore process and its worker know, on the API server's spans: the engine's memory
    # (asked once, in the server's event loop) and each request's compute (on its last output,
    # taken off before vLLM builds the response: the client sees no kv_transfer_params)
    for span in spans:
        a = span["attributes"]
        assert a[A.VLLM_KV_CAPACITY_BYTES] == 64 * 2**20 and a[A.VLLM_ENGINE_MEMORY_WEIGHTS] > 0
        assert a[A.VLLM_REQUEST_COMPUTE_TIME] > 0 and a[A.VLLM_REQUEST_FLOPS] > 0
    assert answer.get("kv_transfer_params") is None


def test_each_server_process_says_once_what_it_instrumented_and_where_spans_go(vllm_server, collector):
    """vLLM's API server mutes the root logger: traceai's start-up line still reaches its log, one per
    process that loaded the plugin, naming vLLM and the collector."""
    (log,) = _server_log
    lines = [line for line in open(log, errors="replace") if "traceai: " in line and "spans to" in line]
    assert lines, "no traceai start-up line in the server's log"
    endpoint = collector.grpc_endpoint
    assert all(f"spans to OTLP grpc {endpoint} (from an export process)" in line for line in lines), lines
    assert any("instrumented" in line and "vllm" in line for line in lines), lines


@pytest.mark.parametrize("request_id_header, stream", [(None, False), ("my-own-id-7", False), (None, True)])
def test_chat_spans_hold_the_messages_the_client_sent(vllm_server, collector, request_id_header, stream):
    """With content capture on: the chat span's input messages are the client's messages (roles,
    text), not the chat template the engine saw; its output messages carry finish_reason. Streamed
    too (the engine request is added after the handler returned)."""
    collector.clear()
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]
    headers = {"Content-Type": "application/json"}
    if request_id_header:
        headers["X-Request-Id"] = request_id_header
    body = json.dumps({"model": "tiny-llama", "messages": messages, "max_tokens": 3, "seed": 1,
                       "stream": stream}).encode()
    request = urllib.request.Request(f"{vllm_server}/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        if not stream:
            answer = json.loads(response.read())
        else:  # server-sent events: the chunks' text and the last finish_reason
            chunks = [json.loads(line[6:]) for line in response.read().decode().splitlines()
                      if line.startswith("data: {")]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            reason = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
            answer = {"id": chunks[0]["id"],
                      "choices": [{"finish_reason": reason, "message": {"content": text}}]}
    (span,) = _server_spans(collector, 1)
    a = span["attributes"]
    assert a[A.RESPONSE_ID] == answer["id"]
    if request_id_header:
        assert answer["id"] == f"chatcmpl-{request_id_header}"
    sent = check_messages(a[A.INPUT_MESSAGES], "input")
    assert [m["role"] for m in sent] == ["system", "user"]
    assert [[p["content"] for p in m["parts"]] for m in sent] == [["You answer briefly."], ["Name a colour."]]
    (reply,) = check_messages(a[A.OUTPUT_MESSAGES], "output")
    assert reply["role"] == "assistant" and reply["finish_reason"] == answer["choices"][0]["finish_reason"]
    assert reply["parts"][0]["content"] == answer["choices"][0]["message"]["content"]


def test_a_served_adapter_is_the_model_the_client_asked_for(vllm_server, collector):
    """`--lora-modules adapter-a=DIR`: a client asking for model "adapter-a" runs the base model with
    that adapter. Its span's request model is "adapter-a" (the name it asked for: the span's name and
    the request histograms say it too), and it names the adapter; a request for the base model's
    name, on the same server, names none."""
    collector.clear()
    answers = {}
    for model in ("tiny-llama", LORA_NAME):
        body = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 3, "seed": 1}).encode()
        request = urllib.request.Request(f"{vllm_server}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answers[model] = json.loads(response.read())
    assert answers[LORA_NAME]["model"] == LORA_NAME  # vLLM's own answer names the adapter
    spans = {s["attributes"][A.RESPONSE_ID]: s for s in _server_spans(collector, 2)}
    base, adapted = spans[answers["tiny-llama"]["id"]], spans[answers[LORA_NAME]["id"]]
    a = adapted["attributes"]
    assert a[A.REQUEST_MODEL] == LORA_NAME and adapted["name"] == f"text_completion {LORA_NAME}"
    assert a[A.MODEL_LORA_NAME] == LORA_NAME
    assert a[A.MODEL_LORA_ID] == 1  # the server numbers its --lora-modules from 1
    assert a[A.USAGE_OUTPUT_TOKENS] == answers[LORA_NAME]["usage"]["completion_tokens"]
    b = base["attributes"]
    assert b[A.REQUEST_MODEL] == "tiny-llama" and base["name"] == "text_completion tiny-llama"
    assert A.MODEL_LORA_NAME not in b and A.MODEL_LORA_ID not in b
    collector.wait_for_metrics(
        lambda m: m["name"] == A.METRIC_SERVER_REQUEST_DURATION
        and m["resource_attributes"].get("service.name") == "vllm-server-under-test"
        and any(p["attributes"].get(A.REQUEST_MODEL) == LORA_NAME for p in m["data_points"]), timeout=30)
