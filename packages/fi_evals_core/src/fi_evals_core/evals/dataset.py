"""Datasets of rows to evaluate, and the results file they produce.

A `Dataset` is a list of rows (dicts) read from JSONL, CSV, Parquet, a pandas DataFrame or recorded
generation spans (`from_traces`), with every column kept so cohort columns survive to the results.
Evaluations are attached with a column mapping (evaluator input -> column) and run in chunks of
rows through `Evaluator.evaluate_batch`, so all (chunk, claim) pairs of a chunk share one
length-sorted batch queue.

Results file (JSONL, one object per row in dataset order; Parquet with the same columns): every
original column unchanged, `checkpoint` when known, and per evaluation named N the columns
`N.score`, `N.passed`, `N.label`, `N.reason`, `N.error_type` and `N.claims` (a list of claim dicts;
a JSON string in Parquet). A results folder (written by `run --ray -o FOLDER`, ray_stream.py) holds
Parquet parts of these columns, in no order; `from_results` and `compare` read it (results_folder.py).
A row whose evaluation failed (bad input, scorer error) has
`N.passed` null and `N.error_type` set: it is counted as an error, never as a fail.

A row that cannot be evaluated as read (a JSONL line that is not JSON, text with a lone surrogate
that UTF-8 cannot encode) is kept, with its problem in the `input_error` column (`INPUT_ERROR`):
every evaluation gives it an error result (`InputError`) and the run goes on.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from .evaluators import Evaluator, evaluator_class
from .regression import ROW_ID, DEFAULT_MAX_ERROR_RATE, Comparison, cohort_key, compare_results, evaluation_names
from .result import EvalResult

INPUT_ERROR = "input_error"  # the column holding why a row could not be evaluated as read


class InputError(ValueError):
    """A row that could not be evaluated as read (its `input_error` column says why)."""

if TYPE_CHECKING:
    import pandas

#: The per-evaluation columns of a results row, after the `N.` prefix.
RESULT_FIELDS = ("score", "passed", "label", "reason", "error_type", "claims")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DEFAULT_BATCH_ROWS = 64
#: Rows as whole numbers although the bar advances in fractions of a batch.
PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} rows [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


@dataclass
class Evaluation:
    """An evaluator attached to a dataset: which column feeds each of its inputs."""

    name: str
    evaluator: Evaluator
    mapping: dict[str, str]  # evaluator input -> column


@dataclass(frozen=True)
class CohortRate:
    """Fail rate of one evaluation in one cohort. `n` counts scored rows; errors are apart."""

    value: Any
    n: int
    failed: int
    errors: int

    @property
    def passed(self) -> int:
        return self.n - self.failed

    @property
    def fail_rate(self) -> float | None:
        return self.failed / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "failed": self.failed, "errors": self.errors,
                "fail_rate": self.fail_rate}


class Dataset:
    """Rows to evaluate (every column kept), the evaluations attached, and their results."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), *, checkpoint: str | None = None,
                 source: str | None = None, id_column: str | None = None) -> None:
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows]
        #: The column whose value identifies a row (its `row_id`); None: a hash of its inputs.
        self.id_column = id_column
        #: Written to every results row's `checkpoint` column when set (else a row's own is kept).
        self.checkpoint = checkpoint
        self.source = source
        self.evaluations: list[Evaluation] = []
        #: Results rows after `run()` (or as read by `from_results`); None before.
        self.results: list[dict[str, Any]] | None = None
        #: What `from_traces` read and skipped (spans, kept, skipped_without_content, nested).
        self.trace_stats: dict[str, int] | None = None
        #: What generated the responses, when `generate_responses` did (see generate.py).
        self.generation: dict[str, Any] | None = None
        #: The run record read beside a results file (runinfo.py), when there is one.
        self.run_info: dict[str, Any] | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], **kwargs: Any) -> "Dataset":
        rows = []
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise ValueError(f"record {i} is a {type(record).__name__}, not a mapping of column to value")
            rows.append({str(k): _plain(v) for k, v in record.items()})
        return cls(rows, **kwargs)

    @classmethod
    def from_jsonl(cls, path: str | Path, **kwargs: Any) -> "Dataset":
        """One JSON object per line (blank lines skipped); a `.json` file may also hold one list."""
        return cls.from_records(read_json_rows(path), source=str(path), **kwargs)

    @classmethod
    def from_csv(cls, path: str | Path, *, delimiter: str = ",", **kwargs: Any) -> "Dataset":
        """Every column kept as text (`iter_csv_rows`)."""
        return cls(iter_csv_rows(path, delimiter), source=str(path), **kwargs)

    @classmethod
    def from_pandas(cls, frame: "pandas.DataFrame", **kwargs: Any) -> "Dataset":
        """Missing values (NaN, None, NaT) become None; numpy scalars become Python numbers."""
        return cls.from_records(frame.to_dict(orient="records"), **kwargs)

    @classmethod
    def from_parquet(cls, path: str | Path, **kwargs: Any) -> "Dataset":
        return cls(iter_parquet_rows(path), source=str(path), **kwargs)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> "Dataset":
        """By suffix: .jsonl/.ndjson/.json, .csv, .tsv, .parquet."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"dataset file not found: {path}")
        if Path(path).suffix.lower() in JSONL_SUFFIXES:
            return cls.from_jsonl(path, **kwargs)  # all lines unusable: an error, not a run of error rows
        return cls(iter_file_rows(path), source=str(path), **kwargs)

    @classmethod
    def from_results(cls, path: str | Path) -> "Dataset":
        """A results file read back: `results` set, evaluation columns stripped from `rows`. A results
        folder (Parquet parts, as `run --ray` writes) is read whole, rows sorted by `row_id`
        (results_folder.py); `compare` counts a folder without loading its rows."""
        from .results_folder import read_results_rows

        path = Path(path)
        if path.is_dir():
            lines = read_results_rows(path)
        elif not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        else:
            lines = _read_parquet(path) if path.suffix.lower() == ".parquet" else read_json_rows(path, strict=True)
        names = evaluation_names(lines)
        for line in lines:
            parse_claims(line, names)
        eval_columns = {f"{n}.{f}" for n in names for f in RESULT_FIELDS}
        dataset = cls([{k: v for k, v in line.items() if k not in eval_columns} for line in lines],
                      source=str(path))
        dataset.results = lines
        from .runinfo import read_run_info

        dataset.run_info = read_run_info(path)
        return dataset

    @classmethod
    def from_traces(cls, path: str | Path, sample: int | None = None, seed: int = 0) -> "Dataset":
        """Recorded generation spans whose prompt and completion were captured, one row each.

        Reads this project's JSONL trace file or OTLP JSON from a collector; see `traces.py` for
        the columns. `sample` keeps a random `sample` rows (chosen with `seed`, file order kept).
        """
        from .traces import read_trace_rows

        rows, stats = read_trace_rows(path, sample=sample, seed=seed)
        dataset = cls(rows, source=str(path))
        dataset.trace_stats = stats
        return dataset

    # -- columns --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"Dataset({len(self.rows)} rows{where}, columns={self.columns})"

    @property
    def columns(self) -> list[str]:
        """Every column of any row, in order of first appearance."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for key in row:
                seen.setdefault(key)
        return list(seen)

    def with_column(self, name: str, value: Any) -> "Dataset":
        """Set one column to `value` on every row (e.g. a checkpoint label); returns self."""
        for row in self.rows:
            row[name] = value
        return self

    def to_records(self) -> list[dict[str, Any]]:
        """The results rows when run, else the input rows."""
        return [dict(r) for r in (self.results if self.results is not None else self.rows)]

    def to_pandas(self) -> "pandas.DataFrame":
        import pandas as pd

        return pd.DataFrame(self.to_records())

    # -- evaluations ----------------------------------------------------------------------------

    def add_evaluation(self, evaluator: Evaluator | type[Evaluator] | str,
                       mapping: Mapping[str, str] | None = None, name: str | None = None) -> "Dataset":
        """Attach an evaluator; `mapping` says which column feeds each input ({"response": "summary"}).

        An input not in the mapping reads the column of its own name when there is one. Unknown
        inputs, missing columns and required inputs left without a column raise `ValueError`.
        Returns self, so calls chain.
        """
        if isinstance(evaluator, str):
            evaluator = evaluator_class(evaluator)()
        elif isinstance(evaluator, type) and issubclass(evaluator, Evaluator):
            evaluator = evaluator()
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator must be an Evaluator, its class or its name, got {type(evaluator).__name__}")
        kind = type(evaluator).__name__
        mapping = dict(mapping or {})
        columns = self.columns
        unknown = [key for key in mapping if key not in evaluator.inputs]
        if unknown:
            raise ValueError(f"{kind} has no input {', '.join(map(repr, unknown))}; "
                             f"its inputs are {', '.join(evaluator.inputs)}")
        missing = {key: col for key, col in mapping.items() if col not in columns}
        if missing:
            wrong = ", ".join(f"{key}={col!r}" for key, col in missing.items())
            raise ValueError(f"column(s) not in the dataset for {kind}: {wrong}; "
                             f"columns are {', '.join(columns) or '(none)'}")
        for key in evaluator.inputs:
            if key not in mapping and key in columns:
                mapping[key] = key
        unmapped = [key for key in evaluator.required if key not in mapping]
        if unmapped:
            raise ValueError(f"{kind} needs a column for {', '.join(unmapped)}: no column of that name; "
                             f"map one, e.g. mapping={{{unmapped[0]!r}: '<column>'}} "
                             f"(columns are {', '.join(columns) or '(none)'})")
        name = name or evaluator.name
        if any(e.name == name for e in self.evaluations):
            raise ValueError(f"an evaluation named {name!r} is already attached; pass another name=")
        clash = [f"{name}.{f}" for f in RESULT_FIELDS if f"{name}.{f}" in columns]
        if clash:
            raise ValueError(f"evaluation name {name!r} would overwrite column(s) {', '.join(clash)}")
        self.evaluations.append(Evaluation(name, evaluator, mapping))
        return self

    def run(self, batch_size: int = DEFAULT_BATCH_ROWS, progress: bool = True, *, backend: str = "local",
            ray_address: str | None = None, actors: int | None = None) -> list[dict[str, Any]]:
        """Score every attached evaluation over every row; returns (and keeps) the results rows.

        Rows go to `evaluate_batch` `batch_size` at a time. The progress bar counts rows, with rows/s
        and an ETA; within a batch it advances with the model's pairs (a batch of long documents is
        thousands of pairs), so it moves from the first model batch on. Its postfix counts the
        (chunk, claim) pairs scored.

        `backend="ray"` scores the same batches on Ray Data instead, in a pool of `actors` scorer
        actors (one model each) on the cluster at `ray_address` (None: a local one on 127.0.0.1);
        the results are the same rows, in the same order (ray_backend.py).
        """
        if not self.evaluations:
            raise ValueError("no evaluation attached: call add_evaluation(...) first")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        results = [dict(row) for row in self.rows]
        if self.checkpoint is not None:
            for row in results:
                row["checkpoint"] = self.checkpoint
        for row, row_id in zip(results, row_ids(self.rows, self.evaluations, self.id_column)):
            row[ROW_ID] = row_id
        if backend == "ray":
            from .ray_backend import score_on_ray

            self.results = score_on_ray(results, self.evaluations, plan=plan_rows, score=scored_columns,
                                        default=_json_default, batch_size=batch_size, address=ray_address,
                                        actors=actors, progress=progress)
            return self.results
        from tqdm.auto import tqdm

        with tqdm(total=len(self.rows) * len(self.evaluations), unit="row", disable=not progress,
                  desc="evaluating", bar_format=PROGRESS_FORMAT) as bar:
            pairs = 0
            for evaluation in self.evaluations:
                bar.set_description(evaluation.name)
                for first in range(0, len(self.rows), batch_size):
                    chunk = self.rows[first:first + batch_size]
                    start, scored_pairs = bar.n, 0

                    def on_progress(done: int, total: int) -> None:
                        nonlocal scored_pairs
                        bar.set_postfix(pairs=pairs + done, refresh=False)
                        scored_pairs = done
                        bar.update(start + len(chunk) * done / total - bar.n)  # rows, in fractions

                    for row, columns in zip(results[first:first + batch_size],
                                            score_rows(evaluation, chunk, on_progress)):
                        row.update(columns)
                    pairs += scored_pairs
                    bar.set_postfix(pairs=pairs, refresh=False)
                    bar.update(start + len(chunk) - bar.n)
        self.results = results
        return results

    def save(self, path: str | Path) -> Path:
        """Write the results: JSONL (.jsonl/.ndjson/.json) or Parquet (.parquet, needs pyarrow)."""
        if self.results is None:
            raise ValueError("no results to save: call run() first")
        return write_results(self.results, path)

    # -- summaries ------------------------------------------------------------------------------

    @property
    def evaluation_names(self) -> list[str]:
        if self.results is None:
            return []
        return evaluation_names(self.results)

    def fail_rate_by(self, column: str, evaluation: str | None = None) -> dict[Any, CohortRate]:
        """Per value of `column`: scored rows, fails and error rows (kept apart) of one evaluation."""
        if self.results is None:
            raise ValueError("no results: call run() first (or read a results file with from_results)")
        name = pick_evaluation(self.evaluation_names, evaluation)
        if not any(column in row for row in self.results):
            raise ValueError(f"column {column!r} not in the results; columns are {', '.join(self.columns)}")
        counts: dict[Any, list[int]] = {}
        for row in self.results:
            n_failed_errors = counts.setdefault(cohort_key(row.get(column)), [0, 0, 0])
            passed = row.get(f"{name}.passed")
            if passed is None:
                n_failed_errors[2] += 1
            else:
                n_failed_errors[0] += 1
                n_failed_errors[1] += not passed
        return {value: CohortRate(value, n, failed, errors) for value, (n, failed, errors) in counts.items()}


