"""What a load served by the zero-code vLLM server left at the backend: its request spans delivered
to the test collector (by the response id each client got back), and the spans counted as dropped
(`traceai.telemetry.dropped{signal=traces}`, as each process last exported it). For the fault tests
and `benchmarks/soak_faults.py`: delivered + counted = finished is what they check."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from ..telemetry.losses import DROPPED_COUNTER


def complete(base_url: str, i: int, model: str = "tiny-llama", max_tokens: int = 4, timeout_s: float = 120,
             api_key: str | None = None) -> str:
    """One /v1/completions request; the response id the client got back."""
    body = json.dumps({"model": model, "prompt": f"Request number {i}", "max_tokens": max_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/v1/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())["id"]


def delivered(collector: Any, service: str, scope: str = "traceai_vllm") -> set[str]:
    """The response ids of the request spans `collector` received from `service`."""
    return {s["attributes"]["gen_ai.response.id"] for s in collector.spans()
            if s["resource_attributes"].get("service.name") == service and s["scope_name"] == scope}


def counted(collector: Any, service: str) -> dict[str, int]:
    """Spans counted as dropped by `service`'s processes, by reason: each process's cumulative
    `traceai.telemetry.dropped{signal=traces}` as last exported, summed over processes."""
    latest: dict[tuple, float] = {}
    for metric in collector.metrics():
        if metric["name"] != DROPPED_COUNTER or metric["resource_attributes"].get("service.name") != service:
            continue
        for point in metric["data_points"]:
            if point["attributes"].get("signal") == "traces":
                key = (metric["resource_attributes"].get("service.instance.id"), point["attributes"].get("reason"))
                latest[key] = point["value"]
    by_reason: dict[str, int] = {}
    for (_, reason), value in latest.items():
        by_reason[reason] = by_reason.get(reason, 0) + int(value)
    return by_reason
