"""Scoring on Ray Data, on a real local Ray cluster (a head and two one-CPU worker nodes, all on
127.0.0.1, started and stopped by Ray's own `cluster_utils.Cluster`): the same rows as a local run."""

from __future__ import annotations

import os
import re

import pytest

from fi_evals_core.evals import FactualConsistency, NLIScorer
from fi_evals_core.evals.dataset import INPUT_ERROR, Dataset
from fi_evals_core.evals.ray_backend import LOCAL_ENVIRONMENT
from tests.fi_evals_core.test_evals_dataset import DOCS

# Before Ray is imported, which reads them once: loopback stays loopback, no usage reports
for _name, _value in LOCAL_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
import ray  # noqa: E402  (installed by the test set-up: fi-evals-core[ray])


def _rows(copies: int) -> list[dict]:
    rows = [{"document": doc, "summary": summary, "topic": topic, "copy": k}
            for k in range(copies) for doc, summary, topic in DOCS]
    rows.append({"document": "x", "summary": "y", "topic": "bad", "copy": -1, INPUT_ERROR: "line 99: not JSON"})
    return rows


def _dataset(rows, model: str) -> Dataset:
    return Dataset(rows, checkpoint="ckpt-a").add_evaluation(
        FactualConsistency(model=model, device="cpu"), {"reference": "document", "response": "summary"}, name="fc")


def _same(a, b) -> bool:
    """Equal, floats to 1e-6, through lists and dicts."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_node_of_the_cluster_is_on_loopback(cluster):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert sorted(n["Resources"].get("CPU", 0) for n in nodes) == [0, 1, 1]


def test_ray_run_gives_every_row_the_local_runs_results_once(cluster, nli_checkpoint):
    """Two actors (one per worker node) against one local scorer, fp32 on the CPU: every row, in
    order, with the same row id, verdict, label, claims and scores (to 1e-6), the malformed row an
    error row, none lost or repeated."""
    model = nli_checkpoint("bert")
    rows = _rows(copies=6)
    local = _dataset(rows, model).run(batch_size=8, progress=False)
    remote = _dataset(rows, model).run(batch_size=8, progress=False, backend="ray", actors=2)
    assert len(remote) == len(local) == len(rows)
    assert [r["row_id"] for r in remote] == [r["row_id"] for r in local]
    assert len({r["row_id"] for r in remote}) == len(rows)
    scored = 0
    for mine, theirs in zip(remote, local):
        assert set(mine) == set(theirs)
        for key in ("fc.passed", "fc.label", "fc.error_type", "topic", "copy", "checkpoint"):
            assert mine.get(key) == theirs.get(key), key
        if theirs["fc.score"] is None:
            assert mine["fc.score"] is None
            continue
        scored += 1
        assert _same(mine["fc.score"], theirs["fc.score"])
        assert _same(mine["fc.claims"], theirs["fc.claims"])  # texts, evidence chunks, probabilities
    assert scored >= 30
    assert remote[-1]["fc.error_type"] == "InputError"


def test_bad_ray_settings_are_refused_by_name(cluster, nli_checkpoint):
    rows = _rows(copies=1)
    with pytest.raises(ValueError, match="actors must be at least 1"):
        _dataset(rows, nli_checkpoint("bert")).run(progress=False, backend="ray", actors=0)
    with pytest.raises(ValueError, match="backend must be"):
        _dataset(rows, nli_checkpoint("bert")).run(progress=False, backend="spark")
    given = NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")
    dataset = Dataset(rows).add_evaluation(FactualConsistency(scorer=given), {"reference": "document",
                                                                              "response": "summary"})
    with pytest.raises(ValueError, match="given a scorer object"):
        dataset.run(progress=False, backend="ray")


def test_cli_run_with_ray_starts_a_loopback_ray_and_writes_the_local_results(tmp_path, nli_checkpoint):
    """`fi-evals run --ray --actors 2` with no address: a Ray of its own on 127.0.0.1 (in the CLI's
    process, stopped at its end), the same results file as a local run; --actors without --ray is
    refused before anything runs."""
    import json

    from tests.fi_evals_core.test_evals_cli import fi_evals

    data = tmp_path / "golden.jsonl"
    data.write_text("".join(json.dumps({"document": d, "summary": s, "topic": t}) + "\n" for d, s, t in DOCS * 3))
    env = {"FI_EVALS_MODEL": nli_checkpoint("bert"), "FI_EVALS_DEVICE": "cpu"}
    common = ["run", data, "-e", "factual_consistency", "--map", "reference=document", "--map", "response=summary",
              "--batch-size", "4", "--no-progress", "--max-error-rate", "0.2"]  # DOCS has an empty summary
    local = fi_evals(*common, "-o", tmp_path / "local.jsonl", env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    remote = fi_evals(*common, "--ray", "--actors", "2", "-o", tmp_path / "ray.jsonl", env=env)
    assert remote.returncode == 0, remote.stderr[-2000:]
    mine = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert len(mine) == len(theirs) == len(DOCS) * 3
    assert all(_same(a, b) for a, b in zip(mine, theirs))
    refused = fi_evals(*common, "--actors", "2", "-o", tmp_path / "x.jsonl", env=env)
    assert refused.returncode == 2 and "--actors 2" in refused.stderr and not (tmp_path / "x.jsonl").exists()


def test_nothing_but_the_ray_backend_imports_ray():
    """Ray is an extra: the packages, the evaluators, the CLI and both instrumentors load without it."""
    import subprocess
    import sys

    code = ("import sys, fi_evals_core, fi_evals_core.evals, fi_evals_core.evals.dataset, fi_evals_core.evals.cli, "
            "traceai_vllm, traceai_huggingface; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# -- a dataset's files streamed into a results folder (ray_stream.py) ------------------------------


def _write_files(folder, copies: int) -> list[dict]:
    """Two JSONL files, every input repeated within and across them, and a malformed line; the rows
    a local run reads from them, in file order."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"document": doc, "summary": summary, "topic": topic, "copy": k}
            for k in range(copies) for doc, summary, topic in DOCS]
    half = len(rows) // 2
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:half]) + "{not json\n")
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[half:]))
    return Dataset.load(folder / "a.jsonl").rows + Dataset.load(folder / "b.jsonl").rows


