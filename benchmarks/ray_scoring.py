"""Scoring on Ray against scoring locally, on this machine: rows per second, the cost Ray adds per
row, and the driver's memory as the dataset grows (issue 17, section 4).

Part 1, throughput. The QAGS-XSum items (`../shared/data/qags_xsum.json`: the summary as the
response, its whole document as the reference; the 239 items cycled to `--rows` rows, each with a
unique `id` column, the row id of both paths) as one JSONL file, scored with `factual_consistency`
by four variants, each run in a fresh process of its own:

* `local-1thread`, `local-2threads`: what `fi-evals run DATA.jsonl --id-column id -o out.parquet`
  does: `Dataset.from_jsonl(...).add_evaluation(FactualConsistency(...)).run(batch_size=64)` and
  `save(...)`, with `OMP_NUM_THREADS` and `torch.set_num_threads` 1 or 2.
* `ray-1actor`, `ray-2actors`: the streaming folder path (`fi-evals run DATA.jsonl --ray --actors N
  --id-column id -o FOLDER/`): `ray_stream.score_files_on_ray(..., actors=N, batch_size=64)` into a
  fresh results folder, on a Ray this process starts on 127.0.0.1 and stops. Each scorer actor holds
  one CPU and loads its own model. `OMP_NUM_THREADS=1` is set in the driver's environment, which the
  local Ray and its workers inherit, so each actor's torch runs one thread: a probe actor with the
  scorer actors' resources (`num_cpus=1`) reports `torch.get_num_threads()` before the timing. (Ray
  sets `OMP_NUM_THREADS` to an actor's `num_cpus`, 1 here, when the variable is unset: the same.)

Two more, only when named, isolate why `ray-2actors` can fall short: `ray-2actors-64rowfiles` (the
same rows as a folder of 64-row files) and `ray-2actors-smallblocks` (Ray Data's
`target_max_block_size` lowered to 192 KiB in the driver, about 64 of these rows a block; Ray Data
hands each actor whole blocks, and the streaming read otherwise makes one block of every row of a
small file, so one actor scores them all).

Every variant runs the same model in bf16 (`FI_EVALS_DTYPE=bfloat16`, which Ray ships to the
actors with the other `FI_EVALS_*` variables). End to end is the wall time of the whole process as
the user sees it (interpreter, imports, Ray's start and stop, model loading, reading, scoring,
writing). Steady state comes from two dataset sizes run back to back in each round: `--small-rows`
(default 240, one pass over the 239 items) and `--rows` (default 1,200); steady rows/s = (rows -
small rows) / (T(rows) - T(small rows)). The fixed cost (start-up, loading, shut-down, the first
batches) cancels in the difference, whatever its form, and the rows in the difference are the same
mix of items; the fixed cost is then T(rows) - rows / steady. The cost Ray adds per row is
1 / steady(ray-2actors) - 1 / steady(best local) (and end to end: the difference of the two
wall times over the rows, start-up included). Rounds alternate the order of the variants (rotated,
reversed every other round) and of the two sizes; medians over rounds (of each round's difference,
for steady state).

The model: by default (`--model small`) a random DeBERTa-v3 sequence classifier with the
configuration of `cross-encoder/nli-deberta-v3-base` (relative attention with 256 buckets, p2c+c2p,
shared keys, the 128,100-token vocabulary, 512 positions; the tokenizer of `nli_throughput.py`,
trained on these documents, so pairs have realistic lengths), narrowed to hidden 256, 4 layers,
4 heads, FFN 1,024: about 20x less work per token than the base model, so a thousand rows take about
a minute on 2 cores instead of about seven. Ray's costs are per row and per run, not per FLOP: with a
bigger model the same absolute cost is a smaller share, so the ratio measured with the small model is
the harder test. `--model base` runs the real architecture (`nli_throughput.build_assets`), `--model
xsmall` the shape of `cross-encoder/nli-deberta-v3-xsmall` (hidden 384, 12 layers, 6 heads).

Part 2, the driver's memory. Synthetic unique rows (a two-sentence document and a one-sentence
summary each; no id column, so row ids are digests, the CLI's default) at `--memory-rows` (1k, 10k,
100k) scored by a tiny random BERT NLI model (`fi_evals_core.testing.tiny_nli`; the driver's memory
does not depend on the model, and 100k rows then take about a minute) on Ray with 2 actors. For each
size one fresh process calls `score_files_on_ray` and reports its own peak RSS
(`getrusage(RUSAGE_SELF).ru_maxrss`: the driver only; Ray's processes are others) and its RSS just
before the call. Flat means the 100k figure within a few MB of the 1k one. For contrast (`--in-memory`,
on by default) the same rows through `Dataset.from_jsonl(...).run(backend="ray", actors=2)`, which
holds every row and result in the driver.

    python benchmarks/ray_scoring.py                  # ~15 min on 2 cores
    python benchmarks/ray_scoring.py --rows 2400 --rounds 3 --parts throughput
    python benchmarks/ray_scoring.py --parts memory --memory-rows 1000,100000 --no-in-memory

The last line is the ratio: ray-2actors' steady and end-to-end rows/s to the best local variant's
(the goal: at least 0.90). Measured results (date, command, machine): benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO_ROOT, fmt, median, quartiles, round_order, worker_pipe  # noqa: E402
from nli_throughput import ARCH, DEFAULT_CACHE, DEFAULT_DATA, LABELS, build_assets  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "local-1thread": {"backend": "local", "threads": 1},
    "local-2threads": {"backend": "local", "threads": 2},
    "ray-1actor": {"backend": "ray", "actors": 1, "threads": 1},
    "ray-2actors": {"backend": "ray", "actors": 2, "threads": 1},
    # only when named: the same rows as a folder of 64-row files (one read block per file)
    "ray-2actors-64rowfiles": {"backend": "ray", "actors": 2, "threads": 1, "rows_per_input_file": 64},
    # only when named: Ray Data's target block size lowered to 192 KiB in the driver (about 64 QAGS rows)
    "ray-2actors-smallblocks": {"backend": "ray", "actors": 2, "threads": 1, "block_bytes": 192 << 10},
}
DEFAULT_VARIANTS = "local-1thread,local-2threads,ray-1actor,ray-2actors"
MODELS: dict[str, dict[str, Any] | None] = {
    "base": None,  # nli_throughput's model as it is
    "xsmall": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                   pooler_hidden_size=384),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  pooler_hidden_size=256),
}
BATCH_ROWS = 64
MAPPING = {"reference": "document", "response": "summary"}
EVALUATION = "fc"


# -- data and models ------------------------------------------------------------------------------

def qags_rows(data: Path, n: int) -> list[dict[str, str]]:
    items = json.loads(Path(data).read_text())
    return [{"id": f"r{i:07d}", "document": items[i % len(items)]["document"],
             "summary": items[i % len(items)]["summary"]} for i in range(n)]


def synthetic_rows(n: int) -> Any:
    """Unique short rows (their digests differ): the driver's memory, not the model, is measured."""
    subjects = ("The council", "A local firm", "The club", "Police", "The school", "Ministers", "The hospital")
    verbs = ("approved", "rejected", "delayed", "announced", "reviewed", "funded", "opened")
    for i in range(n):
        s, v = subjects[i % 7], verbs[(i // 7) % 7]
        yield {"document": f"{s} {v} plan number {i} on Monday. It will cost {i % 997} thousand pounds.",
               "summary": f"{s} {v} plan {i}."}


def write_jsonl(rows: Any, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def write_jsonl_folder(rows: list[dict[str, Any]], folder: Path, per_file: int) -> Path:
    folder.mkdir()
    for first in range(0, len(rows), per_file):
        write_jsonl(rows[first:first + per_file], folder / f"rows-{first:08d}.jsonl")
    return folder


def build_model(name: str, data: Path, cache: Path) -> Path:
    """The random model `name` (see MODELS), built once into `cache`."""
    base = build_assets(data, cache)
    over = MODELS[name]
    if over is None:
        return base
    target = cache / f"nli-deberta-v3-{name}-random-v1"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    tmp = Path(tempfile.mkdtemp(dir=cache))
    for f in base.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config")):
            shutil.copy(f, tmp)  # the tokenizer
    config = DebertaV2Config(**{**ARCH, **over}, num_labels=3, id2label=dict(enumerate(LABELS)),
                             label2id={n: i for i, n in enumerate(LABELS)},
                             pad_token_id=json.loads((base / "config.json").read_text())["pad_token_id"])
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(config).eval().save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def build_tiny_model(cache: Path) -> Path:
    target = cache / "tiny-bert-nli-v1"
    if not (target / "model.safetensors").exists():
        from fi_evals_core.testing.tiny_nli import build_nli_checkpoint

        tmp = Path(tempfile.mkdtemp(dir=cache))
        build_nli_checkpoint(tmp, "bert")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


# -- workers (one process per run) ----------------------------------------------------------------

def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process's own peak RSS: `VmHWM`, the high-water mark of its address space since its exec.
    (`getrusage(RUSAGE_SELF).ru_maxrss` is the same on a process of its own, except that Linux
    carries it over `exec` from the forked parent's copy: a worker started by a parent of 550 MB
    reports at least 550 MB.) Both are given; VmHWM is the one in the table."""
    return _status_mb("VmHWM")


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _evaluations(model_dir: str, first_rows: list[dict[str, Any]]) -> list[Any]:
    from fi_evals_core.evals.dataset import Dataset
    from fi_evals_core.evals.evaluators import FactualConsistency

    return Dataset(first_rows).add_evaluation(FactualConsistency(model=model_dir, device="cpu"), MAPPING,
                                              name=EVALUATION).evaluations


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from fi_evals_core.evals.dataset import Dataset
    from fi_evals_core.evals.evaluators import FactualConsistency

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dataset = Dataset.from_jsonl(args.input, id_column=args.id_column).add_evaluation(
        FactualConsistency(model=args.model_dir, device="cpu"), MAPPING, name=EVALUATION)
    results = dataset.run(batch_size=BATCH_ROWS, progress=False)
    dataset.save(Path(args.output) / "results.parquet")
    scored = sum(1 for r in results if r.get(f"{EVALUATION}.score") is not None)
    return {"rows": len(results), "scored": scored, "threads": torch.get_num_threads(),
            "run_s": time.perf_counter() - start}


def run_ray(args: argparse.Namespace) -> dict[str, Any]:
    from itertools import islice

    from fi_evals_core.evals.dataset import iter_file_rows
    from fi_evals_core.evals.ray_stream import input_files, score_files_on_ray

    if args.block_bytes:  # Ray Data ships the driver's DataContext to its tasks
        import ray.data

        ray.data.DataContext.get_current().target_max_block_size = args.block_bytes
    before = _rss_mb()
    start = time.perf_counter()
    first = input_files(args.input)[0]  # as the CLI does: the columns, from the first file's rows
    evaluations = _evaluations(args.model_dir, list(islice(iter_file_rows(first), 100)))
    run = score_files_on_ray(args.input, evaluations, args.output, id_column=args.id_column, batch_size=BATCH_ROWS,
                             actors=args.actors, progress=False)
    scored, _passed, errors = run.evaluations[EVALUATION]
    return {"rows": run.rows, "scored": scored, "errors": errors, "written": run.written,
            "run_s": time.perf_counter() - start, "rss_before_mb": before, "peak_rss_mb": _peak_rss_mb(),
            "ru_maxrss_mb": _ru_maxrss_mb()}


def run_in_memory(args: argparse.Namespace) -> dict[str, Any]:
    from fi_evals_core.evals.dataset import Dataset
    from fi_evals_core.evals.evaluators import FactualConsistency

    before = _rss_mb()
    start = time.perf_counter()
    dataset = Dataset.from_jsonl(args.input).add_evaluation(FactualConsistency(model=args.model_dir, device="cpu"),
                                                            MAPPING, name=EVALUATION)
    results = dataset.run(batch_size=BATCH_ROWS, progress=False, backend="ray", actors=args.actors)
    scored = sum(1 for r in results if r.get(f"{EVALUATION}.score") is not None)
    return {"rows": len(results), "scored": scored, "run_s": time.perf_counter() - start,
            "rss_before_mb": before, "peak_rss_mb": _peak_rss_mb(), "ru_maxrss_mb": _ru_maxrss_mb()}


def probe_ray_threads(args: argparse.Namespace) -> dict[str, Any]:
    """torch's threads in an actor holding what a scorer actor holds (`num_cpus=1`), on a Ray
    started as `score_files_on_ray` starts it, from this process's environment."""
    from fi_evals_core.evals.ray_backend import _require_ray, connect

    ray = _require_ray()
    started = connect(None)
    try:
        @ray.remote(num_cpus=1)
        class Probe:
            def threads(self) -> dict[str, Any]:
                import torch

                return {"torch_threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}

        return ray.get(Probe.remote().threads.remote())
    finally:
        if started:
            ray.shutdown()


def build_models(args: argparse.Namespace) -> dict[str, Any]:
    """Built in a worker, so that the driver stays small: a worker's `ru_maxrss` starts from the
    driver's size (Linux carries it over `exec`)."""
    cache = Path(args.cache)
    parts = args.parts.split(",")
    return {"model": str(build_model(args.model, Path(args.data), cache)) if "throughput" in parts else None,
            "tiny": str(build_tiny_model(cache)) if "memory" in parts else None}


def worker_main(args: argparse.Namespace) -> None:
    send = worker_pipe()
    try:
        reply = {"local": run_local, "ray": run_ray, "in-memory": run_in_memory, "probe": probe_ray_threads,
                 "build": build_models}[args.worker](args)
    except Exception as exc:  # noqa: BLE001 - reported to the driver
        import traceback

        traceback.print_exc()
        reply = {"error": repr(exc)}
    send(reply)
    send.flush()  # type: ignore[attr-defined]


# -- driver ---------------------------------------------------------------------------------------

def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class Runner:
    """Starts one worker process per run and times it from spawn to exit."""

    def __init__(self, python: str, logdir: Path) -> None:
        self.python = python
        self.logdir = logdir
        self.count = 0

    def run(self, kind: str, env_extra: dict[str, str], timeout: float, **options: Any) -> dict[str, Any]:
        from fi_evals_core.evals.ray_backend import LOCAL_ENVIRONMENT

        env = {**os.environ, **LOCAL_ENVIRONMENT, **env_extra}
        for name in ("FI_EVALS_FUSED", "FI_EVALS_ACCELERATION"):
            env.pop(name, None)
        if "OMP_NUM_THREADS" not in env_extra:
            env.pop("OMP_NUM_THREADS", None)
        cmd = [self.python, str(Path(__file__).resolve()), "--worker", kind]
        for key, value in options.items():
            if value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        self.count += 1
        log = self.logdir / f"{self.count:03d}-{kind}.log"
        start = time.perf_counter()
        with log.open("w") as err:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(REPO_ROOT),
                                  timeout=timeout)
        wall = time.perf_counter() - start
        lines = proc.stdout.strip().splitlines()
        reply = json.loads(lines[-1]) if lines else {"error": f"no reply (exit {proc.returncode})"}
        if "error" in reply or proc.returncode:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{kind} {options}: {reply.get('error')} (exit {proc.returncode}); log tail:\n{tail}")
        return {**reply, "wall": wall}


def variant_env(variant: str, model_dtype: str) -> dict[str, str]:
    spec = VARIANTS[variant]
    return {"OMP_NUM_THREADS": str(spec["threads"]), "FI_EVALS_DTYPE": model_dtype, "FI_EVALS_DEVICE": "cpu",
            "TOKENIZERS_PARALLELISM": "false"}


def throughput(args: argparse.Namespace, runner: Runner, workdir: Path, model_dir: Path) -> dict[str, Any]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    sizes = {"small": args.small_rows, "big": args.rows}
    inputs = {k: write_jsonl(qags_rows(Path(args.data), n), workdir / f"qags-{n}.jsonl") for k, n in sizes.items()}
    folders = {k: write_jsonl_folder(qags_rows(Path(args.data), n), workdir / f"qags-{n}-by-64", 64)
               for k, n in sizes.items()} if any("rows_per_input_file" in VARIANTS[v] for v in variants) else {}
    if any(VARIANTS[v]["backend"] == "ray" for v in variants):
        probe = runner.run("probe", variant_env("ray-2actors", args.dtype), 300)
        print(f"threads in a Ray actor with num_cpus=1 (OMP_NUM_THREADS=1 in the driver's environment): "
              f"torch {probe['torch_threads']}, OMP_NUM_THREADS={probe['omp']}", flush=True)
    walls: dict[str, dict[str, list[float]]] = {v: {"small": [], "big": []} for v in variants}
    info: dict[str, dict[str, Any]] = {}
    for r in range(args.rounds):
        for v in round_order(variants, r):
            spec = VARIANTS[v]
            for size in (("small", "big") if r % 2 == 0 else ("big", "small")):
                out = workdir / f"out-{v}-{size}-{r}"
                out.mkdir()
                kind = "local" if spec["backend"] == "local" else "ray"
                source = folders[size] if "rows_per_input_file" in spec else inputs[size]
                reply = runner.run(kind, variant_env(v, args.dtype), args.timeout, input=source,
                                   output=out if kind == "local" else out / "folder", model_dir=model_dir,
                                   threads=spec["threads"], actors=spec.get("actors"), id_column="id",
                                   block_bytes=spec.get("block_bytes"))
                n = sizes[size]
                if reply["rows"] != n or reply["scored"] != n:
                    raise RuntimeError(f"{v}: {reply['rows']} rows, {reply['scored']} scored, of {n}")
                walls[v][size].append(reply["wall"])
                info[v] = reply
                shutil.rmtree(out, ignore_errors=True)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v} {walls[v]['small'][-1]:.1f}/{walls[v]['big'][-1]:.1f} s" for v in variants)
            + f" ({sizes['small']}/{sizes['big']} rows; load {_load():.1f})", flush=True)

    rows_small, rows_big = sizes["small"], sizes["big"]
    table: dict[str, dict[str, float]] = {}
    for v in variants:
        diffs = [b - s for s, b in zip(walls[v]["small"], walls[v]["big"])]
        steady = [(rows_big - rows_small) / d if d > 0 else float("nan") for d in diffs]
        t_big = median(walls[v]["big"])
        steady_med = (rows_big - rows_small) / median(diffs) if median(diffs) > 0 else float("nan")
        table[v] = {"e2e": rows_big / t_big, "t_big": t_big, "t_small": median(walls[v]["small"]),
                    "steady": steady_med, "steady_q": quartiles(steady), "fixed": t_big - rows_big / steady_med,
                    "e2e_q": tuple(rows_big / t for t in reversed(quartiles(walls[v]["big"])))}
    print()
    print(f"| variant | end-to-end rows/s ({rows_big} rows) [q1, q3] | s for {rows_small} / {rows_big} rows | "
          f"steady rows/s [q1, q3] | fixed s | ms per row (steady) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for v in variants:
        t = table[v]
        print(f"| {v} | {t['e2e']:.2f} [{fmt(t['e2e_q'][0], '.2f')}, {fmt(t['e2e_q'][1], '.2f')}] | "
              f"{t['t_small']:.1f} / {t['t_big']:.1f} | {fmt(t['steady'], '.2f')} [{fmt(t['steady_q'][0], '.2f')}, "
              f"{fmt(t['steady_q'][1], '.2f')}] | {fmt(t['fixed'], '.1f')} | {fmt(1000 / t['steady'], '.1f')} |")
    return {"variants": variants, "table": table, "walls": walls, "sizes": sizes}


def memory(args: argparse.Namespace, runner: Runner, workdir: Path, tiny: Path) -> dict[str, Any]:
    sizes = [int(x) for x in args.memory_rows.split(",") if x.strip()]
    kinds = ["ray"] + (["in-memory"] if args.in_memory else [])
    results: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in kinds}
    env = {"OMP_NUM_THREADS": "1", "FI_EVALS_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    for n in sizes:
        data = write_jsonl(synthetic_rows(n), workdir / f"synthetic-{n}.jsonl")
        for kind in kinds:
            out = workdir / f"mem-{kind}-{n}"
            reply = runner.run(kind, env, args.timeout, input=data, output=out, model_dir=tiny, actors=2)
            if reply["rows"] != n or reply["scored"] != n:
                raise RuntimeError(f"{kind} at {n} rows: {reply['rows']} rows, {reply['scored']} scored")
            results[kind][n] = reply
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {kind} {n} rows: peak RSS {reply['peak_rss_mb']:.1f} MB (VmHWM; ru_maxrss "
                  f"{reply['ru_maxrss_mb']:.1f} MB), {n / reply['run_s']:.0f} rows/s "
                  f"(load {_load():.1f})", flush=True)
        data.unlink()
    print()
    label = {"ray": "score_files_on_ray (streaming)", "in-memory": 'Dataset.run(backend="ray")'}
    print("| rows | " + " | ".join(f"{label[k]}: peak RSS MB (before the call) | rows/s" for k in kinds) + " |")
    print("| --- | " + " | ".join("--- | ---" for _ in kinds) + " |")
    for n in sizes:
        cells = []
        for k in kinds:
            r = results[k][n]
            cells.append(f"{r['peak_rss_mb']:.1f} ({r['rss_before_mb']:.1f}) | {n / r['run_s']:.0f}")
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    lo, hi = min(sizes), max(sizes)
    for k in kinds:
        growth = results[k][hi]["peak_rss_mb"] - results[k][lo]["peak_rss_mb"]
        print(f"driver peak RSS, {label[k]}: {growth:+.1f} MB from {lo:,} to {hi:,} rows")
    return {k: {str(n): v for n, v in r.items()} for k, r in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="QAGS-XSum JSON (default: ../shared/data)")
    parser.add_argument("--parts", default="throughput,memory", help="throughput, memory or both")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--rows", type=int, default=1200, help="rows of the big throughput run")
    parser.add_argument("--small-rows", type=int, default=240, help="rows of the small run (steady = the difference)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--memory-rows", default="1000,10000,100000")
    parser.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure Dataset.run(backend='ray') (holds every row)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the random models are built once")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs")
    for hidden in ("--worker", "--input", "--output", "--model-dir", "--id-column"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--block-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return 0

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"throughput", "memory"}:
        parser.error("--parts: throughput, memory or both")
    unknown = [v for v in args.variants.split(",") if v.strip() and v.strip() not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if not 0 < args.small_rows < args.rows:
        parser.error("--small-rows must be between 0 and --rows")
    data = Path(args.data)
    if "throughput" in parts and not data.exists():
        parser.error(f"{data} not found: pass --data PATH to the QAGS-XSum JSON (ctc-gen-eval's qags_xsum.json)")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ray-scoring-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    runner = Runner(args.python, logdir)
    report: dict[str, Any] = {}
    print(f"{os.cpu_count()} CPUs, load {_load():.2f}", flush=True)
    try:
        built = runner.run("build", {}, args.timeout, model=args.model, data=data, cache=cache,
                           parts=",".join(sorted(parts)))
        if "throughput" in parts:
            model_dir = Path(built["model"])
            print(f"throughput: model {model_dir.name} ({args.dtype}), {args.small_rows} and {args.rows} QAGS-XSum "
                  f"rows, batch {BATCH_ROWS}, {args.rounds} rounds", flush=True)
            report["throughput"] = throughput(args, runner, workdir, model_dir)
        if "memory" in parts:
            tiny = Path(built["tiny"])
            print("\ndriver memory: tiny random BERT NLI model, 2 actors, synthetic rows", flush=True)
            report["memory"] = memory(args, runner, workdir, tiny)
    finally:
        if args.keep:
            print(f"logs in {logdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if "throughput" in report:
        table = report["throughput"]["table"]
        local = [v for v in table if VARIANTS[v]["backend"] == "local"]
        if "ray-2actors" in table and local:
            ray2 = table["ray-2actors"]
            best_steady = max(local, key=lambda v: table[v]["steady"])
            best_e2e = max(local, key=lambda v: table[v]["e2e"])
            per_row_ms = 1000 * (1 / ray2["steady"] - 1 / table[best_steady]["steady"])
            e2e_ms = 1000 * (ray2["t_big"] - table[best_e2e]["t_big"]) / report["throughput"]["sizes"]["big"]
            print()
            print(f"cost Ray adds per row (ray-2actors against {best_steady}): {per_row_ms:+.2f} ms steady; "
                  f"end to end (against {best_e2e}, start-up included): {e2e_ms:+.2f} ms; fixed cost "
                  f"{ray2['fixed']:.1f} s against {table[best_steady]['fixed']:.1f} s")
            print(f"ratio ray-2actors / best local rows/s: steady {ray2['steady'] / table[best_steady]['steady']:.2f}"
                  f" (vs {best_steady}), end to end {ray2['e2e'] / table[best_e2e]['e2e']:.2f} (vs {best_e2e}); "
                  f"goal >= 0.90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
