"""What `fi-evals report` reads of each checkpoint, from rows in memory or from a results folder.

The report needs, per checkpoint and evaluation: counts (rows, passed, errors), the scores' sum
and 10-bin histogram, the same per cohort of each `by` column, the most common error cause, the
lowest-scoring and the errored rows (a few, shown whole), and with human labels each row's score,
verdict and label. A results file is read into rows (`CheckpointRows`: the counting walks them).
A results folder (`run --ray`: millions of rows) is never turned into rows
(`CheckpointFolder`): the counts, sums and bins are Arrow aggregations over the few columns they
need (`pyarrow.dataset` projection, a `group_by` per cohort column), the regression verdicts are
`fi-evals compare`'s own column-wise counts (results_folder.py), and only the rows the report
shows (the worst `worst_n` per evaluation and up to 20 errored rows) are read whole, by `row_id`.
The agreement with human labels reads four columns (row id, label, score, verdict) of the rows.

A folder's rows have no order: it is read sorted by `row_id` where order matters (the tie-break
among equally low scores, which errored rows are shown), as `Dataset.from_results` reads it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .agreement import Labelled, labelled_scores
from .regression import ROW_ID, error_summary, evaluation_names

BINS = 10
MISSING = "(missing)"
ID_COLUMNS = ("id", "item_id", "row_id", "uid", "example_id")


@dataclass
class Stats:
    """One evaluation's counts over some rows: an error is a failure (pass rate = passed / rows)."""

    rows: int = 0
    passed: int = 0
    judged: int = 0  # rows with a verdict
    errors: int = 0
    scored: int = 0  # rows with a score
    score_sum: float = 0.0
    bins: list[int] = field(default_factory=lambda: [0] * BINS)  # scored rows per bin [0, 0.1) ... [0.9, 1]

    def add(self, row: dict[str, Any], ev: str) -> None:
        if f"{ev}.score" not in row:
            return
        self.rows += 1
        verdict = passed_value(row, ev)
        if verdict is not None:
            self.judged += 1
            self.passed += verdict
        if is_error(row, ev):
            self.errors += 1
        score = score_value(row, ev)
        if score is not None:
            self.scored += 1
            self.score_sum += score
            self.bins[bin_of(score)] += 1

    def merge(self, other: "Stats") -> None:
        self.rows += other.rows
        self.passed += other.passed
        self.judged += other.judged
        self.errors += other.errors
        self.scored += other.scored
        self.score_sum += other.score_sum
        self.bins = [a + b for a, b in zip(self.bins, other.bins)]

    @property
    def pass_rate(self) -> float | None:
        """Passed over rows: an error is a failure, as in `compare`."""
        return self.passed / self.rows if self.rows else None

    @property
    def mean(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None


def bin_of(score: float) -> int:
    """The histogram bin of a score; scores outside 0..1 go to the end bins."""
    return min(BINS - 1, max(0, int(score * BINS)))


def score_value(row: dict[str, Any], ev: str) -> float | None:
    value = row.get(f"{ev}.score")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def passed_value(row: dict[str, Any], ev: str) -> bool | None:
    value = row.get(f"{ev}.passed")
    return value if isinstance(value, bool) else None


def is_error(row: dict[str, Any], ev: str) -> bool:
    return bool(row.get(f"{ev}.error_type")) or (f"{ev}.score" in row and score_value(row, ev) is None)


def cohort_name(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def row_ref(row: dict[str, Any], position: int) -> str:
    """A label for a shown row: its id column, else `#k` (its place in its checkpoint, from 1)."""
    key = next((c for c in ID_COLUMNS if row.get(c) not in (None, "")), None)
    text = " ".join(str(row[key]).split()) if key else f"#{position}"
    return text if len(text) <= 24 else text[:23].rstrip() + "…"


def clean(value: Any) -> Any:
    """NaN (pandas' missing value) reads as None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class Shown:
    """A row the report shows whole: its sort key within its checkpoint, the row, its label."""

    order: tuple
    row: dict[str, Any]
    ref: str


class CheckpointRows:
    """One checkpoint's rows, in memory (results files)."""

    def __init__(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.name = name
        self.rows = rows
        self.columns = list(dict.fromkeys(key for row in rows for key in row))

    @property
    def size(self) -> int:
        return len(self.rows)

    def _of(self, ev: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if f"{ev}.score" in r]

    def has_evaluation(self, ev: str) -> bool:
        return any(f"{ev}.score" in r for r in self.rows)

    def has_column(self, column: str, ev: str | None = None) -> bool:
        return any(column in r for r in (self.rows if ev is None else self._of(ev)))

    def stats(self, ev: str) -> Stats:
        st = Stats()
        for row in self.rows:
            st.add(row, ev)
        return st

    def stats_by(self, ev: str, column: str) -> dict[str, Stats]:
        groups: dict[str, Stats] = {}
        for row in self._of(ev):
            groups.setdefault(cohort_name(row.get(column)), Stats()).add(row, ev)
        return groups

    def error_cause(self, ev: str) -> str | None:
        return error_summary(self._of(ev), ev)[2]

    def worst(self, ev: str, limit: int) -> list[Shown]:
        scored = [(score, k, row) for k, row in enumerate(self.rows, 1) if (score := score_value(row, ev)) is not None]
        scored.sort(key=lambda item: item[:2])
        return [Shown((score, k), row, row_ref(row, k)) for score, k, row in scored[:limit]]

    def errors(self, ev: str, limit: int) -> tuple[Counter, list[Shown]]:
        """(errored rows per kind, the first `limit` of them)."""
        errored = [(k, row) for k, row in enumerate(self.rows, 1) if is_error(row, ev)]
        kinds = Counter(row.get(f"{ev}.error_type") or "not scored" for _, row in errored)
        return kinds, [Shown((k,), row, row_ref(row, k)) for k, row in errored[:max(limit, 0)]]

    def labelled(self, ev: str, label_column: str) -> Labelled:
        return labelled_scores(self._of(ev), ev, label_column)

    def compare_side(self, ev: str, role: str) -> Any:
        from .results_folder import ResultsRows

        return ResultsRows(self._of(ev), role, self.name)


class CheckpointFolder:
    """One checkpoint of a results folder, aggregated with Arrow (see the module docstring)."""

    def __init__(self, folder: Path, name: str, where: Any) -> None:
        from .results_folder import ResultsFolder

        self.name = name
        self.side = ResultsFolder(folder, where=where, label=name)
        self.columns = self.side.columns
        self.size = self.side.read([]).num_rows

    def has_evaluation(self, ev: str) -> bool:
        return f"{ev}.score" in self.columns

    def has_column(self, column: str, ev: str | None = None) -> bool:
        return column in self.columns

    def _columns(self, ev: str, extra: Sequence[str] = ()) -> Any:
        """The rows as columns `score` (float, null when not a number), `passed` (bool), `error`
        (bool, as `is_error`), `error_type` and `bin` (null when not scored), plus `extra` as read."""
        from .results_folder import _arrow

        pa, pc, _, _ = _arrow()
        table = self.side.read([*extra, f"{ev}.score", f"{ev}.passed", f"{ev}.error_type"])
        n = table.num_rows

        def column(name: str, kind: Any) -> Any:
            if name not in table.column_names:
                return pa.nulls(n, kind)
            values = table[name]
            try:
                return values if values.type == kind else pc.cast(values, kind)
            except pa.ArrowException as exc:
                raise ValueError(f"results folder {self.side.folder}: {name} is {values.type}, not {kind} "
                                 f"({exc})") from None

        score = column(f"{ev}.score", pa.float64())
        valid = pc.fill_null(pc.invert(pc.is_nan(score)), False)
        clipped = pc.max_element_wise(pc.min_element_wise(pc.if_else(valid, score, 0.0), 1.0), 0.0)
        bins = pc.min_element_wise(pc.cast(pc.floor(pc.multiply(clipped, float(BINS))), pa.int64()), BINS - 1)
        error_type = column(f"{ev}.error_type", pa.string())
        error = pc.or_(pc.fill_null(pc.not_equal(error_type, ""), False), pc.invert(valid))
        return pa.table({**{name: table[name] for name in extra if name in table.column_names},
                         "score": pc.if_else(valid, score, None), "passed": column(f"{ev}.passed", pa.bool_()),
                         "error": error, "error_type": error_type, "bin": pc.if_else(valid, bins, None)})

    def stats(self, ev: str) -> Stats:
        return self._grouped(ev, None).get(None, Stats())

    def stats_by(self, ev: str, column: str) -> dict[str, Stats]:
        return self._grouped(ev, column)

    def _grouped(self, ev: str, column: str | None) -> dict[Any, Stats]:
        """Stats per cohort name of `column` (without one: a single group, keyed None), as Arrow sums."""
        from .results_folder import _arrow, _as_keys, _grouped

        pa, pc, _, _ = _arrow()
        table = self._columns(ev, [column] if column else [])
        n = table.num_rows
        keys = _as_keys(table[column]) if column in table.column_names else pa.nulls(n, pa.int8())
        scored = pc.is_valid(table["score"])
        counted = pa.table({"k": keys, "p": pc.cast(pc.fill_null(table["passed"], False), pa.int64()),
                            "j": pc.cast(pc.is_valid(table["passed"]), pa.int64()),
                            "e": pc.cast(table["error"], pa.int64()), "v": pc.cast(scored, pa.int64()),
                            "s": pc.fill_null(table["score"], 0.0), "b": table["bin"]})
        bins: dict[Any, list[int]] = {}
        for g in counted.filter(scored).group_by(["k", "b"], use_threads=False).aggregate(
                [([], "count_all")]).to_pylist():
            bins.setdefault(g["k"], [0] * BINS)[g["b"]] += g["count_all"]
        groups: dict[Any, Stats] = {}
        for value, g in _grouped(counted, "k", ["p", "j", "e", "v", "s"]).items():
            st = Stats(g["n"], g["p"], g["j"], g["e"], g["v"], g["s"], bins.get(value, [0] * BINS))
            key = cohort_name(value) if column else None
            if key in groups:  # two values with one name (a cohort named "(missing)" and a missing one)
                groups[key].merge(st)
            else:
                groups[key] = st
        return groups

    def error_cause(self, ev: str) -> str | None:
        return self.side.error_cause(ev)

    def _whole_rows(self, row_ids: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        """The rows with these ids, every column, as the report reads a results file's rows."""
        if not row_ids:
            return {}
        return {row[ROW_ID]: {**as_result_row(row, self.name), "checkpoint": self.name}
                for row in self.side.rows_with_ids(row_ids).to_pylist()}

    def worst(self, ev: str, limit: int) -> list[Shown]:
        from .results_folder import _arrow

        pc = _arrow()[1]
        table = self._columns(ev, [ROW_ID])
        scored = table.filter(pc.is_valid(table["score"])).sort_by([("score", "ascending"), (ROW_ID, "ascending")])
        lowest = scored.slice(0, limit).select(["score", ROW_ID]).to_pylist()
        rows = self._whole_rows([item[ROW_ID] for item in lowest])
        return [Shown((item["score"], item[ROW_ID]), rows[item[ROW_ID]], row_ref(rows[item[ROW_ID]], 0))
                for item in lowest]

    def errors(self, ev: str, limit: int) -> tuple[Counter, list[Shown]]:
        """(errored rows per kind, the first `limit` of them by `row_id`)."""
        from .results_folder import _arrow

        pc = _arrow()[1]
        table = self._columns(ev, [ROW_ID])
        errored = table.filter(table["error"]).sort_by(ROW_ID)
        kinds: Counter = Counter()
        for g in errored.group_by("error_type", use_threads=False).aggregate([([], "count_all")]).to_pylist():
            kinds[g["error_type"] or "not scored"] += g["count_all"]
        first = pc.drop_null(errored[ROW_ID]).slice(0, max(limit, 0)).to_pylist()
        rows = self._whole_rows(first)
        return kinds, [Shown((row_id,), rows[row_id], row_ref(rows[row_id], 0)) for row_id in first]

    def labelled(self, ev: str, label_column: str) -> Labelled:
        rows = self.side.read([label_column, f"{ev}.score", f"{ev}.passed"])
        if ROW_ID in rows.column_names:
            rows = rows.sort_by(ROW_ID)
        return labelled_scores([{k: clean(v) for k, v in row.items()} for row in rows.to_pylist()], ev, label_column)

    def compare_side(self, ev: str, role: str) -> Any:
        from .results_folder import ResultsFolder

        return ResultsFolder(self.side.folder, role, where=self.side.where, label=self.name)


def as_result_row(row: dict[str, Any], default_checkpoint: str) -> dict[str, Any]:
    """A results row as the report reads it: NaN as None, claims parsed from JSON text (Parquet),
    `checkpoint` set (its value, else the file's or folder's stem)."""
    from .dataset import parse_claims

    row = {k: clean(v) for k, v in row.items()}
    parse_claims(row, evaluation_names([row]))
    checkpoint = row.get("checkpoint")
    row["checkpoint"] = str(checkpoint) if checkpoint not in (None, "") else default_checkpoint
    return row


def folder_checkpoints(folder: Path) -> list[tuple[str, Any]]:
    """(name, Arrow filter) of each checkpoint of a results folder, by value; rows without one are the
    folder's name, as a file's are its stem."""
    from .results_folder import ResultsFolder, _arrow

    pc = _arrow()[1]
    side = ResultsFolder(folder)
    if "checkpoint" not in side.columns:
        return [(folder.stem, None)]
    values = pc.unique(side.read(["checkpoint"])["checkpoint"]).to_pylist()
    named = [(str(v), pc.field("checkpoint") == v) for v in sorted(v for v in values if v not in (None, ""))]
    if any(v in (None, "") for v in values):
        unnamed = pc.field("checkpoint").is_null()
        if "" in values:
            unnamed = unnamed | (pc.field("checkpoint") == "")
        named.append((folder.stem, unnamed))
    return named


def checkpoint_views(rows: Iterable[dict[str, Any]]) -> list[CheckpointRows]:
    """Rows that carry `checkpoint`, one view per checkpoint in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["checkpoint"], []).append(row)
    return [CheckpointRows(name, group) for name, group in groups.items()]
