"""Soak: the zero-code vLLM server under a steady load with one fault injected per run, and what
reached the backend: per fault, requests finished (answered), request spans delivered to a real
collector, spans counted as dropped (`traceai.telemetry.dropped{signal=traces}`, by reason), and
delivered + counted - finished (0: every span accounted for; > 0: counted though delivered, the
at-least-once edge; < 0: lost silently). Also the server's stop time after its last answer, the
request latency (p50 / p99), and the peak RSS of the API server and of its export process.

Faults (one server run each; the tiny random Llama on the CPU, as the tests use):
  none       no fault (the baseline for latency and memory)
  restart    the collector killed `--outage-s` seconds into the load and restarted on its ports
  blackhole  the traces endpoint takes connections and never answers (metrics to the collector)
  sigkill    the API server's export process SIGKILLed halfway through the load
  sigint     Ctrl-C: SIGINT to the server's process group right after its last answer
  sigterm    SIGTERM to the process group right after its last answer

    .venv/bin/python benchmarks/soak_faults.py --requests 2000 --concurrency 48 --rate 100
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fi_evals_core.testing import tiny_models
from fi_evals_core.testing.accounting import complete, counted, delivered
from fi_evals_core.testing.collector import RotelCollector
from fi_evals_core.testing.servers import Blackhole, wait_until
from fi_evals_core.testing.vllm_server import vllm_server

SERVICE = "soak-server"
EXPORT_CHILD = "export_process import child_main"
FAULTS = ("none", "restart", "blackhole", "sigkill", "sigint", "sigterm")


class PeakRss:
    """The peak RSS of the API server and of its export process, sampled every 0.5 s."""

    def __init__(self, server) -> None:
        import psutil

        self.server_mib = self.child_mib = 0.0
        self._psutil = psutil
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        psutil = self._psutil
        while not self._stop.wait(0.5):
            try:
                parent = psutil.Process(self._server.process.pid)
                self.server_mib = max(self.server_mib, parent.memory_info().rss / 2**20)
                for pid in self._server.children(EXPORT_CHILD, recursive=False):
                    self.child_mib = max(self.child_mib, psutil.Process(pid).memory_info().rss / 2**20)
            except psutil.Error:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def paced_load(base_url: str, requests: int, concurrency: int, rate: float) -> tuple[list[str], list[float], int]:
    """`requests` completions at most `rate` per second from `concurrency` threads: the ids answered,
    each request's latency (s), and how many failed."""
    ids: list[str] = []
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    start = time.monotonic()

    def one(i: int) -> None:
        nonlocal failures
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        began = time.monotonic()
        try:
            answer = complete(base_url, i)
        except Exception:
            with lock:
                failures += 1
            return
        with lock:
            ids.append(answer)
            latencies.append(time.monotonic() - began)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return ids, latencies, failures


def run_fault(fault: str, args: argparse.Namespace, model: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "VLLM_", "TRACEAI_"))}
    env.update({"TRACEAI_VLLM_AUTO": "1", "OTEL_SERVICE_NAME": SERVICE, "OTEL_METRIC_EXPORT_INTERVAL": "2000",
                "HF_HUB_OFFLINE": "1", "TRACEAI_EXPORT_PROCESS": "0" if args.in_process else "1"})
    if args.buffer_spans is not None:
        env["TRACEAI_EXPORT_BUFFER_SPANS"] = str(args.buffer_spans)
    hole = Blackhole() if fault == "blackhole" else None
    with RotelCollector(work / f"rotel-{fault}") as collector:
        env.update(collector.otel_env("grpc"))
        if hole is not None:
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = hole.endpoint
        with vllm_server(sys.executable, model, env, work / f"server-{fault}.log",
                         args=("--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
                               "--max-num-seqs", str(args.concurrency),
                               "--kv-cache-memory-bytes", str(256 * 2**20))) as server:
            rss = PeakRss(server)
            # the load runs on a thread; faults are injected from this one (a collector started
            # from a thread that ends would get its parent-death signal with it)
            result: list = []
            load_start = time.monotonic()
            loader = threading.Thread(target=lambda: result.append(
                paced_load(server.base_url, args.requests, args.concurrency, args.rate)))
            loader.start()
            if fault == "restart":
                time.sleep(2.0)
                collector.kill()
                time.sleep(args.outage_s)
                collector.restart()
            elif fault == "sigkill":
                time.sleep(args.requests / args.rate / 2)
                for pid in server.children(EXPORT_CHILD, recursive=False):
                    os.kill(pid, signal.SIGKILL)
            loader.join()
            load_s = time.monotonic() - load_start
            ids, latencies, failures = result[0]
            stop_start = time.monotonic()
            status = server.stop(signal.SIGINT if fault == "sigint" else signal.SIGTERM, timeout_s=120)
            stop_s = time.monotonic() - stop_start
            rss.stop()
        answered = set(ids)
        try:
            wait_until(lambda: len(delivered(collector, SERVICE) & answered)
                       + sum(counted(collector, SERVICE).values()) >= len(answered), 120, "every span accounted for")
        except AssertionError as missing:
            print(f"  {fault}: {missing}", file=sys.stderr)
        got, drops = len(delivered(collector, SERVICE) & answered), counted(collector, SERVICE)
    if hole is not None:
        hole.close()
    latencies.sort()
    return {"fault": fault, "finished": len(answered), "failed": failures, "delivered": got,
            "counted": drops, "balance": got + sum(drops.values()) - len(answered), "load_s": load_s,
            "stop_s": stop_s, "stopped_by_itself": status is not None,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
            "server_mib": rss.server_mib, "child_mib": rss.child_mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second at most")
    parser.add_argument("--outage-s", type=float, default=15.0, help="the collector's outage (restart)")
    parser.add_argument("--in-process", action="store_true",
                        help="TRACEAI_EXPORT_PROCESS=0: export from the API server itself (sigkill then has nothing to kill)")
    parser.add_argument("--buffer-spans", type=int, help="TRACEAI_EXPORT_BUFFER_SPANS for the server (default: its own)")
    parser.add_argument("--work-dir", help="keep the servers' and collectors' logs here (default: a temporary folder)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))} (known: {', '.join(FAULTS)})")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = Path(tiny_models.build_llama(work / "llama"))
        rows = []
        for fault in faults:
            row = run_fault(fault, args, model, work)
            rows.append(row)
            print(f"  {fault}: {row}", file=sys.stderr, flush=True)
    print(f"{args.requests} requests at concurrency {args.concurrency}, at most {args.rate:g}/s; "
          f"outage {args.outage_s:g} s (restart); "
          f"{'in-process export' if args.in_process else 'export process'}"
          + (f"; TRACEAI_EXPORT_BUFFER_SPANS={args.buffer_spans}" if args.buffer_spans is not None else ""))
    print("| fault | finished | failed | delivered | counted (reason) | delivered + counted - finished "
          "| load s | stop s | p50 / p99 ms | server / export process peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(r["counted"].items())) or "0"
        stop = f"{r['stop_s']:.1f}" + ("" if r["stopped_by_itself"] else " (SIGKILLed)")
        print(f"| {r['fault']} | {r['finished']} | {r['failed']} | {r['delivered']} | {reasons} | {r['balance']} "
              f"| {r['load_s']:.1f} | {stop} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} "
              f"| {r['server_mib']:.0f} / {r['child_mib']:.0f} |")
    return 0 if all(r["balance"] >= 0 and r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