# -- results rows -------------------------------------------------------------------------------


def row_ids(rows: Sequence[Mapping[str, Any]], evaluations: Sequence[Evaluation],
            id_column: str | None = None) -> list[str]:
    """Each row's `row_id`, the key `compare` pairs rows by (the same golden row scored for two
    checkpoints): `id_column`'s value; else the row's own `row_id` when it has one (results scored
    again); else a hash of what the row asks (`row_key`), so two runs over one golden set agree
    whatever the responses (generated or written). A repeated input (one document, several prompts)
    gets `~2`, `~3`... in file order; an `id_column` is the robust choice for such sets. A missing or
    repeated `id_column` value is a ValueError."""
    columns = key_columns(evaluations, rows)
    ids: list[str] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        key = row_key(row, columns, id_column, number)
        if id_column is not None and key in seen:
            raise ValueError(repeated_id_message(id_column, key, seen[key], number))
        seen[key] = seen.get(key, 0) + 1
        repeat = seen[key] if numbered(row, id_column) else 1
        ids.append(key if repeat == 1 else f"{key}~{repeat}")
    return ids


def key_columns(evaluations: Sequence[Evaluation], rows: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The columns whose values identify a row: its evaluations' inputs other than the response
    (with only responses mapped, every other column of `rows`)."""
    columns = sorted({column for ev in evaluations for key, column in ev.mapping.items() if key != "response"})
    if not columns:
        responses = {column for ev in evaluations for key, column in ev.mapping.items() if key == "response"}
        columns = sorted({k for row in rows for k in row} - responses - {"checkpoint", ROW_ID})
    return columns


def row_key(row: Mapping[str, Any], columns: Sequence[str], id_column: str | None = None,
            number: int | None = None) -> str:
    """A row's id before repeats are numbered: `id_column`'s value, its own `row_id`, or a 16-hex
    digest of its `columns` (of the whole row when it could not be read as it was)."""
    if id_column is not None:
        value = row.get(id_column)
        if value is None or value == "":
            raise ValueError(f"row {number if number is not None else '?'} has no {id_column!r} (the id column)")
        return str(value)
    if row.get(ROW_ID) not in (None, ""):
        return str(row[ROW_ID])
    text = json.dumps([row.get(column) for column in columns] if not row.get(INPUT_ERROR) else row,
                      ensure_ascii=True, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def numbered(row: Mapping[str, Any], id_column: str | None) -> bool:
    """Whether a repeat of this row's key is numbered (`~2`...): a digest's is; an id's is an error."""
    return id_column is None and row.get(ROW_ID) in (None, "")


def repeated_id_message(id_column: str, key: str, first: Any, second: Any) -> str:
    return (f"rows {first} and {second} have the same {id_column!r}: {key!r} "
            "(an id column must be unique)")


def score_rows(evaluation: Evaluation, rows: Sequence[Mapping[str, Any]],
               on_progress: Any = None) -> list[dict[str, Any]]:
    """One evaluation's result columns for each of `rows`, scored in one batch: `plan_rows` then
    `scored_columns` (the local run calls both here; Ray calls them in a CPU task and a scorer actor)."""
    return scored_columns(evaluation, plan_rows(evaluation, rows), on_progress)


def plan_rows(evaluation: Evaluation, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Each row's inputs checked and cut into claims and chunks (tokenizer only, no model): a
    `Planned`, or the error result of a bad row (a row with an `input_error` gets that)."""
    usable = [i for i, row in enumerate(rows) if not row.get(INPUT_ERROR)]
    items = [{key: rows[i].get(col) for key, col in evaluation.mapping.items()} for i in usable]
    planned = dict(zip(usable, evaluation.evaluator.plan_batch(items) if items else []))
    return [planned[i] if i in planned else EvalResult.from_error(
                evaluation.name, InputError(row[INPUT_ERROR]), evaluation.evaluator.threshold)
            for i, row in enumerate(rows)]


def scored_columns(evaluation: Evaluation, planned: Sequence[Any], on_progress: Any = None) -> list[dict[str, Any]]:
    """The result columns of `plan_rows`' output, its planned rows scored in one batch."""
    return [result_columns(evaluation.name, result)
            for result in evaluation.evaluator.score_planned(planned, on_progress=on_progress)]


def parse_claims(row: dict[str, Any], names: Sequence[str]) -> None:
    """The evaluations' claims of a results row as lists, in place (Parquet stores them as JSON text)."""
    for name in names:
        claims = row.get(f"{name}.claims")
        if isinstance(claims, str):
            row[f"{name}.claims"] = json.loads(claims) if claims else []


def load_results(path: str | Path) -> Dataset:
    """A results file (JSONL or Parquet) or folder read back; the same as `Dataset.from_results`."""
    return Dataset.from_results(path)



def result_columns(name: str, result: EvalResult) -> dict[str, Any]:
    data = result.to_dict()
    return {f"{name}.{field}": data[field] for field in RESULT_FIELDS}


def compare(baseline: "Dataset | str | Path", candidate: "Dataset | str | Path", max_delta: float = 0.02,
            by: str | Sequence[str] | None = None, confidence: float = 0.95,
            evaluations: Sequence[str] | None = None,
            max_error_rate: float = DEFAULT_MAX_ERROR_RATE, id_column: str | None = None) -> Comparison:
    """Pass-rate change per evaluation and cohort, with Newcombe intervals (paired when the rows
    match by `row_id`, or by `id_column`) and regression flags.

    Each side is a `Dataset` that has run (or been read with `from_results`), a results file path
    or a results folder path (Parquet parts). Evaluations default to those present on both sides
    (`regression.compare_results`). Errored rows are failures; a side with more than
    `max_error_rate` of its rows errored raises `BrokenResults`; rows missing from the candidate
    fail the gate (`Comparison.failed`). When a side is a folder, both sides are counted with Arrow
    over the columns needed (results_folder.py), and cohorts are listed by value.
    """
    from .results_folder import ResultsFolder, ResultsRows, compare_sides
    from .runinfo import describe_changes

    base_rows, base_label, base_info = _results(baseline, "baseline")
    cand_rows, cand_label, cand_info = _results(candidate, "candidate")
    options = dict(max_delta=max_delta, by=by, confidence=confidence, evaluations=evaluations,
                   max_error_rate=max_error_rate, id_column=id_column)
    if isinstance(base_rows, ResultsFolder) or isinstance(cand_rows, ResultsFolder):
        sides = [rows if isinstance(rows, ResultsFolder) else ResultsRows(rows, role, label)
                 for rows, role, label in ((base_rows, "baseline", base_label), (cand_rows, "candidate", cand_label))]
        comparison = compare_sides(*sides, **options)
    else:
        comparison = compare_results(base_rows, cand_rows, base_label=base_label, cand_label=cand_label, **options)
    if base_info is not None or cand_info is not None:  # what changed underneath, beside the deltas
        comparison.changes, comparison.warnings = describe_changes(base_info, cand_info)
    return comparison


def _results(side: Any, role: str) -> tuple[Any, str, dict[str, Any] | None]:
    """(the side's results rows, or a `ResultsFolder` for a results folder; its label; its run record)."""
    from .results_folder import ResultsFolder, is_results_folder
    from .runinfo import read_run_info

    if is_results_folder(side):
        folder = ResultsFolder(side, role)
        return folder, folder.label, read_run_info(Path(side))  # `out/` -> out.run.json
    if isinstance(side, (str, Path)):
        side = Dataset.from_results(side)
    if not isinstance(side, Dataset):
        raise TypeError(f"{role} must be a Dataset or a results file or folder path, got {type(side).__name__}")
    if side.results is None:
        raise ValueError(f"the {role} dataset has no results: run() it first")
    checkpoints = list(dict.fromkeys(str(r["checkpoint"]) for r in side.results if r.get("checkpoint") is not None))
    label = checkpoints[0] if len(checkpoints) == 1 else (side.source or role)
    return side.results, label, side.run_info


def pick_evaluation(names: Sequence[str], evaluation: str | None) -> str:
    if not names:
        raise ValueError("the results hold no evaluation (no N.score / N.passed columns)")
    if evaluation is None:
        if len(names) > 1:
            raise ValueError(f"several evaluations in the results ({', '.join(names)}): name one")
        return names[0]
    if evaluation not in names:
        raise ValueError(f"no evaluation {evaluation!r} in the results; there are {', '.join(names)}")
    return evaluation


def write_results(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*JSONL_SUFFIXES, ".parquet"):
        raise ValueError(f"{path}: results are written as JSONL (.jsonl, .ndjson, .json) or Parquet (.parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        _write_parquet(rows, path)
        return path
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False, default=_json_default)
            if not _encodable(line):  # a lone surrogate: written as its JSON escape, the row kept whole
                line = json.dumps(row, ensure_ascii=True, default=_json_default)
            fh.write(line + "\n")
    return path


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_json_rows(path: str | Path, strict: bool = False) -> list[dict[str, Any]]:
    """JSONL (one object per line) or, for a file that is one JSON list of objects, that list. A line
    that is not a JSON object becomes a row with only `input_error` (with `strict`, as for a results
    file this project wrote, it is a ValueError naming the line)."""
    rows = list(iter_json_rows(path, strict))
    bad = sum(1 for row in rows if row.get(INPUT_ERROR))
    if rows and bad == len(rows):
        raise ValueError(f"{path}: no line is a usable JSON object ({rows[0][INPUT_ERROR]})")
    return rows


def iter_json_rows(path: str | Path, strict: bool = False) -> Iterator[dict[str, Any]]:
    """`read_json_rows`, one row at a time (a JSONL file is never held whole)."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as fh:  # a byte-order mark is not JSON
        if fh.read(4096).lstrip().startswith("["):
            fh.seek(0)
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: starts with '[' but is not one JSON list of objects ({exc})") from None
            if not all(isinstance(item, dict) for item in data):
                raise ValueError(f"{path}: a JSON list of objects (rows) was expected")
            yield from data
            return
        fh.seek(0)
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:  # kept as an error row: one bad line does not lose the run
                row = f"{path}:{number}: not JSON ({exc.msg})"
            else:
                if not isinstance(row, dict):
                    row = f"{path}:{number}: a JSON object per line was expected, got {type(row).__name__}"
            if isinstance(row, str):
                if strict:
                    raise ValueError(row)
                yield {INPUT_ERROR: row}
                continue
            if not _encodable(json.dumps(row, ensure_ascii=False)):
                row[INPUT_ERROR] = f"{path}:{number}: text that UTF-8 cannot encode (a lone surrogate)"
            yield row


def iter_csv_rows(path: str | Path, delimiter: str = ",") -> Iterator[dict[str, Any]]:
    """Every column kept as text, as the file has it (no type guessing); a UTF-8 byte-order mark
    (as spreadsheet programs write) is not part of the first column's name."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"{path}: no header row")
        yield from reader


def iter_parquet_rows(path: str | Path, batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    """A Parquet file's rows, a record batch at a time, as plain Python values."""
    pa = _require_pyarrow()
    for batch in pa.parquet.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            yield {str(k): _plain(v) for k, v in record.items()}


def iter_file_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """One dataset file's rows as `Dataset.load` reads them (by suffix), one at a time."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return iter_json_rows(path)
    if suffix in (".csv", ".tsv"):
        return iter_csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return iter_parquet_rows(path)
    raise ValueError(f"{path}: unknown dataset format {suffix or '(no suffix)'!r}; "
                     "use .jsonl, .json, .csv, .tsv or .parquet")


def _require_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'fi-evals-core[datasets]' "
                          "(or write .jsonl)") from None
    return pyarrow


def _write_parquet(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    pa = _require_pyarrow()
    columns = list(dict.fromkeys(key for row in rows for key in row))  # Arrow would keep the first row's only
    flat = [{k: (json.dumps(row.get(k), ensure_ascii=False, default=_json_default) if k.endswith(".claims")
                 and k in row else row.get(k)) for k in columns} for row in rows]
    try:
        table = pa.Table.from_pylist(flat)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"cannot write {path} as Parquet: a column mixes types ({exc}); write .jsonl") from None
    pa.parquet.write_table(table, path)


def _read_parquet(path: str | Path) -> list[dict[str, Any]]:
    pa = _require_pyarrow()
    return pa.parquet.read_table(path).to_pylist()


def _plain(value: Any) -> Any:
    """numpy/pandas scalars to Python values; NaN and NaT to None."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:  # numpy scalar
        try:
            return _plain(item())
        except (ValueError, TypeError):
            pass
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    if hasattr(value, "tolist"):  # numpy array in a cell
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    plain = _plain(value)
    return plain if plain is not value else str(value)

__all__ = ["CohortRate", "Comparison", "Dataset", "Evaluation", "compare", "evaluation_names", "load_results",
           "read_json_rows", "write_results"]
