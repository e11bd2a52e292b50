"""A real vLLM OpenAI server on 127.0.0.1, for tests: started in a session of its own (so its
EngineCore and workers can be stopped together), ready once `/health` answers, stopped with
SIGTERM to its process group (SIGKILL after 30 s), or by the test with the signal it chooses."""

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

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        """`sig` to the server's process group (SIGINT: what Ctrl-C in its terminal sends); its exit
        status, or None when it had not exited within `timeout_s` and was SIGKILLed."""
        if self.process.poll() is not None:
            return self.process.returncode
        try:
            os.killpg(self.process.pid, sig)  # the server, its EngineCore and workers
            return self.process.wait(timeout=timeout_s)
        except ProcessLookupError:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            return None

    def children(self, marker: str, recursive: bool = True) -> list[int]:
        """The pids of the server's child processes (`recursive`: descendants) whose command line
        holds `marker`."""
        import psutil

        found = []
        for child in psutil.Process(self.process.pid).children(recursive=recursive):
            with contextlib.suppress(psutil.Error):
                if marker in " ".join(child.cmdline()):
                    found.append(child.pid)
        return found


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
        server.stop()
