"""Results folders: one run's results as a directory of Parquet part files, read column-wise.

`fi-evals run --ray -o out/` writes its results as a folder: every `*.parquet` under it (searched
recursively; a name starting with `_` or `.` is skipped, e.g. `_fi_evals_manifest.json` or a
`.part-3.tmp` being written) holds some of the rows, with exactly the columns of a `.parquet`
results file (dataset.py). Rows are in no particular order across the parts. The run record of
`out/` is `out.run.json` beside it (runinfo.py).

A folder is built for millions of rows, so `compare` never turns it into Python rows: it reads only
the columns the comparison needs (the id column, `checkpoint`, the cohort columns and each
evaluation's `N.passed`) with `pyarrow.dataset` projection and counts them with Arrow (`group_by`
sums per cohort; the paired verdicts a/b/c/d over an inner `join` on the id), into the same
`regression.CohortCounts` the row path builds, so the statistics are one code. When one side is a
results file and the other a folder, the file's rows are put in the same columns and counted alike.
The causes of errored rows are read (a filtered scan of `N.error_type` / `N.reason`) only when a
side is refused for its error rate.

One difference from two files: a folder's rows have no order, so cohorts are listed by value
(numbers, then text, missing last) rather than in order of first appearance.

`read_results_rows` loads every row and column (`Dataset.from_results` needs them), sorted by
`row_id`, so the rows are the same whatever the partitioning; the report reads a folder column-wise
too (report_views.py), one checkpoint at a time (`ResultsFolder(where=...)`).

A folder is refused with a ValueError naming what is wrong: no part file, a part that is not
readable Parquet (a run cut short), parts whose column types disagree, or a `row_id` in more than
one row (rows written twice, e.g. by a retried task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .regression import (DEFAULT_MAX_ERROR_RATE, OVERALL, ROW_ID, CohortCounts, Comparison, Pairs, Side,
                         check_compare_options, check_error_counts, cohort_columns, cohort_key, comparison_from_counts,
                         error_cause, error_summary, evaluation_names, paired_by, pick_evaluations, unpaired_mismatch,
                         unpaired_repeated_key, unpaired_without_key)

PART_SUFFIX = ".parquet"
SKIPPED_PREFIXES = ("_", ".")  # manifests and parts being written

__all__ = ["ResultsFolder", "ResultsRows", "compare_sides", "is_results_folder", "open_results_folder", "part_files",
           "read_results_rows"]


def _arrow() -> tuple[Any, Any, Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("results folders need pyarrow: pip install 'fi-evals-core[datasets]'") from None
    return pa, pc, ds, pq


def is_results_folder(path: Any) -> bool:
    return isinstance(path, (str, Path)) and Path(path).is_dir()


def part_files(folder: str | Path) -> list[Path]:
    """The folder's Parquet parts, sorted by path; none is a ValueError naming the folder."""
    folder = Path(folder)
    parts = sorted(path for path in folder.rglob("*")
                   if path.suffix.lower() == PART_SUFFIX and path.is_file()
                   and not any(name.startswith(SKIPPED_PREFIXES) for name in path.relative_to(folder).parts))
    if not parts:
        raise ValueError(f"results folder {folder}: no Parquet part file (*{PART_SUFFIX}) in it "
                         f"(names starting with '_' or '.' are skipped)")
    return parts


def open_results_folder(folder: str | Path) -> Any:
    """A `pyarrow.dataset.Dataset` over the folder's parts, with the union of their schemas (a column
    that is all null in one part, or missing from it, reads as null there). Every part's footer is
    read first, so a broken or partly written part is named."""
    pa, _, ds, pq = _arrow()
    folder = Path(folder)
    parts = part_files(folder)
    schemas = []
    for part in parts:
        try:
            schemas.append(pq.read_schema(part))
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"results folder {folder}: {part} is not a readable Parquet file "
                             f"(written only in part?): {exc}") from None
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except pa.ArrowException as exc:
        raise ValueError(f"results folder {folder}: its part files disagree on column types "
                         f"({_type_clash(parts, schemas) or exc})") from None
    return ds.dataset([str(part) for part in parts], schema=schema, format="parquet")


