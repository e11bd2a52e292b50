"""Dataset files scored on Ray Data into a results folder: streamed, resumable, every row once.

`fi-evals run DATA --ray [ADDRESS] -o FOLDER/` (and `score_files_on_ray`): DATA is a file, a folder or
a glob of JSONL, CSV, TSV or Parquet files. The driver lists the files and plans; the rows never
pass through it:

    read tasks (a file each; every row as JSON text, with its file and position)
      -> row keys (`dataset.row_key`: the id column, the row's own row_id, or a digest of its inputs)
      -> row ids: a key that repeats is numbered `~2`, `~3`... in file order, as a local run numbers it;
         a task per file hashes its keys, one task finds the repeated hashes, and only the rows
         behind those come back to the driver
      -> rows already in the folder dropped (their ids, read by a task, shared through the object store)
      -> with `generate`: responses from vLLM engines in Ray Data actors (ray_generate.py)
      -> CPU tasks cut each row into claims and premise chunks (the local run's `plan_rows`)
      -> scorer actors score the plans (`ray_backend.scoring_stage`, the local run's `scored_columns`)
      -> Parquet parts written by Ray's write tasks, each under a hidden temporary name then renamed,
         so a part is whole or absent; a part is named by a digest of its row ids, so a write Ray
         retries replaces its own part instead of adding a second copy.

An interrupted run continued with the same command scores only the rows not yet written and ends
with the same rows. The folder's `_fi_evals_manifest.json` records the input files (sizes and
SHA-256) and the settings that decide the rows (evaluations, their inputs and scorer, checkpoint,
id column): a run into a folder holding another run's parts is refused, and nothing is written
(a folder with a manifest but no part yet, as a run that failed before writing leaves it, is taken).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .dataset import (INPUT_ERROR, JSONL_SUFFIXES, ROW_ID, _json_default, iter_file_rows, key_columns, numbered,
                      plan_rows, repeated_id_message, row_key, scored_columns, write_results)
from .ray_backend import _require_ray, connect, pool_size, scoring_stage

logger = logging.getLogger(__name__)

MANIFEST = "_fi_evals_manifest.json"
FORMAT = "fi-evals results folder 1"
DATA_SUFFIXES = (*JSONL_SUFFIXES, ".csv", ".tsv", ".parquet")
#: rows per Parquet part: what an interruption can cost at most, per write task in flight
DEFAULT_ROWS_PER_FILE = 4096
_READ_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class FolderRun:
    """What a run into a results folder did: rows in the folder now, written by this run, found
    already written (skipped), and per evaluation (scored, passed, errors) over the whole folder;
    `stats` is Ray Data's summary of the run (per stage: tasks, rows, time, nodes used)."""

    folder: Path
    rows: int
    written: int
    skipped: int
    evaluations: dict[str, tuple[int, int, int]]
    generation: dict[str, Any] | None = None
    stats: str = ""


def input_files(source: str | Path) -> list[Path]:
    """The data files of a file, a folder (searched recursively) or a glob, in a stable order; hidden
    and `_` names skipped (as a results folder's manifest)."""
    text = str(source)
    if glob.has_magic(text):
        candidates = [Path(p) for p in glob.glob(text, recursive=True)]
    elif Path(text).is_dir():
        candidates = [p for p in Path(text).rglob("*") if not any(part.startswith((".", "_"))
                                                                   for part in p.relative_to(text).parts)]
    elif Path(text).is_file():
        return [Path(text)]
    else:
        raise FileNotFoundError(f"dataset not found: {text} (a file, a folder or a glob of data files)")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise ValueError(f"{text}: no data files ({', '.join(DATA_SUFFIXES)}) in it")
    return files


def manifest(files: Sequence[Path], evaluations: Sequence[Any], checkpoint: str | None,
             id_column: str | None, generation: Mapping[str, Any] | None = None,
             traces: bool = False) -> dict[str, Any]:
    """What decides a results folder's rows: the input files' contents and the run's settings."""
    inputs = []
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        inputs.append({"name": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()})
    return {"format": FORMAT, "inputs": inputs, "checkpoint": checkpoint, "id_column": id_column,
            "generation": dict(generation) if generation else None, "traces": traces,
            "evaluations": [{"name": e.name, "inputs": dict(sorted(e.mapping.items())), **e.evaluator.settings()}
                            for e in evaluations]}