def _evaluations(model: str, threshold: float = 0.5):
    return _dataset([{"document": "", "summary": ""}], model).evaluations if threshold == 0.5 else Dataset(
        [{"document": "", "summary": ""}]).add_evaluation(FactualConsistency(model=model, device="cpu", threshold=threshold),
                                                          {"reference": "document", "response": "summary"},
                                                          name="fc").evaluations


def _folder_rows(folder) -> dict[str, dict]:
    """The folder's rows by row id (a row id twice fails), claims parsed as from a results file."""
    import json

    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    for part in sorted(folder.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            assert row["row_id"] not in rows, f"row {row['row_id']} written twice"
            row["fc.claims"] = json.loads(row["fc.claims"]) if row["fc.claims"] else []
            rows[row["row_id"]] = {k: v for k, v in row.items() if v is not None}
    return rows


def test_files_streamed_into_a_folder_hold_the_local_runs_rows_once(cluster, nli_checkpoint, tmp_path):
    """A folder of JSONL files on 2 actors into a results folder of several parts: every row of a
    local run over the same files once, with its row id (repeated inputs numbered in file order, as
    locally), verdict, claims and scores to 1e-6; the malformed line an InputError row."""
    from fi_evals_core.evals.ray_stream import score_files_on_ray

    model = nli_checkpoint("bert")
    read = _write_files(tmp_path / "data", copies=4)
    local = _dataset(read, model).run(batch_size=8, progress=False)
    run = score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out", checkpoint="ckpt-a",
                             batch_size=4, rows_per_file=6, actors=2, progress=False)
    assert (run.rows, run.written, run.skipped) == (len(local), len(local), 0)
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) >= 3
    mine = _folder_rows(tmp_path / "out")
    theirs = {row["row_id"]: {k: v for k, v in row.items() if v is not None} for row in local}
    assert sum("~" in row_id for row_id in theirs) >= len(DOCS) * 3  # the repeats were numbered
    assert mine.keys() == theirs.keys()
    assert [row_id for row_id in theirs if not _same(mine[row_id], theirs[row_id])] == []
    assert [r for r in mine.values() if r.get("fc.error_type") == "InputError"][0]["input_error"].endswith(
        "a.jsonl:15: not JSON (Expecting property name enclosed in double quotes)")
    scored = [r for r in local if r["fc.passed"] is not None]
    assert run.evaluations["fc"] == (len(scored), sum(r["fc.passed"] for r in scored), len(local) - len(scored))