def _type_clash(parts: Sequence[Path], schemas: Sequence[Any]) -> str | None:
    seen: dict[str, tuple[Any, Path]] = {}
    for part, schema in zip(parts, schemas):
        for field in schema:
            if str(field.type) == "null":
                continue
            first = seen.setdefault(field.name, (field.type, part))
            if first[0] != field.type:
                return f"column {field.name!r} is {first[0]} in {first[1].name} and {field.type} in {part.name}"
    return None


def _scan(dataset: Any, folder: Path, **kwargs: Any) -> Any:
    pa = _arrow()[0]
    try:
        return dataset.to_table(**kwargs)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"results folder {folder}: cannot read its part files ({exc})") from None


def _check_unique_row_ids(row_ids: Any, folder: Path, dataset: Any) -> None:
    """A `row_id` in more than one row is a ValueError naming it and the parts that hold it (rows
    without one are left to the pairing, which says so)."""
    pa, pc, _, _ = _arrow()
    if row_ids.null_count == len(row_ids):
        return
    counts = pa.table({"k": row_ids}).group_by("k", use_threads=False).aggregate([([], "count_all")])
    repeated = counts.filter(pc.and_(pc.is_valid(counts["k"]), pc.greater(counts["count_all"], 1)))
    if not repeated.num_rows:
        return
    value = repeated["k"][0].as_py()
    where = _scan(dataset, folder, columns=["__filename"], filter=pc.field(ROW_ID) == value)["__filename"]
    files = sorted({str(Path(name).relative_to(folder)) if Path(name).is_relative_to(folder) else name
                    for name in where.to_pylist()})
    more = f"; {repeated.num_rows - 1} other row_id(s) repeated too" if repeated.num_rows > 1 else ""
    raise ValueError(f"results folder {folder}: row_id {value!r} is in {repeated['count_all'][0].as_py()} rows "
                     f"(in {', '.join(files)}){more}: rows written twice (a retried task?); remove the duplicate part")