def open_folder(folder: Path, expected: Mapping[str, Any]) -> list[Path]:
    """Create the folder with its manifest, or check that it holds this run; its parts. Leftover
    temporary parts of an interrupted write are removed (logged, with their count)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} is a file; a results folder is a directory (or give a .jsonl/.parquet "
                         "output)")
    record = folder / MANIFEST
    if folder.is_dir() and any(folder.iterdir()):
        if not record.is_file():
            raise ValueError(f"output folder {folder} is not empty and holds no {MANIFEST}: not a results folder of "
                             "fi-evals; choose an empty or new folder (nothing was written)")
        found = json.loads(record.read_text(encoding="utf-8"))
        differences = _differences(found, dict(expected))
        if differences and not any(folder.glob("part-*.parquet")):  # nothing written under it yet
            _write_manifest(record, expected)
            differences = []
        if differences:
            raise ValueError(f"output folder {folder} holds the results of another run ({'; '.join(differences)}); "
                             "choose another folder, or remove it to start again (nothing was written)")
        stale = [p for p in folder.iterdir() if p.name.startswith(".part-")]
        for path in stale:
            path.unlink()
        if stale:
            logger.warning("%s: removed %d unfinished part(s) of an interrupted run", folder, len(stale))
        return sorted(folder.glob("part-*.parquet"))
    folder.mkdir(parents=True, exist_ok=True)
    _write_manifest(record, expected)
    return []


def _write_manifest(record: Path, expected: Mapping[str, Any]) -> None:
    record.write_text(json.dumps(expected, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    if found.get("format") != FORMAT:
        return [f"format {found.get('format')!r}, not {FORMAT!r}"]
    out = []
    if [(i["bytes"], i["sha256"]) for i in found["inputs"]] != [(i["bytes"], i["sha256"]) for i in expected["inputs"]]:
        names = ", ".join(i["name"] for i in found["inputs"][:3]) + (", ..." if len(found["inputs"]) > 3 else "")
        out.append(f"a different dataset: {len(found['inputs'])} file(s) {names}, not these contents")
    for key in ("checkpoint", "id_column", "generation", "traces", "evaluations"):
        if found.get(key) != expected.get(key):
            out.append(f"{key} {json.dumps(found.get(key), default=str)}, not {json.dumps(expected.get(key), default=str)}")
    return out


# -- the stages (run in Ray tasks) ---------------------------------------------------------------


def file_rows(path: str, traces: bool = False) -> Iterator[dict[str, Any]]:
    """One input file's rows: a data file's as `Dataset.load` reads them, or a trace file's captured
    generations as `Dataset.from_traces` reads them (a trace file is read whole)."""
    if traces:
        from .traces import read_trace_rows

        return iter(read_trace_rows(path)[0])
    return iter_file_rows(path)


def _read_files(batch: Mapping[str, Any], traces: bool = False,
                rows_per_block: int = _READ_BLOCK_ROWS) -> Iterator[dict[str, Any]]:
    """Each file's rows as JSON text with (file, position), a block at a time."""
    import numpy as np

    for index, path in zip(batch["file"], batch["path"]):
        positions: list[int] = []
        texts: list[str] = []
        for position, row in enumerate(file_rows(str(path), traces)):
            positions.append(position)
            texts.append(json.dumps(row, ensure_ascii=True, default=_json_default))
            if len(texts) == rows_per_block:
                yield {"file": np.full(len(texts), int(index)), "position": np.array(positions), "row": np.array(texts)}
                positions, texts = [], []
        if texts:
            yield {"file": np.full(len(texts), int(index)), "position": np.array(positions), "row": np.array(texts)}


