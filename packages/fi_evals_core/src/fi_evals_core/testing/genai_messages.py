"""The GenAI semantic conventions' message shapes (`gen_ai.input.messages`, `gen_ai.output.messages`)
as JSON Schemas, for tests: what a backend that validates them (Phoenix does) requires. Written from
the conventions' rules: every message has a `role` and a list of `parts`; an output message also has
a `finish_reason`; every part has a `type`, a text part its `content`, a tool call its `id`, `name`
and `arguments`, a tool call response its `id` and `result`; other part types carry what they
carry."""

from __future__ import annotations

import json
from typing import Any

_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
    "allOf": [
        {"if": {"properties": {"type": {"const": "text"}}},
         "then": {"required": ["content"], "properties": {"content": {"type": "string"}}}},
        {"if": {"properties": {"type": {"const": "tool_call"}}},
         "then": {"required": ["id", "name", "arguments"],
                  "properties": {"id": {"type": "string"}, "name": {"type": "string"}}}},
        {"if": {"properties": {"type": {"const": "tool_call_response"}}},
         "then": {"required": ["id", "result"], "properties": {"id": {"type": "string"}}}},
    ],
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "parts"],
    "properties": {"role": {"type": "string"}, "parts": {"type": "array", "items": _PART}},
}
INPUT_MESSAGES_SCHEMA = {"type": "array", "items": _MESSAGE}
OUTPUT_MESSAGES_SCHEMA = {
    "type": "array",
    "items": {**_MESSAGE, "required": ["role", "parts", "finish_reason"],
              "properties": {**_MESSAGE["properties"], "finish_reason": {"type": "string"}}},
}


def check_messages(value: Any, kind: str) -> list[dict]:
    """`value` (the attribute's JSON text) parsed and validated against the `kind` ("input" or
    "output") schema; AssertionError naming the first violation otherwise."""
    import jsonschema

    schema = {"input": INPUT_MESSAGES_SCHEMA, "output": OUTPUT_MESSAGES_SCHEMA}[kind]
    messages = json.loads(value) if isinstance(value, str) else value
    try:
        jsonschema.validate(messages, schema)
    except jsonschema.ValidationError as error:
        raise AssertionError(f"gen_ai.{kind}.messages does not follow the GenAI schema: {error.message} "
                             f"at {list(error.absolute_path)}") from None
    return messages