def read_results_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every row of a results folder with every column, sorted by `row_id` (claims still JSON text)."""
    folder = Path(folder)
    dataset = open_results_folder(folder)
    table = _scan(dataset, folder)
    if ROW_ID in table.column_names:
        _check_unique_row_ids(table[ROW_ID], folder, dataset)
        table = table.sort_by(ROW_ID)
    return table.to_pylist()


# -- the two kinds of side ------------------------------------------------------------------------


class ResultsFolder:
    """One side of a comparison read from a results folder, column by column; with `where` (an Arrow
    filter expression), only its rows that match (one checkpoint of a folder that holds several)."""

    def __init__(self, folder: str | Path, role: str = "results", *, where: Any = None,
                 label: str | None = None) -> None:
        self.folder = Path(folder)
        self.role = role
        self.where = where
        self.dataset = open_results_folder(self.folder)
        self.columns: list[str] = list(self.dataset.schema.names)
        self.evaluation_names = evaluation_names([dict.fromkeys(self.columns)])
        self.label = label or self._label()

    def _filter(self, where: Any = None) -> Any:
        if self.where is None or where is None:
            return where if self.where is None else self.where
        return self.where & where

    def _label(self) -> str:
        """The checkpoint when every row names the same one, else the folder (as for a file)."""
        _, pc, _, _ = _arrow()
        if "checkpoint" not in self.columns:
            return str(self.folder)
        values = pc.unique(_scan(self.dataset, self.folder, columns=["checkpoint"],
                                 filter=self._filter())["checkpoint"]).to_pylist()
        checkpoints = list(dict.fromkeys(str(v) for v in values if v is not None))
        return checkpoints[0] if len(checkpoints) == 1 else str(self.folder)

    def read(self, columns: Sequence[str] | None, where: Any = None) -> Any:
        """The folder's rows in `columns` (those it has; None: all), read with projection, only those
        matching `where` too; `row_id` always, checked unique."""
        present = (None if columns is None else
                   [c for c in dict.fromkeys([ROW_ID, *columns]) if c in self.columns])
        table = _scan(self.dataset, self.folder, columns=present, filter=self._filter(where))
        if ROW_ID in table.column_names:
            _check_unique_row_ids(table[ROW_ID], self.folder, self.dataset)
        return table

    def rows_with_ids(self, row_ids: Sequence[Any]) -> Any:
        """The rows whose `row_id` is one of `row_ids`, every column: streamed part by part, only the
        matching rows kept, so memory is one part's, not the folder's."""
        pa, pc, _, _ = _arrow()
        wanted = self._filter(pc.field(ROW_ID).isin(list(row_ids)))
        try:
            batches = [batch for batch in self.dataset.to_batches(filter=wanted, batch_readahead=1,
                                                                  fragment_readahead=1) if batch.num_rows]
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"results folder {self.folder}: cannot read its part files ({exc})") from None
        return pa.Table.from_batches(batches, schema=self.dataset.schema)

    def error_cause(self, name: str) -> str | None:
        """The most common cause among rows whose evaluation `name` errored (ties: first by text)."""
        pa, pc, _, _ = _arrow()
        if f"{name}.passed" not in self.columns:
            return error_cause(None, None) if self.read([]).num_rows else None
        wanted = [f"{name}.error_type", f"{name}.reason"]
        errored = _scan(self.dataset, self.folder, columns=[c for c in wanted if c in self.columns],
                        filter=self._filter(pc.field(f"{name}.passed").is_null()))
        keys = [c for c in errored.column_names if not pa.types.is_null(errored.schema.field(c).type)]
        causes: dict[str, int] = {}
        if keys:
            for group in errored.group_by(keys, use_threads=False).aggregate([([], "count_all")]).to_pylist():
                cause = error_cause(group.get(wanted[0]), group.get(wanted[1]))
                causes[cause] = causes.get(cause, 0) + group["count_all"]
        elif errored.num_rows:
            causes[error_cause(None, None)] = errored.num_rows
        return max(sorted(causes), key=causes.__getitem__) if causes else None


class ResultsRows:
    """One side of a comparison held as results rows (a results file, a Dataset) when the other side
    is a folder: put in the same columns, so both are counted alike."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], role: str, label: str) -> None:
        self.rows = rows
        self.role = role
        self.label = label
        self.columns: list[str] = list(dict.fromkeys(key for row in rows for key in row))
        self.evaluation_names = evaluation_names(rows)

    def read(self, columns: Sequence[str]) -> Any:
        """The rows in `columns` (those they have), each value as its cohort key (lists and dicts as
        JSON text, as the row path groups them)."""
        pa = _arrow()[0]
        arrays = {}
        for column in dict.fromkeys(columns):
            if column not in self.columns:
                continue
            values = [cohort_key(row.get(column)) for row in self.rows]
            try:
                arrays[column] = pa.array(values)
            except (pa.ArrowException, TypeError) as exc:
                kinds = ", ".join(sorted({type(v).__name__ for v in values if v is not None}))
                raise ValueError(f"the {self.role} results: column {column!r} mixes value types ({kinds}), which "
                                 f"cannot be compared against a results folder ({exc})") from None
        return pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(self.rows))})

    def error_cause(self, name: str) -> str | None:
        return error_summary(self.rows, name)[2]


# -- counting ---------------------------------------------------------------------------------------


def compare_sides(baseline: ResultsFolder | ResultsRows, candidate: ResultsFolder | ResultsRows, *,
                  max_delta: float = 0.02, by: str | Sequence[str] | None = None, confidence: float = 0.95,
                  evaluations: Sequence[str] | None = None, max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
                  id_column: str | None = None) -> Comparison:
    """`regression.compare_results` for sides of which one at least is a results folder: the same
    checks in the same order, the same messages, the counts taken with Arrow."""
    check_compare_options(max_delta, max_error_rate, confidence)
    columns = cohort_columns(by)
    sides = (baseline, candidate)
    names, skipped = pick_evaluations(baseline.evaluation_names, candidate.evaluation_names, evaluations)
    for column in columns:
        for side in sides:
            if column not in side.columns:
                raise ValueError(f"column {column!r} not in the {side.role} results")
    if id_column is not None:
        for side in sides:
            if id_column not in side.columns:
                raise ValueError(f"id column {id_column!r} not in the {side.role} results")
    key = id_column or ROW_ID
    tables = [_counting_table(side, key, columns, names) for side in sides]
    for i, name in enumerate(names):
        for side, table in zip(sides, tables):
            check_error_counts(table[f"p{i}"].null_count, table.num_rows,
                               lambda side=side, name=name: side.error_cause(name), name, max_error_rate,
                               f"the {side.role} ({side.label})")
    joined, pairing = _pair(*tables, key)
    counts = (_paired_counts(joined, tables, names, columns) if joined is not None
              else _unpaired_counts(tables, names, columns))
    return comparison_from_counts(counts, max_delta=max_delta, confidence=confidence, base_label=baseline.label,
                                  cand_label=candidate.label, skipped=skipped, pairing=pairing)