def _add_ids(batch: Mapping[str, Any], columns: Sequence[str], id_column: str | None, paths: Sequence[str],
             repeat_numbers: Any, written: Any, checkpoint: str | None) -> dict[str, Any]:
    """Each row's id (its key, numbered when it repeats), `checkpoint` and `row_id` written into it;
    rows already in the folder dropped."""
    import numpy as np
    import ray

    numbers = ray.get(repeat_numbers) if isinstance(repeat_numbers, ray.ObjectRef) else repeat_numbers
    done = ray.get(written) if isinstance(written, ray.ObjectRef) else written
    ids, texts = [], []
    for file, position, text in zip(batch["file"], batch["position"], batch["row"]):
        row = json.loads(text)
        key = row_key(row, columns, id_column, f"{paths[file]}:{position + 1}")
        number = numbers.get((int(file), int(position)), 1)
        row_id = key if number == 1 else f"{key}~{number}"
        if len(done) and _contains(done, row_id):
            continue
        if checkpoint is not None:
            row["checkpoint"] = checkpoint
        row[ROW_ID] = row_id
        ids.append(row_id)
        texts.append(json.dumps(row, ensure_ascii=True, default=_json_default))
    return {ROW_ID: np.array(ids, dtype=object), "row": np.array(texts, dtype=object)}


def _with_prompt(batch: Mapping[str, Any], prompt_column: str) -> dict[str, Any]:
    """The rows' prompts as a column of their own, for the generation stage."""
    import numpy as np

    prompts = [json.loads(text).get(prompt_column) for text in batch["row"]]
    return {**batch, prompt_column: np.array(prompts, dtype=object)}


def _with_response(batch: Mapping[str, Any], output_column: str) -> dict[str, Any]:
    """Each generated response (and the generation's error, as the row's input error) back into its row."""
    import numpy as np

    texts = []
    for index, text in enumerate(batch["row"]):
        row = json.loads(text)
        row[output_column] = batch[output_column][index]
        row["checkpoint"] = batch["checkpoint"][index]
        problem = batch[INPUT_ERROR][index] if INPUT_ERROR in batch else None
        if problem and not row.get(INPUT_ERROR):
            row[INPUT_ERROR] = problem
        row[ROW_ID] = row.pop(ROW_ID)  # last, as a local run writes it
        texts.append(json.dumps(row, ensure_ascii=True, default=_json_default))
    return {ROW_ID: np.asarray(batch[ROW_ID], dtype=object), "row": np.array(texts, dtype=object)}


def _contains(sorted_ids: Any, value: Any) -> bool:
    import numpy as np

    at = int(np.searchsorted(sorted_ids, value))
    return at < len(sorted_ids) and sorted_ids[at] == value


def _written_ids(parts: Sequence[str]) -> Any:
    """The sorted row ids of the parts already in the folder (a part holding a row twice, or two parts
    holding one row, is an error: the folder is no longer trustworthy)."""
    import numpy as np
    import pyarrow.parquet as pq

    ids = np.array([i for part in parts for i in pq.read_table(part, columns=[ROW_ID])[ROW_ID].to_pylist()], dtype=str)
    ids.sort()
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        raise ValueError(f"the results folder holds row {repeated[0]!r} more than once; remove the folder and run again")
    return ids


class PartsSink:
    """Ray Data datasink: each write task's rows as one Parquet part, written whole or not at all;
    `written` counts the rows of this run's parts (set in the driver when the write completes)."""

    def __init__(self, folder: Path, rows_per_file: int) -> None:
        self.folder = str(folder)
        self.rows_per_file = rows_per_file
        self.written = 0

    def write(self, blocks: Any, ctx: Any) -> int:
        from ray.data.block import BlockAccessor

        rows: list[dict[str, Any]] = []
        written = 0
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if not table.num_rows:  # every row of its batch was written before
                continue
            for text, columns in zip(table.column("row").to_pylist(), table.column("columns").to_pylist()):
                rows.append({**json.loads(text), **json.loads(columns)})
                if len(rows) == self.rows_per_file:
                    written += self._part(rows)
                    rows = []
        return written + (self._part(rows) if rows else 0)

    def _part(self, rows: Sequence[Mapping[str, Any]]) -> int:
        name = hashlib.sha256("\n".join(str(r[ROW_ID]) for r in rows).encode()).hexdigest()[:20]
        temporary = os.path.join(self.folder, f".part-{name}-{uuid.uuid4().hex[:8]}.parquet")
        write_results(rows, temporary)
        os.replace(temporary, os.path.join(self.folder, f"part-{name}.parquet"))
        return len(rows)


def _datasink(folder: Path, rows_per_file: int) -> Any:
    from ray.data import Datasink

    class _Sink(PartsSink, Datasink):
        @property
        def min_rows_per_write(self) -> int:
            return self.rows_per_file

        def get_name(self) -> str:
            return "WriteResultsParts"

        def on_write_complete(self, write_result: Any) -> None:
            self.written = sum(write_result.write_returns)

    return _Sink(folder, rows_per_file)