def test_one_small_file_is_scored_by_every_actor(cluster, nli_checkpoint, tmp_path):
    """One file of a dozen batches: both scorer actors score some of it, one on each one-CPU node, by
    Ray Data's own account of the run. (A file used to be one block, which Ray Data hands to one
    actor: the other sat idle.)"""
    import json

    from fi_evals_core.evals.ray_stream import score_files_on_ray

    rows = [{"document": doc, "summary": summary, "copy": k} for k in range(8) for doc, summary, _ in DOCS]
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = score_files_on_ray(tmp_path / "one.jsonl", _evaluations(nli_checkpoint("bert")), tmp_path / "out",
                             batch_size=4, actors=2, progress=False)
    assert run.written == len(rows) >= 12 * 4
    scorer_stage = next(part for part in run.stats.split("Operator ") if re.match(r"\d+ MapBatches\(ScorerActor\)",
                                                                                  part))
    assert re.search(r"Tasks per node: .*; 2 nodes used", scorer_stage), scorer_stage


def test_an_interrupted_folder_run_writes_only_what_is_missing(cluster, nli_checkpoint, tmp_path):
    """The folder as a killed run leaves it (some parts written, one half-written under its
    temporary name): the same call again scores only the missing rows, keeps the written parts as
    they are, drops the unfinished one, and ends with the uninterrupted run's rows, each once."""
    import os

    from fi_evals_core.evals.ray_stream import score_files_on_ray

    model = nli_checkpoint("bert")
    _write_files(tmp_path / "data", copies=3)
    kwargs = {"checkpoint": "ckpt-a", "batch_size": 4, "rows_per_file": 5, "actors": 2, "progress": False}
    score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out", **kwargs)
    whole = _folder_rows(tmp_path / "out")
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    lost = parts[::2]
    lost_rows = sum(len(_folder_rows_of(p)) for p in lost)
    for part in lost:
        part.unlink()
    (tmp_path / "out" / ".part-unfinished-0000.parquet").write_bytes(b"PAR1 cut short")
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts[1::2]}
    run = score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out", **kwargs)
    assert (run.rows, run.written, run.skipped) == (len(whole), lost_rows, len(whole) - lost_rows)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept
    assert not list((tmp_path / "out").glob(".part-*"))
    again = _folder_rows(tmp_path / "out")
    assert again.keys() == whole.keys() and all(_same(again[k], whole[k]) for k in whole)
    listing = sorted(os.listdir(tmp_path / "out"))
    finished = score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out", **kwargs)
    assert (finished.written, finished.skipped) == (0, len(whole))
    assert sorted(os.listdir(tmp_path / "out")) == listing  # nothing added


def _folder_rows_of(part) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(part, columns=["row_id"]).to_pylist()


