"""A real local HTTP inference server (TGI / TEI / OpenAI-chat dialects) backed by a tiny transformers model.

Why: ``huggingface_hub.InferenceClient`` instrumentation must be tested against real HTTP traffic with real
token counts, without Hub access. This server speaks the wire formats that ``InferenceClient(base_url=...)``
(huggingface_hub 2.4) sends and parses, modelled on text-generation-inference's router (``router/src/lib.rs``,
``server.rs``, ``chat.rs``) and text-embeddings-inference:

* ``POST /`` (TGI compat route) -- body has ``"stream"`` or ``"parameters"``: text generation
  (``[{"generated_text", "details"?}]`` or SSE ``StreamResponse`` events); otherwise (``{"inputs", "normalize"...}``):
  feature extraction (TEI ``/embed``: one mean-pooled vector per input).
* ``POST /generate``, ``POST /generate_stream`` (TGI), ``POST /embed``, ``POST /embed_all`` (TEI, per-token vectors).
* ``POST /v1/chat/completions`` and ``/chat/completions`` (OpenAI/TGI chat, plain and SSE, ``[DONE]`` terminated).
* ``POST /v1/embeddings`` (OpenAI embeddings), ``GET /info``, ``GET /health``, ``GET /v1/models``.

Decoding is a plain KV-cached loop over the model's ``forward`` (greedy unless sampling is requested) so every
token, logprob and count is real. Model calls run with OpenTelemetry instrumentation suppressed so that
instrumentation installed in the test process does not trace the server side.

Remember: ``HF_HUB_OFFLINE=1`` (read once at ``huggingface_hub`` import) makes every ``InferenceClient`` request
fail, even to 127.0.0.1; run clients with it unset (or patch ``huggingface_hub.constants.HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import sys
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context

if TYPE_CHECKING:  # torch and transformers are imported where the model is loaded and run
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

try:  # the canonical location; opentelemetry.context re-exports the same key object
    from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY
except ImportError:  # pragma: no cover - instrumentation package not installed
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "GeneratedToken",
    "Generation",
    "HFServer",
    "RecordedRequest",
    "StreamFault",
    "suppressed_instrumentation",
]

#: Used when a request gives no ``max_new_tokens`` / ``max_tokens`` (keeps tests fast; TGI would use the budget).
DEFAULT_MAX_NEW_TOKENS = 20
SYSTEM_FINGERPRINT = "tiny-hf-server-native"


@contextlib.contextmanager
def suppressed_instrumentation() -> Iterator[None]:
    """Attach a context with OpenTelemetry's suppress-instrumentation flags set (both key styles), then detach."""
    ctx = otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True)
    ctx = otel_context.set_value("suppress_instrumentation", True, ctx)  # legacy plain-string key
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


@dataclasses.dataclass
class RecordedRequest:
    """One request as the server received it (header names lower-cased; ``body`` is parsed JSON or ``None``)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    received_at: float


@dataclasses.dataclass
class StreamFault:
    """Fault injected into the next streamed response after ``after_tokens`` tokens were sent.

    ``mode``: ``"error"`` sends TGI's in-stream error event and ends the stream: on TGI routes
    ``{"error": message, "error_type": error_type}`` (``InferenceClient`` raises ``GenerationError`` for the default
    type), on chat routes ``{"error": {"message": ..., "http_status_code": 422}}`` + ``[DONE]`` (client raises
    ``UnknownError``); ``"disconnect"`` drops the TCP connection mid-body (client sees an incomplete chunked read);
    ``"stall"`` pauses ``stall_seconds`` (or until :meth:`HFServer.release_stall` / ``stop``) then continues.
    """

    after_tokens: int = 1
    mode: Literal["error", "disconnect", "stall"] = "error"
    stall_seconds: float = 5.0
    message: str = "Request failed during generation: injected fault"
    error_type: str = "generation"


@dataclasses.dataclass
class GeneratedToken:
    """One decoded step. ``text`` follows TGI's incremental detokenisation (``""`` while a UTF-8 char is incomplete)."""

    id: int
    text: str
    logprob: float
    special: bool
    top_tokens: list[dict[str, Any]]