def _counting_table(side: ResultsFolder | ResultsRows, key: str, columns: Sequence[str], names: Sequence[str]) -> Any:
    """The side as columns `k` (the id), `c0`... (the cohort columns) and `p0`... (each evaluation's
    verdict, bool, null when it errored)."""
    pa, pc, _, _ = _arrow()
    raw = side.read([key, *columns, *(f"{name}.passed" for name in names)])
    n = raw.num_rows

    def column(name: str) -> Any:
        return raw[name] if name in raw.column_names else pa.chunked_array([pa.nulls(n)])

    arrays = {"k": _as_keys(column(key)), **{f"c{j}": _as_keys(column(c)) for j, c in enumerate(columns)}}
    for i, name in enumerate(names):
        verdicts = column(f"{name}.passed")
        if not pa.types.is_boolean(verdicts.type):
            try:
                verdicts = pc.cast(verdicts, pa.bool_())
            except pa.ArrowException as exc:
                raise ValueError(f"the {side.role} results: {name}.passed is {verdicts.type}, not true/false "
                                 f"({exc})") from None
        arrays[f"p{i}"] = verdicts
    return pa.table(arrays)


def _as_keys(values: Any) -> Any:
    """Groupable, joinable values: nested ones as their JSON text (`cohort_key`), dictionaries decoded,
    all-missing ones typed (a join takes no null-typed column)."""
    pa = _arrow()[0]
    kind = values.type
    if pa.types.is_null(kind):
        return values.cast(pa.string())
    if pa.types.is_dictionary(kind):
        return _as_keys(values.cast(kind.value_type))
    if pa.types.is_nested(kind):
        return pa.chunked_array([pa.array([cohort_key(v) for v in values.to_pylist()], type=pa.string())])
    return values


def _comparable(base: Any, cand: Any) -> tuple[Any, Any] | None:
    """The two id columns in one type, None when no value can be equal (text against numbers)."""
    pa = _arrow()[0]
    if base.type == cand.type:
        return base, cand
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in (base.type, cand.type)]
    if all(numeric):
        return base.cast(pa.float64()), cand.cast(pa.float64())
    return None


def _pair(base: Any, cand: Any, key: str) -> tuple[Any | None, str]:
    """The rows joined on the id when the two sides pair one to one (else None), and the pairing,
    by the rules and in the words of `regression.match_rows`."""
    pa, pc, _, _ = _arrow()
    for role, table in (("baseline", base), ("candidate", cand)):
        ids = table["k"]
        if ids.null_count:
            return None, unpaired_without_key(ids.null_count, role, key)
        counts = table.select(["k"]).group_by("k", use_threads=False).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts["count_all"], 1))
        if repeated.num_rows:
            return None, unpaired_repeated_key(table.num_rows - counts.num_rows, role, key, repeated["k"][0].as_py())
    same = _comparable(base["k"], cand["k"])
    if same is None:
        matched = 0
    else:
        base = base.set_column(0, "k", same[0])
        cand = cand.set_column(0, "k", same[1])
        matched = pc.sum(pc.is_in(base["k"], value_set=cand["k"].combine_chunks())).as_py() or 0
    if matched != base.num_rows or matched != cand.num_rows:
        return None, unpaired_mismatch(key, base.num_rows - matched, cand.num_rows - matched)
    verdicts = cand.select([name for name in cand.column_names if name.startswith("p")])
    renamed = verdicts.rename_columns([f"q{name[1:]}" for name in verdicts.column_names])
    joined = base.join(pa.table({"k": cand["k"], **{n: renamed[n] for n in renamed.column_names}}), keys="k",
                       join_type="inner")
    return joined, paired_by(key, base.num_rows)