def test_a_folder_of_another_run_is_refused_and_left_as_it_was(cluster, nli_checkpoint, tmp_path):
    """Another dataset, another evaluator setting or a folder fi-evals did not write: a clear error
    naming what differs, before anything runs, and not one byte of the folder changed."""
    from fi_evals_core.evals.ray_stream import score_files_on_ray

    model = nli_checkpoint("bert")
    _write_files(tmp_path / "data", copies=1)
    kwargs = {"batch_size": 4, "actors": 2, "progress": False}
    score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out", **kwargs)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with (tmp_path / "data" / "b.jsonl").open("a") as fh:
        fh.write('{"document": "A new row.", "summary": "New."}\n')
    with pytest.raises(ValueError, match=r"holds the results of another run \(a different dataset: 2 file"):
        score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out", **kwargs)
    with pytest.raises(ValueError, match=r"evaluations .*\"threshold\": 0.5.*not .*\"threshold\": 0.7"):
        score_files_on_ray(tmp_path / "data", _evaluations(model, threshold=0.7), tmp_path / "out", **kwargs)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no _fi_evals_manifest.json"):
        score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "other", **kwargs)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    # an id column missing from a row, or repeated: an error naming the rows, before any part is
    # written; the corrected run then takes the folder
    with pytest.raises(ValueError, match=r"row .*a\.jsonl:4 has no 'topic' \(the id column\)"):
        score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "fresh", id_column="topic", **kwargs)
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "d.jsonl").write_text('{"document": "A.", "summary": "A.", "key": 1}\n'
                                              '{"document": "B.", "summary": "B.", "key": 2}\n'
                                              '{"document": "C.", "summary": "C.", "key": 1}\n')
    with pytest.raises(ValueError, match=r"rows .*d\.jsonl:1 and .*d\.jsonl:3 have the same 'key': '1'"):
        score_files_on_ray(tmp_path / "dup", _evaluations(model), tmp_path / "fresh", id_column="key", **kwargs)
    assert not list((tmp_path / "fresh").glob("part-*"))
    assert score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "fresh", **kwargs).written == 9  # 7 + 2 lines


def _scorer_actor_pids() -> list[int]:
    """The processes of this cluster's scorer actors (Ray titles an actor's process after its class;
    the cluster's raylets, which start them, are this test process's children)."""
    import os

    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if (process.info["status"] != psutil.STATUS_ZOMBIE and "ScorerActor" in " ".join(process.info["cmdline"] or [])
                    and any(parent.pid == os.getpid() for parent in process.parents())):
                pids.append(process.info["pid"])
        except psutil.NoSuchProcess:
            continue
    return pids


def test_a_scorer_actor_killed_mid_run_loses_and_repeats_no_row(cluster, nli_checkpoint, tmp_path):
    """SIGKILL one of the two scorer actors once the first parts are written: Ray restarts it and
    retries its batches, and the folder still ends with every row exactly once."""
    import os
    import signal
    import threading
    import time

    from fi_evals_core.evals.ray_stream import score_files_on_ray, summarize

    model = nli_checkpoint("bert")
    read = _write_files(tmp_path / "data", copies=40)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["run"] = score_files_on_ray(tmp_path / "data", _evaluations(model), tmp_path / "out",
                                                batch_size=2, rows_per_file=4, actors=2, progress=False)
        except BaseException as exc:  # noqa: BLE001 (re-raised by the test below)
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline, killed, rows_then, seen = time.monotonic() + 240, None, None, []
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        pids, parts = _scorer_actor_pids(), len(list((tmp_path / "out").glob("part-*.parquet")))
        seen.append((len(pids), parts))
        if pids and parts:
            rows_then = summarize(tmp_path / "out", ["fc"])[0]
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        else:
            threading.Event().wait(0.05)
    worker.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None and rows_then < len(read), f"no actor killed mid-run: (actors, parts) seen {seen[-5:]}"
    assert killed not in _scorer_actor_pids()
    assert outcome["run"].rows == len(read)
    rows = _folder_rows(tmp_path / "out")  # fails on a row written twice
    assert len(rows) == len(read)


