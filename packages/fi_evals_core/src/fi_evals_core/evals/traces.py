"""Recorded generation spans as dataset rows: production traffic to evaluate.

Two inputs, one row shape:
- this project's JSONL trace file (`TRACEAI_TRACES_FILE`; one `span_to_dict` object per line);
- OTLP JSON as a collector's file exporter writes it (one `{"resourceSpans": [...]}` document
  per line, or a single document), attribute values as `{"stringValue" | "intValue" |
  "doubleValue" | "boolValue" | "arrayValue" | "kvlistValue" | "bytesValue": ...}`.

A span is kept when its prompt and completion were captured: `gen_ai.input.messages` and
`gen_ai.output.messages` (GenAI message JSON: `[{"role", "parts": [{"type": "text", "content"}]}]`)
on the span, or on its `gen_ai.client.inference.operation.details` event (capture modes
SPAN_ONLY / EVENT_ONLY / SPAN_AND_EVENT). Generation spans without them are skipped and counted;
a generation span whose parent was kept (the `generate` call inside a recorded pipeline call) is
the same request and is not counted as skipped.

Columns, in this order:
- `prompt`: the text of the last user message (the message the completion answers); for a
  batched pipeline call (`huggingface.pipeline.inputs` N > 1 with N one-message inputs) each
  prompt gets its own row;
- `messages`: the whole conversation as `[{"role", "content"}]`, only when the input held more
  than one message (feed it to `generate_responses(prompt_column="messages")`);
- `completion`: the text of the output message; one row per choice, with `choice_index` when a
  request returned several;
- `model`: `gen_ai.response.model`, else `gen_ai.request.model`;
- `checkpoint`: the first recorded of span attribute `model.checkpoint`, span attribute
  `model.version`, resource attribute `service.version`; None when none is;
- `trace_id`, `span_id`, `response_id` (`gen_ai.response.id`), `span_name`, `start_time_unix_nano`;
- `content_truncated`: True when the recorded text was cut at the capture length limit;
- every other span attribute under its own key (content keys excepted), then the resource's
  `service.name` / `service.version` when the span has no attribute of that name.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..telemetry import attributes as A
from ..telemetry.content import TRUNCATION_MARK

logger = logging.getLogger("fi_evals_core.evals")

SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
CONTENT_KEYS = frozenset({A.INPUT_MESSAGES, A.OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS})
GENERATION_OPERATIONS = frozenset({A.OP_CHAT, A.OP_TEXT_COMPLETION, "generate_content"})
CHECKPOINT_ATTRIBUTES = ("model.checkpoint", "model.version")
RESOURCE_COLUMNS = ("service.name", "service.version")
_HEX = re.compile(r"[0-9a-fA-F]+")


def read_trace_rows(path: str | Path, sample: int | None = None, seed: int = 0
                    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows of the captured generations in a trace file, and what was read and skipped."""
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 0):
        raise ValueError(f"sample must be a non-negative number of rows, got {sample!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    spans = list(read_spans(path))
    kept_ids: set[tuple[str, str]] = set()
    rows: list[dict[str, Any]] = []
    unkept: list[dict[str, Any]] = []
    for span in spans:
        span_rows = rows_of_span(span)
        if span_rows:
            rows.extend(span_rows)
            kept_ids.add((span["trace_id"], span["span_id"]))
        elif is_generation(span["attributes"]):
            unkept.append(span)
    nested = sum(1 for s in unkept if (s["trace_id"], s.get("parent_span_id")) in kept_ids)
    stats = {"spans": len(spans), "kept_spans": len(kept_ids), "rows": len(rows),
             "skipped_without_content": len(unkept) - nested, "nested": nested}
    if sample is not None and sample < len(rows):
        chosen = sorted(random.Random(seed).sample(range(len(rows)), sample))
        rows = [rows[i] for i in chosen]
    stats["sampled_rows"] = len(rows)
    log = logger.warning if stats["skipped_without_content"] else logger.info
    log("%s: %d generation span(s) with captured prompt and completion -> %d row(s); "
        "%d generation span(s) skipped: no captured content", path, stats["kept_spans"], stats["rows"],
        stats["skipped_without_content"])
    return rows, stats


# -- reading ------------------------------------------------------------------------------------


def read_spans(path: Path) -> Iterator[dict[str, Any]]:
    """Spans in one normalised shape, from a JSONL trace file or OTLP JSON."""
    text = path.read_text(encoding="utf-8")
    try:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        try:  # one pretty-printed document
            documents = [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: neither JSON lines nor one JSON document ({exc.msg} at line {exc.lineno})") from None
    for document in documents:
        for item in document if isinstance(document, list) else [document]:
            if not isinstance(item, dict):
                raise ValueError(f"{path}: expected span objects or OTLP documents, found {type(item).__name__}")
            if "resourceSpans" in item:
                yield from otlp_spans(item)
            elif "span_id" in item and "trace_id" in item:
                yield project_span(item)
            else:
                raise ValueError(f"{path}: a line is neither an OTLP JSON document (resourceSpans) "
                                 f"nor a span of this project's trace file (trace_id, span_id): keys "
                                 f"{', '.join(sorted(item)[:8])}")


def project_span(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": item.get("name"),
        "trace_id": item["trace_id"],
        "span_id": item["span_id"],
        "parent_span_id": item.get("parent_span_id"),
        "start_time_unix_nano": item.get("start_time_unix_nano"),
        "attributes": dict(item.get("attributes") or {}),
        "events": [{"name": e.get("name"), "attributes": dict(e.get("attributes") or {})}
                   for e in item.get("events") or []],
        "resource": dict(item.get("resource") or {}),
    }


def otlp_spans(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for resource_spans in document.get("resourceSpans") or []:
        resource = otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                start = span.get("startTimeUnixNano")
                yield {
                    "name": span.get("name"),
                    "trace_id": otlp_id(span.get("traceId")),
                    "span_id": otlp_id(span.get("spanId")),
                    "parent_span_id": otlp_id(span.get("parentSpanId")) or None,
                    "start_time_unix_nano": int(start) if start not in (None, "") else None,
                    "attributes": otlp_attributes(span.get("attributes")),
                    "events": [{"name": e.get("name"), "attributes": otlp_attributes(e.get("attributes"))}
                               for e in span.get("events") or []],
                    "resource": resource,
                }


def otlp_attributes(items: Any) -> dict[str, Any]:
    return {kv["key"]: otlp_value(kv.get("value")) for kv in items or [] if isinstance(kv, dict) and "key" in kv}


def otlp_value(value: Any) -> Any:
    """An OTLP/JSON AnyValue as a Python value (int64 arrives as a JSON string)."""
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [otlp_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return otlp_attributes((value["kvlistValue"] or {}).get("values"))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def otlp_id(value: Any) -> str:
    """OTLP/JSON ids are hex; the protobuf JSON mapping (base64) is accepted too."""
    if not value:
        return ""
    text = str(value)
    if _HEX.fullmatch(text) and len(text) in (16, 32):
        return text.lower()
    try:
        return base64.b64decode(text, validate=True).hex()
    except ValueError:
        return text


# -- rows ---------------------------------------------------------------------------------------


def is_generation(attributes: Mapping[str, Any]) -> bool:
    operation = attributes.get(A.OPERATION_NAME)
    if operation is not None:
        return operation in GENERATION_OPERATIONS
    return A.REQUEST_MODEL in attributes  # e.g. a pipeline span, which names no operation


def captured(span: Mapping[str, Any], key: str) -> Any:
    value = span["attributes"].get(key)
    if value is not None:
        return value
    for event in span["events"]:
        if key in event["attributes"]:
            return event["attributes"][key]
    return None


def parse_messages(raw: Any) -> list[tuple[str, str]]:
    """GenAI message JSON as (role, text); non-text parts (images, tool calls) are left out."""
    if raw is None:
        return []
    try:
        messages = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return []
    if isinstance(messages, dict):
        messages = [messages]
    out = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "user")
        if "parts" in message:
            texts = [str(p.get("content", "")) for p in message.get("parts") or []
                     if isinstance(p, dict) and p.get("type") == "text"]
            text = "\n".join(texts) if texts else None
        else:  # {"role", "content"} as older conventions wrote it
            content = message.get("content")
            text = content if isinstance(content, str) else None
        if text is not None:
            out.append((role, text))
    return out


def rows_of_span(span: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The span's (prompt, completion) rows; empty when its content was not captured."""
    attributes = span["attributes"]
    operation = attributes.get(A.OPERATION_NAME)
    if operation is not None and operation not in GENERATION_OPERATIONS:
        return []  # embeddings, tool calls: no completion to judge
    inputs = parse_messages(captured(span, A.INPUT_MESSAGES))
    outputs = [text for _, text in parse_messages(captured(span, A.OUTPUT_MESSAGES))]
    if not inputs or not outputs:
        return []
    batch = attributes.get(A.HF_PIPELINE_INPUTS)
    pairs: list[tuple[str, list[tuple[str, str]] | None, str, int | None]] = []
    if isinstance(batch, int) and batch > 1 and len(inputs) == batch and len(outputs) % batch == 0:
        per_prompt = len(outputs) // batch
        for i, (_, prompt) in enumerate(inputs):
            choices = outputs[i * per_prompt:(i + 1) * per_prompt]
            pairs += [(prompt, None, text, k if per_prompt > 1 else None) for k, text in enumerate(choices)]
    else:
        users = [text for role, text in inputs if role == "user"]
        prompt = users[-1] if users else inputs[-1][1]
        messages = inputs if len(inputs) > 1 else None
        pairs += [(prompt, messages, text, k if len(outputs) > 1 else None) for k, text in enumerate(outputs)]

    resource = span["resource"]
    checkpoint = next((attributes[k] for k in CHECKPOINT_ATTRIBUTES if attributes.get(k) is not None),
                      resource.get("service.version"))
    rows = []
    for prompt, messages, completion, choice in pairs:
        row: dict[str, Any] = {"prompt": prompt}
        if messages is not None:
            row["messages"] = [{"role": role, "content": text} for role, text in messages]
        row["completion"] = completion
        if choice is not None:
            row["choice_index"] = choice
        row.update({
            "model": attributes.get(A.RESPONSE_MODEL) or attributes.get(A.REQUEST_MODEL),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "trace_id": span["trace_id"],
            "span_id": span["span_id"],
            "response_id": attributes.get(A.RESPONSE_ID),
            "span_name": span["name"],
            "start_time_unix_nano": span["start_time_unix_nano"],
            "content_truncated": TRUNCATION_MARK in prompt or TRUNCATION_MARK in completion,
        })
        for key, value in attributes.items():
            if key not in CONTENT_KEYS and key not in row:
                row[key] = value
        for key in RESOURCE_COLUMNS:
            if key in resource and key not in row:
                row[key] = resource[key]
        rows.append(row)
    return rows
