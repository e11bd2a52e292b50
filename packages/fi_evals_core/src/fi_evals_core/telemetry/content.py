"""What prompt and completion text may leave the process, and in which shape.

Off by default: prompts and completions are user data. When a capture mode allows it, messages
are written in the GenAI conventions' JSON shape (`gen_ai.input.messages` /
`gen_ai.output.messages`), each text part cut to the configured length.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from .config import ContentCapture

TRUNCATION_MARK = "…[truncated]"


class ContentPolicy:
    def __init__(self, mode: ContentCapture, max_length: int) -> None:
        self.mode = mode
        self.max_length = max_length
        self.enabled = mode.enabled

    def truncate(self, text: str) -> str:
        if len(text) <= self.max_length:
            return text
        return text[: self.max_length] + TRUNCATION_MARK

    def input_messages(self, messages: Sequence[dict[str, Any]]) -> str:
        """Chat messages (`{"role", "content"}` as OpenAI/HF take them) as GenAI JSON."""
        out = []
        for message in messages:
            role = str(message.get("role", "user")) if isinstance(message, dict) else "user"
            content = message.get("content") if isinstance(message, dict) else message
            out.append({"role": role, "parts": self._parts(content)})
        return json.dumps(out, ensure_ascii=False)

    def prompt(self, text: str | Iterable[str]) -> str:
        """Plain-text prompt(s) as GenAI input messages, one user message per prompt."""
        texts = [text] if isinstance(text, str) else list(text)
        return json.dumps(
            [{"role": "user", "parts": [self._text(t)]} for t in texts], ensure_ascii=False
        )

    def completions(self, texts: Sequence[str], finish_reasons: Sequence[str | None] = ()) -> str:
        """Generated text(s) as GenAI output messages, one assistant message per choice."""
        out = []
        for i, text in enumerate(texts):
            message: dict[str, Any] = {"role": "assistant", "parts": [self._text(text)]}
            if i < len(finish_reasons) and finish_reasons[i]:
                message["finish_reason"] = finish_reasons[i]
            out.append(message)
        return json.dumps(out, ensure_ascii=False)

    def _text(self, text: Any) -> dict[str, str]:
        return {"type": "text", "content": self.truncate(text if isinstance(text, str) else str(text))}

    def _parts(self, content: Any) -> list[dict[str, str]]:
        if content is None:
            return []
        if isinstance(content, str):
            return [self._text(content)]
        parts = []
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(self._text(part.get("text", "")))
            elif isinstance(part, dict):
                # images, audio, tool calls: record the kind, never the payload (may be huge)
                parts.append({"type": str(part.get("type", "unknown"))})
            else:
                parts.append(self._text(part))
        return parts


def strip_credentials(url: str) -> str:
    """A URL without `user:password@` or query string (tokens travel in both)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# Secrets that error messages carry: user:password@ in URLs, tokens and keys in query strings,
# Authorization / API-key headers and bearer tokens.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&](?:token|access_token|api[_-]?key|apikey|key|sig|signature|password|secret|auth)=)[^&\s#'\"]+")
_HEADER_SECRET = re.compile(
    r"(?i)(?P<key>\b(?:authorization|proxy-authorization|x-api-key|api-key)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(?:bearer|basic|token)\s+)?[^\s'\",}]+")
_BEARER = re.compile(r"(?i)\b(?P<key>bearer\s+)[A-Za-z0-9._~+/=-]{6,}")


def redact_secrets(text: str) -> str:
    """`text` (an exception's message, say) with credentials replaced by `<redacted>`: for span
    status descriptions and anything else instrumentation records from an error. The exception the
    caller receives is never changed."""
    text = _URL_USERINFO.sub(r"\g<scheme>", text)
    text = _QUERY_SECRET.sub(r"\g<key><redacted>", text)
    text = _HEADER_SECRET.sub(r"\g<key><redacted>", text)
    return _BEARER.sub(r"\g<key><redacted>", text)