def _side_sums(table: Any, verdict: str, prefix: str) -> dict[str, Any]:
    """Per-row 0/1 columns that sum to a `Side`: passed and errored."""
    pa, pc, _, _ = _arrow()
    return {f"{prefix}passed": pc.cast(pc.fill_null(table[verdict], False), pa.int64()),
            f"{prefix}errors": pc.cast(pc.is_null(table[verdict]), pa.int64())}


def _grouped(table: Any, column: str, sums: Sequence[str]) -> dict[Any, dict[str, int]]:
    """Per value of `column`: the rows (`n`) and the sum of each of `sums`."""
    result = table.group_by(column, use_threads=False).aggregate([([], "count_all"), *((s, "sum") for s in sums)])
    out = {}
    for row in result.to_pylist():
        out[row[column]] = {"n": row["count_all"], **{s: row[f"{s}_sum"] or 0 for s in sums}}
    return out


def _total(table: Any, sums: Sequence[str]) -> dict[str, int]:
    pc = _arrow()[1]
    return {"n": table.num_rows, **{s: pc.sum(table[s]).as_py() or 0 for s in sums}}


def _side(counts: Mapping[str, int] | None, prefix: str) -> Side:
    if counts is None:
        return Side()
    return Side(counts["n"], counts[f"{prefix}passed"], counts[f"{prefix}errors"])


def _value_order(value: Any) -> tuple[int, str, Any]:
    """Cohorts by value: numbers, then text (and other values by their text), missing last."""
    if value is None:
        return (2, "", 0)
    if isinstance(value, (int, float)):
        return (0, "", value)
    return (1, type(value).__name__, str(value))


def _paired_counts(joined: Any, tables: Sequence[Any], names: Sequence[str],
                   columns: Sequence[str]) -> Iterator[CohortCounts]:
    """Counts of paired sides; a pair's cohort is its baseline row's."""
    pa, pc, _, _ = _arrow()
    base, cand = tables
    for i, name in enumerate(names):
        b = pc.fill_null(joined[f"p{i}"], False)  # an error is a fail
        c = pc.fill_null(joined[f"q{i}"], False)
        cells = {"both": pc.and_(b, c), "candidate_only": pc.and_(c, pc.invert(b)),
                 "baseline_only": pc.and_(b, pc.invert(c)), "neither": pc.and_(pc.invert(b), pc.invert(c))}
        counted = pa.table({**{f"c{j}": joined[f"c{j}"] for j in range(len(columns))},
                            **_side_sums(joined, f"p{i}", "b_"), **_side_sums(joined, f"q{i}", "c_"),
                            **{cell: pc.cast(flags, pa.int64()) for cell, flags in cells.items()}})
        sums = ["b_passed", "b_errors", "c_passed", "c_errors", *cells]
        overall = _total(counted, sums)
        base_all = _side(_total(pa.table(_side_sums(base, f"p{i}", "b_")), ["b_passed", "b_errors"]), "b_")
        cand_all = _side(_total(pa.table(_side_sums(cand, f"p{i}", "c_")), ["c_passed", "c_errors"]), "c_")
        yield CohortCounts(name, None, OVERALL, base_all, cand_all, Pairs(*(overall[cell] for cell in cells)))
        for j, column in enumerate(columns):
            groups = _grouped(counted, f"c{j}", sums)
            for value in sorted(groups, key=_value_order):
                group = groups[value]
                yield CohortCounts(name, column, value, _side(group, "b_"), _side(group, "c_"),
                                   Pairs(*(group[cell] for cell in cells)))


def _unpaired_counts(tables: Sequence[Any], names: Sequence[str], columns: Sequence[str]) -> Iterator[CohortCounts]:
    pa = _arrow()[0]
    for i, name in enumerate(names):
        sides = [pa.table({**{f"c{j}": table[f"c{j}"] for j in range(len(columns))},
                           **_side_sums(table, f"p{i}", "")}) for table in tables]
        sums = ["passed", "errors"]
        base_all, cand_all = (_side(_total(side, sums), "") for side in sides)
        yield CohortCounts(name, None, OVERALL, base_all, cand_all)
        for j, column in enumerate(columns):
            base_groups, cand_groups = (_grouped(side, f"c{j}", sums) for side in sides)
            for value in sorted(dict.fromkeys([*base_groups, *cand_groups]), key=_value_order):
                yield CohortCounts(name, column, value, _side(base_groups.get(value), ""),
                                   _side(cand_groups.get(value), ""))
