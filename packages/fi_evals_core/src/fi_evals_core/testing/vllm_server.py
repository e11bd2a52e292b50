"""A real vLLM OpenAI server on 127.0.0.1, for tests: started in a session of its own (so its
EngineCore and workers can be stopped together), ready once `/health` answers, stopped with
SIGTERM to its process group (SIGKILL after 30 s)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .servers import free_port, wait_for_http

# a tiny model on the CPU: float32, no graph capture, a small KV cache
CPU_ARGS = ("--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "4",
            "--kv-cache-memory-bytes", str(64 * 2**20))


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def vllm_server(python: str, model_dir: str | Path, env: Mapping[str, str], log: Path,
                served_model_name: str = "tiny-llama", args: Sequence[str] = CPU_ARGS,
                module: str = "vllm.entrypoints.openai.api_server",
                ready_timeout_s: float = 240) -> Iterator[RunningServer]:
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [python, "-m", module, "--model", str(model_dir), "--served-model-name",
             served_model_name, "--host", "127.0.0.1", "--port", str(port), *args],
            env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_for_http(f"{server.base_url}/health", proc, ready_timeout_s, log, "vLLM server")
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server, its EngineCore and workers
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
