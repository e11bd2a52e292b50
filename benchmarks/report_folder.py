"""`fi-evals report` over results folders against the same rows as results files: peak memory and
wall time as the rows grow (issue 17: compare and report read a folder without loading it whole).

Two checkpoints (`v1`, `v2`) of synthetic results rows, each row as a run writes it: an id, a cohort,
a document of about 700 characters and a response, and the `fc.*` result columns (score, verdict,
label, reason, error type, two claims with their evidence as JSON text); one row in 500 errored.
Each checkpoint is written once as a JSONL results file and once as a results folder of Parquet
parts (4,096 rows each, the `run --ray` default). For each size (`--rows`, per checkpoint) and
variant, one fresh process runs `write_report([v1, v2], out.html, by=["cohort"])` and reports its
own peak RSS (`VmHWM`) and the call's wall time:

* `files`: the two JSONL files (every row read into Python, as the report always did);
* `folders`: the two folders (Arrow aggregations; only the shown rows read whole, report_views.py).

Rounds alternate the order of the variants; medians over rounds. The last line is the ratio of the
folders' peak memory to the files' at the largest size, and each variant's growth from the smallest
size to the largest.

    python benchmarks/report_folder.py                       # 10k and 100k rows per checkpoint, 2 rounds
    python benchmarks/report_folder.py --rows 1000,10000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO_ROOT, median, round_order  # noqa: E402

SENTENCES = ("The council approved the plan on Monday after a long debate.",
             "Local residents had raised concerns about traffic and noise near the school.",
             "The cost of the project is expected to reach several million pounds by next year.",
             "A spokesperson said the work would begin in the spring and last about eighteen months.",
             "Opposition members argued that the money should go to housing instead.",
             "The decision follows a public consultation that drew more than two thousand responses.")


def results_rows(checkpoint: str, n: int, seed: int) -> Any:
    for i in range(n):
        k = (i * 7 + seed) % len(SENTENCES)
        document = " ".join(SENTENCES[(k + j) % len(SENTENCES)] for j in range(6)) + f" Item {i}."
        errored = i % 500 == 17
        score = None if errored else ((i * 0.6180339 + seed * 0.05) % 1)
        claims = [] if errored else [
            {"claim": SENTENCES[k], "support": score, "contradiction": 0.1,
             "evidence": {"text": SENTENCES[k], "passage": 0, "start": 0, "end": len(SENTENCES[k])}},
            {"claim": f"The item number is {i}.", "support": 1 - score, "contradiction": 0.2,
             "evidence": {"text": f"Item {i}.", "passage": 0, "start": len(document) - 9, "end": len(document)}}]
        yield {"row_id": f"r{i:08d}", "checkpoint": checkpoint, "cohort": ("news", "sport", "science", "arts")[i % 4],
               "document": document, "response": f"{SENTENCES[k]} The item number is {i}.",
               "fc.score": score, "fc.passed": None if errored else score >= 0.5,
               "fc.label": None if errored else ("supported" if score >= 0.5 else "unsupported"),
               "fc.reason": "RuntimeError: scorer failed" if errored else f"mean support {score:.2f} over 2 claims",
               "fc.error_type": "RuntimeError" if errored else None, "fc.claims": claims}


def write_inputs(root: Path, n: int) -> dict[str, list[Path]]:
    """Each checkpoint's rows as a JSONL file and as a folder of Parquet parts."""
    from fi_evals_core.evals.dataset import write_results

    paths: dict[str, list[Path]] = {"files": [], "folders": []}
    for seed, checkpoint in enumerate(("v1", "v2")):
        rows = list(results_rows(checkpoint, n, seed))
        paths["files"].append(write_results(rows, root / f"{checkpoint}-{n}.jsonl"))
        folder = root / f"{checkpoint}-{n}"
        folder.mkdir()
        for first in range(0, n, 4096):
            write_results(rows[first:first + 4096], folder / f"part-{first:08d}.parquet")
        paths["folders"].append(folder)
    return paths


def worker(paths: list[str], out: str) -> None:
    """One report in this process: its peak RSS and the call's seconds, as one JSON line."""
    from fi_evals_core.evals.report import write_report

    start = time.perf_counter()
    write_report(paths, out, by=["cohort"])
    seconds = time.perf_counter() - start
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": hwm / 1024, "seconds": seconds}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000", help="rows per checkpoint, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[:-1], args.worker[-1])
        return 0
    sizes = [int(x) for x in args.rows.split(",")]
    variants = ["files", "folders"]
    figures: dict[tuple[int, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in sizes:
            inputs = write_inputs(root, n)
            for r in range(args.rounds):
                for variant in round_order(variants, r):
                    cmd = [args.python, __file__, "--worker", *map(str, inputs[variant]), str(root / "out.html")]
                    done = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO_ROOT), timeout=3600)
                    if done.returncode:
                        raise SystemExit(f"{variant} at {n} rows failed:\n{done.stderr[-3000:]}")
                    figures.setdefault((n, variant), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
            for variant in variants:
                runs = figures[n, variant]
                print(f"{n:>8} rows per checkpoint  {variant:<8} peak RSS {median([f['peak_mb'] for f in runs]):8.1f} MB"
                      f"  report {median([f['seconds'] for f in runs]):7.2f} s  ({len(runs)} runs)", flush=True)
    peak = {key: median([f["peak_mb"] for f in runs]) for key, runs in figures.items()}
    small, large = sizes[0], sizes[-1]
    print(f"growth {small} -> {large} rows: files +{peak[large, 'files'] - peak[small, 'files']:.1f} MB, "
          f"folders +{peak[large, 'folders'] - peak[small, 'folders']:.1f} MB")
    print(f"ratio folders/files peak RSS at {large} rows per checkpoint: "
          f"{peak[large, 'folders'] / peak[large, 'files']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