@dataclasses.dataclass
class Generation:
    """Result of :meth:`HFServer.generate`; ``finish_reason`` uses TGI names: length / eos_token / stop_sequence."""

    prompt_ids: list[int]
    tokens: list[GeneratedToken]
    generated_text: str
    finish_reason: str
    seed: int | None

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]


class _HTTPError(Exception):
    def __init__(self, status: int, payload: dict[str, Any]):
        super().__init__(payload.get("error"))
        self.status = status
        self.payload = payload


class _StreamAborted(Exception):
    """Raised inside a stream writer after a ``disconnect`` fault dropped the connection."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: HFServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-stream (tests do it on purpose) is not a server error."""
        if isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class HFServer:
    """Local inference server on ``127.0.0.1:<ephemeral>`` serving the causal LM saved in ``model_dir``.

    Use as a context manager (``with HFServer(path) as srv: InferenceClient(base_url=srv.base_url)``) or call
    :meth:`start` / :meth:`stop`. Inspect :attr:`requests` for what clients sent (headers include ``authorization``
    and ``traceparent`` when present). Error paths: :meth:`fail_next`, :meth:`fault_next_stream`.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = os.fspath(model_dir)
        self.model_id = model_id or os.path.basename(os.path.normpath(self.model_dir))
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        with suppressed_instrumentation():
            self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True)
        self.model.eval()
        # transformers 5.2x renamed forward(past_key_values=...) to forward(cache=...); support both.
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.max_total_tokens: int = int(getattr(self.model.config, "max_position_embeddings", 0) or getattr(self.model.config, "n_positions", 512))
        gen_eos = self.model.generation_config.eos_token_id
        eos_ids = gen_eos if isinstance(gen_eos, list) else [gen_eos if gen_eos is not None else self.tokenizer.eos_token_id]
        #: Token ids that end generation with finish_reason ``eos_token``. Tests may add ids (e.g. a token the
        #: random model is known to emit) to exercise the EOS path deterministically.
        self.eos_token_ids: set[int] = {int(i) for i in eos_ids if i is not None}
        #: Seconds to sleep before emitting each generated token (for latency / time-to-first-token tests).
        self.token_delay_s: float = 0.0
        self.requests: list[RecordedRequest] = []
        self._special_ids = set(self.tokenizer.all_special_ids)
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._fail_queue: list[tuple[int, dict[str, Any]]] = []
        self._stream_fault: StreamFault | None = None
        self._release = threading.Event()
        self._httpd = _Server((host, port), _Handler, bind_and_activate=True)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def start(self) -> HFServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"HFServer:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any stalled stream and close the listening socket. Idempotent."""
        self._release.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> HFServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls
    def fail_next(self, status: int = 500, *, message: str = "Injected server error", error_type: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` POST requests with ``status`` and JSON ``{"error": message[, "error_type"]}``.

        Without ``error_type`` ``InferenceClient`` raises ``HfHubHTTPError``; with a TGI type (``generation``,
        ``validation``, ``overloaded``, ``incomplete_generation``) ``text_generation`` raises the matching
        ``huggingface_hub.errors`` ``TextGenerationError`` subclass (chat_completion always raises ``HfHubHTTPError``).
        """
        payload: dict[str, Any] = {"error": message}
        if error_type is not None:
            payload["error_type"] = error_type
        with self._state_lock:
            self._fail_queue.extend([(status, payload)] * times)

    def fault_next_stream(self, fault: StreamFault | None = None, **kwargs: Any) -> StreamFault:
        """Arm a :class:`StreamFault` for the next streamed response (``fault_next_stream(mode="stall", after_tokens=2)``)."""
        fault = fault or StreamFault(**kwargs)
        with self._state_lock:
            self._stream_fault = fault
        self._release.clear()
        return fault

    def release_stall(self) -> None:
        """Let a stream stalled by a ``"stall"`` fault continue immediately."""
        self._release.set()

    def clear_requests(self) -> None:
        with self._state_lock:
            self.requests.clear()

    @property
    def last_request(self) -> RecordedRequest:
        with self._state_lock:
            return self.requests[-1]

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._state_lock:
            return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ tokenisation helpers (what the server counts)
    def prompt_token_ids(self, text: str) -> list[int]:
        """Token ids for a TGI ``inputs`` string (tokenizer default: adds bos), i.e. ``details.input_length`` source."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The tokenizer's chat template rendered with a generation prompt."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def chat_prompt_token_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of the rendered chat prompt (template writes bos itself) -> ``usage.prompt_tokens``."""
        return list(self.tokenizer(self.chat_prompt(messages), add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ model
    def _forward(self, **kwargs: Any) -> Any:
        import torch

        with self._model_lock, torch.no_grad(), suppressed_instrumentation():
            return self.model(**kwargs)

    def _token_dict(self, token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "id": token_id,
            "text": self.tokenizer.decode([token_id], skip_special_tokens=False),
            "logprob": _finite(logprob),
            "special": token_id in self._special_ids,
        }

    def iter_generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        top_n_tokens: int = 0,
        info: dict[str, Any] | None = None,
    ) -> Iterator[GeneratedToken]:
        """Yield tokens one by one (KV-cached forward loop). ``info`` receives ``finish_reason`` and ``seed`` at the end.

        Greedy unless ``do_sample`` or a non-trivial temperature/top_k/top_p is given (TGI's rule); ``seed`` is
        reported only when sampling. Logprobs come from ``log_softmax(logits / temperature)``.
        """
        import torch

        info = info if info is not None else {}
        max_new = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else int(max_new_tokens)
        sampling = bool(do_sample) or (temperature is not None and temperature not in (0, 0.0, 1, 1.0)) or bool(top_k) or (top_p is not None and top_p < 1.0)
        generator: torch.Generator | None = None
        if sampling:
            seed = int(seed) if seed is not None else random.getrandbits(63)
            generator = torch.Generator().manual_seed(seed)
        else:
            seed = None
        info["seed"] = seed
        info["finish_reason"] = "length"
        stop = [s for s in (stop or []) if s]

        all_ids = list(prompt_ids)
        prefix_offset, read_offset = max(len(all_ids) - 5, 0), len(all_ids)
        generated_ids: list[int] = []
        cache = None
        next_input = torch.tensor([all_ids], dtype=torch.long)
        for step in range(max_new):
            out = self._forward(input_ids=next_input, use_cache=True, **{self._cache_kw: cache})
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            logits = out.logits[0, -1].float()
            if sampling and temperature not in (None, 0, 0.0):
                logits = logits / float(temperature)
            logprobs = torch.log_softmax(logits, dim=-1)
            if sampling:
                filtered = logits.clone()
                if top_k:
                    kth = torch.topk(filtered, min(int(top_k), filtered.numel())).values[-1]
                    filtered[filtered < kth] = float("-inf")
                if top_p is not None and top_p < 1.0:
                    sorted_logits, idx = torch.sort(filtered, descending=True)
                    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
                    remove = cum > float(top_p)
                    remove[1:] = remove[:-1].clone()
                    remove[0] = False
                    filtered[idx[remove]] = float("-inf")
                token_id = int(torch.multinomial(torch.softmax(filtered, dim=-1), 1, generator=generator).item())
            else:
                token_id = int(torch.argmax(logits).item())
            top_tokens: list[dict[str, Any]] = []
            if top_n_tokens:
                vals, ids = torch.topk(logprobs, min(int(top_n_tokens), logprobs.numel()))
                top_tokens = [self._token_dict(int(i), float(v)) for v, i in zip(vals.tolist(), ids.tolist())]

            all_ids.append(token_id)
            generated_ids.append(token_id)
            finish: str | None = None
            if token_id in self.eos_token_ids:
                finish = "eos_token"
            elif stop and any(self.tokenizer.decode(generated_ids, skip_special_tokens=True).endswith(s) for s in stop):
                finish = "stop_sequence"
            elif step == max_new - 1:
                finish = "length"
            # TGI's decode_token: emit text only once the decoded suffix is a complete UTF-8 sequence. Unlike TGI,
            # the last token flushes whatever is pending, so concatenated token texts always equal the full decode.
            prefix_text = self.tokenizer.decode(all_ids[prefix_offset:read_offset], skip_special_tokens=False)
            new_text = self.tokenizer.decode(all_ids[prefix_offset:], skip_special_tokens=False)
            if len(new_text) > len(prefix_text) and (finish is not None or not new_text.endswith("\ufffd")):
                text = new_text[len(prefix_text):]
                prefix_offset, read_offset = read_offset, len(all_ids)
            else:
                text = ""
            if finish is not None:
                info["finish_reason"] = finish
            yield GeneratedToken(token_id, text, float(logprobs[token_id].item()), token_id in self._special_ids, top_tokens)
            if finish is not None:
                break
            next_input = torch.tensor([[token_id]], dtype=torch.long)
        info["generated_ids"] = generated_ids

    def generate(self, prompt_ids: list[int], **kwargs: Any) -> Generation:
        """Run :meth:`iter_generate` to completion (tests can call this to predict what a request returns)."""
        info: dict[str, Any] = {}
        tokens = list(self.iter_generate(prompt_ids, info=info, **kwargs))
        text = self.tokenizer.decode([t.id for t in tokens], skip_special_tokens=True)
        return Generation(list(prompt_ids), tokens, text, info["finish_reason"], info["seed"])

    def prefill_details(self, prompt_ids: list[int]) -> list[dict[str, Any]]:
        """TGI ``details.prefill``: each prompt token with its logprob given the preceding ones (first is null)."""
        import torch

        out = self._forward(input_ids=torch.tensor([prompt_ids], dtype=torch.long))
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
        texts = self.tokenizer.batch_decode([[i] for i in prompt_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        result = []
        for pos, (tid, text) in enumerate(zip(prompt_ids, texts)):
            lp = None if pos == 0 else _finite(float(logprobs[pos - 1, tid].item()))
            result.append({"id": tid, "text": text, "logprob": lp})
        return result

    def embed(self, texts: list[str], *, pooling: Literal["mean", "none"] = "mean", normalize: bool = True, dimensions: int | None = None) -> list[Any]:
        """Last hidden states of the LM: mean-pooled vector per text (TEI ``/embed``) or per-token vectors (``/embed_all``)."""
        import torch

        results: list[Any] = []
        for text in texts:
            ids = self.prompt_token_ids(text)
            out = self._forward(input_ids=torch.tensor([ids], dtype=torch.long), output_hidden_states=True)
            hidden = out.hidden_states[-1][0].float()
            if dimensions:
                hidden = hidden[:, : int(dimensions)]
            if pooling == "mean":
                vec = hidden.mean(dim=0)
                if normalize:
                    vec = torch.nn.functional.normalize(vec, dim=0)
                results.append(vec.tolist())
            else:
                if normalize:
                    hidden = torch.nn.functional.normalize(hidden, dim=-1)
                results.append(hidden.tolist())
        return results

    # ------------------------------------------------------------------ request plumbing (called by the handler)
    def _record(self, req: RecordedRequest) -> tuple[int, dict[str, Any]] | None:
        with self._state_lock:
            self.requests.append(req)
            if req.method == "POST" and self._fail_queue:
                return self._fail_queue.pop(0)
        return None

    def _take_stream_fault(self) -> StreamFault | None:
        with self._state_lock:
            fault, self._stream_fault = self._stream_fault, None
        return fault

    def _validate_length(self, prompt_len: int, max_new: int) -> None:
        if prompt_len + max_new > self.max_total_tokens:
            raise _HTTPError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                {
                    "error": f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                    f"Given: {prompt_len} `inputs` tokens and {max_new} `max_new_tokens`",
                    "error_type": "validation",
                },
            )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _sse(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "tiny-hf-server/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep pytest output clean
        pass

    @property
    def owner(self) -> HFServer:
        return self.server.owner

    # -------------------------------------------------------------- I/O helpers
    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _start_sse(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop_connection(self) -> None:
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # -------------------------------------------------------------- dispatch
    def _handle(self, method: str) -> None:
        raw = self._read_body() if method == "POST" else b""
        body: Any = None
        parse_error = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                parse_error = str(exc)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        req = RecordedRequest(method, path, {k.lower(): v for k, v in self.headers.items()}, body, raw, time.time())
        injected = self.owner._record(req)
        if injected is not None:
            self._send_json(injected[0], injected[1])
            return
        try:
            if parse_error is not None:
                raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"Failed to deserialize the JSON body: {parse_error}", "error_type": "validation"})
            route = _ROUTES.get((method, path))
            if route is None:
                raise _HTTPError(HTTPStatus.NOT_FOUND, {"error": f"no route for {method} {path}"})
            route(self, body if body is not None else {})
        except _HTTPError as exc:
            self._send_json(exc.status, exc.payload)
        except _StreamAborted:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    # -------------------------------------------------------------- simple GET routes
    def _health(self, _body: Any) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _info(self, _body: Any) -> None:
        o = self.owner
        self._send_json(HTTPStatus.OK, {
            "model_id": o.model_id, "model_sha": None, "model_pipeline_tag": "text-generation", "model_dtype": str(o.model.dtype),
            "model_device_type": "cpu", "max_input_tokens": o.max_total_tokens - 1, "max_total_tokens": o.max_total_tokens,
            "max_best_of": 1, "max_stop_sequences": 4, "validation_workers": 1, "router": "tiny-hf-server", "version": "1.0.0",
        })

    def _models(self, _body: Any) -> None:
        self._send_json(HTTPStatus.OK, {"object": "list", "data": [{"id": self.owner.model_id, "object": "model", "created": 0, "owned_by": "tiny-hf-server"}]})

    # -------------------------------------------------------------- TGI text generation
    def _root(self, body: dict[str, Any]) -> None:
        if isinstance(body, dict) and ("stream" in body or "parameters" in body):
            self._tgi(body, stream=bool(body.get("stream")), compat=True)
        else:
            self._embed(body)

    def _generate(self, body: dict[str, Any]) -> None:
        self._tgi(body, stream=False, compat=False)

    def _generate_stream(self, body: dict[str, Any]) -> None:
        self._tgi(body, stream=True, compat=False)

    def _tgi(self, body: dict[str, Any], *, stream: bool, compat: bool) -> None:
        o = self.owner
        inputs = body.get("inputs")
        if not isinstance(inputs, str):
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "Input validation error: `inputs` must be a string", "error_type": "validation"})
        p = body.get("parameters") or {}
        prompt_ids = o.prompt_token_ids(inputs)
        if p.get("truncate"):
            prompt_ids = prompt_ids[-int(p["truncate"]):]
        max_new = DEFAULT_MAX_NEW_TOKENS if p.get("max_new_tokens") is None else int(p["max_new_tokens"])
        o._validate_length(len(prompt_ids), max_new)
        if stream and p.get("decoder_input_details"):
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "Input validation error: `decoder_input_details` == true is not supported when streaming tokens", "error_type": "validation"})
        gen_kwargs = dict(
            max_new_tokens=max_new, do_sample=bool(p.get("do_sample")), temperature=p.get("temperature"), top_k=p.get("top_k"),
            top_p=p.get("top_p"), seed=p.get("seed"), stop=p.get("stop"), top_n_tokens=int(p.get("top_n_tokens") or 0),
        )
        prefix = inputs if p.get("return_full_text") else ""
        details = bool(p.get("details"))

        if not stream:
            gen = o.generate(prompt_ids, **gen_kwargs)
            resp: dict[str, Any] = {"generated_text": prefix + gen.generated_text}
            if details or p.get("decoder_input_details"):
                d: dict[str, Any] = {
                    "finish_reason": gen.finish_reason,
                    "generated_tokens": len(gen.tokens),
                    "seed": gen.seed,
                    "prefill": o.prefill_details(prompt_ids) if p.get("decoder_input_details") else [],
                    "tokens": [_tok_json(t) for t in gen.tokens],
                }
                if gen_kwargs["top_n_tokens"]:
                    d["top_tokens"] = [t.top_tokens for t in gen.tokens]
                resp["details"] = d
            self._send_json(HTTPStatus.OK, [resp] if compat else resp)
            return

        fault = o._take_stream_fault()
        self._start_sse()
        info: dict[str, Any] = {}
        tokens: list[GeneratedToken] = []
        pending: GeneratedToken | None = None
        for tok in o.iter_generate(prompt_ids, info=info, **gen_kwargs):
            # Emit the previous token now: the last one must carry generated_text/details, known only at the end.
            if pending is not None:
                self._emit_tgi_token(len(tokens), pending, None)
            if fault is not None and len(tokens) == fault.after_tokens:
                fault = self._apply_fault(fault, chat=False)
            tokens.append(tok)
            pending = tok
            if o.token_delay_s:
                time.sleep(o.token_delay_s)
        if pending is not None:
            text = prefix + o.tokenizer.decode([t.id for t in tokens], skip_special_tokens=True)
            final_details = None
            if details:
                final_details = {"finish_reason": info["finish_reason"], "generated_tokens": len(tokens), "seed": info["seed"], "input_length": len(prompt_ids)}
            self._emit_tgi_token(len(tokens), pending, (text, final_details))
        self._end_chunks()

    def _emit_tgi_token(self, index: int, tok: GeneratedToken, final: tuple[str, dict[str, Any] | None] | None) -> None:
        event: dict[str, Any] = {"index": index, "token": _tok_json(tok)}
        if tok.top_tokens:
            event["top_tokens"] = tok.top_tokens
        event["generated_text"] = final[0] if final else None
        event["details"] = final[1] if final else None
        self._chunk(_sse(event))

    def _apply_fault(self, fault: StreamFault, *, chat: bool) -> None:
        """Apply an armed stream fault; returns None (the fault is consumed) or raises to end the stream."""
        if fault.mode == "stall":
            self.owner._release.wait(fault.stall_seconds)
            return None
        if fault.mode == "disconnect":
            self._drop_connection()
            raise _StreamAborted()
        if chat:  # TGI's InferError::into_openai_event, then the usual terminator
            self._chunk(_sse({"error": {"message": fault.message, "http_status_code": 422}}))
            self._chunk(_sse("[DONE]"))
        else:  # TGI generate_stream error event
            self._chunk(_sse({"error": fault.message, "error_type": fault.error_type}))
        self._end_chunks()
        raise _StreamAborted()

    # -------------------------------------------------------------- OpenAI / TGI chat completions
    def _chat(self, body: dict[str, Any]) -> None:
        o = self.owner
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "Input validation error: `messages` must be a non-empty list", "error_type": "validation"})
        if (body.get("n") or 1) != 1:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "Input validation error: only n=1 is supported", "error_type": "validation"})
        prompt_ids = o.chat_prompt_token_ids(messages)
        max_new = body.get("max_completion_tokens") or body.get("max_tokens")
        max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else int(max_new)
        o._validate_length(len(prompt_ids), max_new)
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        want_logprobs = bool(body.get("logprobs"))
        top_logprobs = int(body.get("top_logprobs") or 0) if want_logprobs else 0
        gen_kwargs = dict(
            max_new_tokens=max_new, temperature=body.get("temperature"), top_p=body.get("top_p"), seed=body.get("seed"),
            stop=stop, top_n_tokens=top_logprobs,
        )
        model = body.get("model") or o.model_id
        if model == "tgi":
            model = o.model_id
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())

        def lp_entry(t: GeneratedToken) -> dict[str, Any]:
            return {"token": t.text, "logprob": _finite(t.logprob), "top_logprobs": [{"token": x["text"], "logprob": x["logprob"]} for x in t.top_tokens]}

        if not body.get("stream"):
            gen = o.generate(prompt_ids, **gen_kwargs)
            self._send_json(HTTPStatus.OK, {
                "object": "chat.completion", "id": completion_id, "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.generated_text},
                    "logprobs": {"content": [lp_entry(t) for t in gen.tokens]} if want_logprobs else None,
                    "finish_reason": _chat_finish(gen.finish_reason),
                }],
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(gen.tokens), "total_tokens": len(prompt_ids) + len(gen.tokens)},
            })
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        fault = o._take_stream_fault()
        self._start_sse()

        def chunk(tok: GeneratedToken, finish: str | None) -> dict[str, Any]:
            return {
                "object": "chat.completion.chunk", "id": completion_id, "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{
                    "index": 0,
                    "delta": {"role": "assistant", "content": "" if tok.special else tok.text},
                    "logprobs": {"content": [lp_entry(tok)]} if want_logprobs else None,
                    "finish_reason": finish,
                }],
                "usage": None,
            }

        info: dict[str, Any] = {}
        n = 0
        pending: GeneratedToken | None = None
        for tok in o.iter_generate(prompt_ids, info=info, **gen_kwargs):
            if pending is not None:
                self._chunk(_sse(chunk(pending, None)))
            if fault is not None and n == fault.after_tokens:
                fault = self._apply_fault(fault, chat=True)
            n += 1
            pending = tok
            if o.token_delay_s:
                time.sleep(o.token_delay_s)
        if pending is not None:
            self._chunk(_sse(chunk(pending, _chat_finish(info["finish_reason"]))))
        if include_usage:
            self._chunk(_sse({
                "object": "chat.completion.chunk", "id": completion_id, "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [],
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n, "total_tokens": len(prompt_ids) + n},
            }))
        self._chunk(_sse("[DONE]"))
        self._end_chunks()

    # -------------------------------------------------------------- embeddings
    def _embed_inputs(self, body: dict[str, Any], key: str) -> tuple[list[str], bool]:
        inputs = body.get(key)
        if isinstance(inputs, str):
            return [inputs], True
        if isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs):
            return inputs, False
        raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"Input validation error: `{key}` must be a string or a list of strings", "error_type": "validation"})

    def _embed(self, body: dict[str, Any]) -> None:
        texts, _ = self._embed_inputs(body, "inputs")
        normalize = True if body.get("normalize") is None else bool(body["normalize"])
        self._send_json(HTTPStatus.OK, self.owner.embed(texts, pooling="mean", normalize=normalize, dimensions=body.get("dimensions")))

    def _embed_all(self, body: dict[str, Any]) -> None:
        texts, _ = self._embed_inputs(body, "inputs")
        self._send_json(HTTPStatus.OK, self.owner.embed(texts, pooling="none", normalize=False))

    def _openai_embeddings(self, body: dict[str, Any]) -> None:
        texts, _ = self._embed_inputs(body, "input")
        vecs = self.owner.embed(texts, pooling="mean", normalize=True, dimensions=body.get("dimensions"))
        n_tokens = sum(len(self.owner.prompt_token_ids(t)) for t in texts)
        self._send_json(HTTPStatus.OK, {
            "object": "list", "model": body.get("model") or self.owner.model_id,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })


def _tok_json(t: GeneratedToken) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": _finite(t.logprob), "special": t.special}


def _chat_finish(reason: str) -> str:
    """TGI maps eos_token -> "stop" for chat; OpenAI clients also expect "stop" for stop sequences."""
    return "length" if reason == "length" else "stop"


_ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/health"): _Handler._health,
    ("GET", "/"): _Handler._health,
    ("GET", "/info"): _Handler._info,
    ("GET", "/v1/models"): _Handler._models,
    ("POST", "/"): _Handler._root,
    ("POST", "/generate"): _Handler._generate,
    ("POST", "/generate_stream"): _Handler._generate_stream,
    ("POST", "/v1/chat/completions"): _Handler._chat,
    ("POST", "/chat/completions"): _Handler._chat,
    ("POST", "/embed"): _Handler._embed,
    ("POST", "/embed_all"): _Handler._embed_all,
    ("POST", "/v1/embeddings"): _Handler._openai_embeddings,
}