def test_cli_streams_a_glob_into_a_folder_that_compare_and_report_read(cluster, nli_checkpoint, tmp_path):
    """`fi-evals run 'data/*.jsonl' --ray ADDRESS -o FOLDER` joins the cluster and writes the folder;
    the same command again writes nothing more; `compare` pairs the folder with a local run's file
    by row id (no change), and `report` reads it."""
    import json

    from tests.fi_evals_core.test_evals_cli import fi_evals

    read = _write_files(tmp_path / "data", copies=2)
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read))  # the same rows, one file
    env = {"FI_EVALS_MODEL": nli_checkpoint("bert"), "FI_EVALS_DEVICE": "cpu"}
    common = ["-e", "factual_consistency", "--map", "reference=document", "--map", "response=summary",
              "--checkpoint", "v1", "--batch-size", "4", "--no-progress", "--max-error-rate", "0.5"]
    local = fi_evals("run", tmp_path / "all.jsonl", *common, "-o", tmp_path / "local.jsonl", env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    folder = tmp_path / "out"
    command = ["run", str(tmp_path / "data" / "*.jsonl"), *common, "--ray", cluster.address, "--actors", "2",
               "--rows-per-file", "5", "-o", folder]
    first = fi_evals(*command, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"{folder}: {len(read)} rows ({len(read)} written by this run, 0 already there)" in first.stdout
    assert first.stdout.splitlines()[0] == local.stdout.splitlines()[0]  # "factual_consistency: pass rate ..."
    again = fi_evals(*command, env=env)
    assert again.returncode == 0 and f"(0 written by this run, {len(read)} already there)" in again.stdout
    compared = fi_evals("compare", tmp_path / "local.jsonl", folder, "--max-delta", "0.02", "--max-error-rate", "0.5")
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert f"paired by 'row_id' ({len(read)} rows)" in compared.stdout
    report = fi_evals("report", tmp_path / "local.jsonl", folder, "-o", tmp_path / "r.html")
    assert report.returncode == 0 and "factual_consistency" in (tmp_path / "r.html").read_text()


def test_trace_files_are_streamed_as_their_captured_generations(cluster, nli_checkpoint, tmp_path):
    """A folder of two trace files (this project's JSONL spans) scored on Ray: the rows of
    `Dataset.from_traces` over each file, scored as a local run scores them; a span without
    captured content is no row."""
    import json

    from fi_evals_core.evals.ray_stream import score_files_on_ray

    def span(span_id: str, prompt: str | None, completion: str | None) -> dict:
        parts = lambda role, text: json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])  # noqa: E731
        content = {} if prompt is None else {"gen_ai.input.messages": parts("user", prompt),
                                             "gen_ai.output.messages": parts("assistant", completion)}
        return {"name": "chat m", "trace_id": "ab" * 16, "span_id": span_id, "parent_span_id": None, "kind": "CLIENT",
                "start_time_unix_nano": 1, "end_time_unix_nano": 2, "status": {"code": "UNSET", "description": None},
                "attributes": {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", **content},
                "events": [], "resource": {"service.name": "app"}, "scope": {"name": "x", "version": "1"}}

    (tmp_path / "traces").mkdir()
    for name, first in (("day1.jsonl", 0), ("day2.jsonl", 10)):
        spans = [span(f"{first + i:016x}", f"The river is {first + i} miles long.", f"It is {i} miles long.")
                 for i in range(4)] + [span(f"{first + 99:016x}", None, None)]
        (tmp_path / "traces" / name).write_text("".join(json.dumps(s) + "\n" for s in spans))
    model = nli_checkpoint("bert")
    read = [row for name in ("day1.jsonl", "day2.jsonl") for row in Dataset.from_traces(tmp_path / "traces" / name).rows]
    mapping = {"reference": "prompt", "response": "completion"}
    local = Dataset(read).add_evaluation(FactualConsistency(model=model, device="cpu"), mapping, name="fc").run(
        progress=False)
    evaluations = Dataset(read[:1]).add_evaluation(FactualConsistency(model=model, device="cpu"), mapping,
                                                   name="fc").evaluations
    run = score_files_on_ray(tmp_path / "traces", evaluations, tmp_path / "out", batch_size=2, actors=2,
                             progress=False, traces=True)
    assert run.rows == len(read) == 8
    mine = _folder_rows(tmp_path / "out")
    theirs = {row["row_id"]: {k: v for k, v in row.items() if v is not None} for row in local}
    assert mine.keys() == theirs.keys()
    assert [row_id for row_id in theirs if not _same(mine[row_id], theirs[row_id])] == []