# -- the run ------------------------------------------------------------------------------------


def score_files_on_ray(source: str | Path, evaluations: Sequence[Any], output: str | Path, *,
                       checkpoint: str | None = None, id_column: str | None = None, batch_size: int = 64,
                       rows_per_file: int = DEFAULT_ROWS_PER_FILE, address: str | None = None,
                       actors: int | None = None, progress: bool = True,
                       generate: Mapping[str, Any] | None = None, traces: bool = False) -> FolderRun:
    """Score the rows of `source` (file, folder or glob) with `evaluations` into the results folder
    `output`, on the Ray cluster at `address` (None: a local one on 127.0.0.1).

    `generate`: the responses are generated first, for the rows not yet written, with vLLM on Ray
    (`ray_generate.generate_on_ray`'s keyword arguments: `model`, `prompt_column`, `output_column`,
    `max_tokens`, `actors` (engines, default 1)...); the scorers then default to the cluster's
    CPUs or GPUs less the engines'. The checkpoint label defaults to the model. The generator's facts
    are in `FolderRun.generation`. `traces`: the files are trace files (JSONL spans or OTLP JSON),
    each row a captured generation (traces.py)."""
    if not evaluations:
        raise ValueError("no evaluation given")
    if batch_size < 1 or rows_per_file < 1:
        raise ValueError(f"batch_size and rows_per_file must be at least 1, got {batch_size} and {rows_per_file}")
    files = input_files(source)
    folder = Path(output)
    if generate is not None:
        checkpoint = checkpoint or str(generate["model"])
    parts = open_folder(folder, manifest(files, evaluations, checkpoint, id_column, generate, traces))
    ray = _require_ray()
    started = connect(address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        paths = [str(p) for p in files]
        total, numbers = _number_repeats(ray, paths, key_columns(evaluations), id_column, traces)
        # The actor pool hands an actor whole blocks, and the read tasks fuse their output into blocks
        # of up to 128 MiB: a small dataset would be one block, scored by one actor while the others
        # idle. Blocks of about a batch each (the input's mean row size x batch_size) spread the rows;
        # a dataset seals the context it was made under, so the user's context is restored at once.
        row_bytes = sum(p.stat().st_size for p in files) / max(total, 1)
        default_block_size = context.target_max_block_size
        context.target_max_block_size = max(1 << 14, int(row_bytes * batch_size * 1.25))
        try:
            # reading, keying and writing hold no CPU of their own: the scorer actors take one each,
            # and stages that waited for a free CPU would starve behind them
            written = ray.remote(_written_ids).remote([str(p) for p in parts]) if parts else []
            pending = (ray.data.from_items([{"file": i, "path": p} for i, p in enumerate(paths)])
                       .map_batches(_read_files, batch_size=1, batch_format="numpy", num_cpus=0,
                                    fn_kwargs={"traces": traces})
                       .map_batches(_add_ids, batch_format="numpy", num_cpus=0,
                                    fn_kwargs={"columns": key_columns(evaluations), "id_column": id_column,
                                               "paths": paths, "repeat_numbers": ray.put(numbers),
                                               "written": written, "checkpoint": checkpoint}))
        finally:
            context.target_max_block_size = default_block_size
        generation, engines = None, 0
        if generate is not None:
            from .ray_generate import generate_on_ray

            # the engines and the scorers run side by side: the scorers get what the engines leave
            engines = generate.get("actors") or 1
            if actors is None:
                actors = max(1, pool_size(None, ray.cluster_resources())[0] - engines)
            prompt_column = generate.get("prompt_column", "prompt")
            pending, generation = generate_on_ray(
                pending.map_batches(_with_prompt, batch_format="numpy", num_cpus=0,
                                    fn_kwargs={"prompt_column": prompt_column}),
                **{**generate, "checkpoint": checkpoint, "actors": engines})
            pending = pending.map_batches(_with_response, batch_format="numpy", num_cpus=0,
                                          fn_kwargs={"output_column": generate.get("output_column", "response")})
        scored = scoring_stage(pending, evaluations, plan=plan_rows, score=scored_columns, default=_json_default,
                               batch_size=batch_size, actors=actors, held_cpus=engines)
        sink = _datasink(folder, rows_per_file)
        scored.write_datasink(sink, ray_remote_args={"num_cpus": 0})
        stats = scored.stats()
    except ray.exceptions.RayTaskError as exc:  # an input problem raised in a task: its own message
        if isinstance(exc.cause, (ValueError, FileNotFoundError)):
            raise exc.cause from None
        raise
    finally:
        if started:
            ray.shutdown()
    rows, counts = summarize(folder, [e.name for e in evaluations])
    if rows != total:
        raise RuntimeError(f"{folder} holds {rows} rows, the dataset {total}: rows were lost or repeated")
    return FolderRun(folder, rows, int(sink.written), rows - int(sink.written), counts, generation, stats)


def _number_repeats(ray: Any, paths: Sequence[str], columns: Sequence[str], id_column: str | None,
                    traces: bool) -> tuple[int, dict[tuple[int, int], int]]:
    """The dataset's row count, and the number (2, 3...) of every repeat of a digest key, by (file,
    position). A task per file hashes its keys to 64 bits, one task finds the hashes that repeat,
    and a task per file returns the rows behind those: the driver holds refs, the repeats and their
    positions, never a row per row. A repeated id column value is an error naming both rows."""
    hashes = [ray.remote(num_cpus=0)(_key_hashes).remote(path, columns, id_column, traces) for path in paths]
    total, repeated = ray.get(ray.remote(num_cpus=0)(_repeated_hashes).remote(*hashes))
    if not len(repeated):
        return total, {}
    shared = ray.put(repeated)
    hits = sorted(hit for index, found in enumerate(ray.get([
        ray.remote(num_cpus=0)(_rows_with_hashes).remote(path, columns, id_column, traces, shared) for path in paths]))
        for hit in ((index, *row) for row in found))
    numbers: dict[tuple[int, int], int] = {}
    first: dict[str, tuple[int, int]] = {}
    seen: dict[str, int] = {}
    for file, position, key, is_numbered in hits:
        if id_column is not None and key in first:
            before = first[key]
            raise ValueError(repeated_id_message(id_column, key, f"{paths[before[0]]}:{before[1] + 1}",
                                                 f"{paths[file]}:{position + 1}"))
        first.setdefault(key, (file, position))
        if is_numbered:
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                numbers[(file, position)] = seen[key]
    return total, numbers


def _file_keys(path: str, columns: Sequence[str], id_column: str | None,
               traces: bool) -> Iterator[tuple[int, str, bool]]:
    for position, row in enumerate(file_rows(path, traces)):
        yield position, row_key(row, columns, id_column, f"{path}:{position + 1}"), numbered(row, id_column)


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _key_hashes(path: str, columns: Sequence[str], id_column: str | None, traces: bool) -> Any:
    import numpy as np

    return np.fromiter((_hash64(key) for _, key, _ in _file_keys(path, columns, id_column, traces)), dtype=np.uint64)


def _repeated_hashes(*per_file: Any) -> tuple[int, Any]:
    import numpy as np

    every = np.concatenate(per_file) if per_file else np.empty(0, dtype=np.uint64)
    values, counts = np.unique(every, return_counts=True)
    return len(every), values[counts > 1]


def _rows_with_hashes(path: str, columns: Sequence[str], id_column: str | None, traces: bool,
                      repeated: Any) -> list[tuple[int, str, bool]]:
    return [(position, key, is_numbered) for position, key, is_numbered in _file_keys(path, columns, id_column, traces)
            if _contains(repeated, _hash64(key))]


def summarize(folder: Path, evaluations: Sequence[str]) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """Rows in the folder's parts, and per evaluation (scored, passed, errors), read a part and a
    column at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows, counts = 0, {name: [0, 0, 0] for name in evaluations}
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part, columns=[f"{name}.passed" for name in evaluations])
        rows += table.num_rows
        for name in evaluations:
            column = table.column(f"{name}.passed")
            scored = len(column) - column.null_count
            passed = pc.sum(column).as_py() or 0
            counts[name][0] += scored
            counts[name][1] += passed
            counts[name][2] += len(column) - scored
    return rows, {name: (scored, passed, errors) for name, (scored, passed, errors) in counts.items()}
