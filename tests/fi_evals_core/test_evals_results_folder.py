"""Results folders (Parquet parts, as `fi-evals run --ray -o DIR` writes): `compare`, `report`,
`Dataset.from_results` and the CLI take one wherever they take a results file.

Results rows are written directly (no model is needed to compare or report them).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fi_evals_core.evals.dataset import Dataset, compare, write_results
from fi_evals_core.evals.regression import BrokenResults, Pairs, compare_results
from fi_evals_core.evals.report import load_rows, write_report
from fi_evals_core.evals.results_folder import ResultsFolder, part_files, read_results_rows
from fi_evals_core.evals.runinfo import write_run_info

COHORTS = ["a", "b", "c", None]


def fi_evals(*args):
    return subprocess.run([sys.executable, "-m", "fi_evals_core.evals", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def results_rows(checkpoint, drop_b=0.0, seed=0, n=400):
    """Rows of evaluation `fc` with cohort columns `cohort` (text, some missing) and `shard` (a number);
    cohort b loses `drop_b` of its passes; a few rows errored."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cohort = COHORTS[i % 4]
        passed = rng.random() > 0.15 + (drop_b if cohort == "b" else 0.0)
        errored = i % 200 == 13
        rows.append({"row_id": f"r{i:04d}", "checkpoint": checkpoint, "cohort": cohort, "shard": i % 3,
                     "document": f"document {i}", "response": f"response {i}",
                     "fc.score": None if errored else (0.9 if passed else 0.1),
                     "fc.passed": None if errored else passed,
                     "fc.label": None if errored or i < n // 2 else "supported",
                     "fc.reason": "scorer blew up" if errored else f"reason {i}",
                     "fc.error_type": "RuntimeError" if errored else None,
                     "fc.claims": [] if errored else [{"claim": f"claim {i}", "support": 0.9 if passed else 0.1}]})
    return rows


def value_order(row):
    """A folder lists cohorts by value (missing last); a file by first appearance: files written
    in this order list them alike."""
    return (row["cohort"] is None, row["cohort"] or "", row["shard"], row["row_id"])


def write_folder(folder, rows, parts=4, seed=1):
    """`rows` shuffled over `parts` Parquet part files, beside the files a writer leaves that are not
    parts (a manifest, a part being written, a hidden folder)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    folder.mkdir(parents=True)
    for k in range(parts):
        sub = folder / f"batch={k % 2}" if k % 2 else folder  # parts are found recursively
        write_results(rows[k::parts], sub / f"part-{k:05d}.parquet")
    (folder / "_fi_evals_manifest.json").write_text(json.dumps({"parts": parts}))
    (folder / ".part-00009.tmp").write_bytes(b"PAR1 half written")
    (folder / "_tmp").mkdir()
    (folder / "_tmp" / "part-00010.parquet").write_bytes(b"not parquet at all")
    (folder / ".hidden.parquet").write_bytes(b"not parquet either")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base, cand = results_rows("v1", seed=0), results_rows("v2", drop_b=0.35, seed=1)
    return {
        "base_rows": base, "cand_rows": cand,
        "base_file": write_results(sorted(base, key=value_order), root / "base.jsonl"),
        "cand_file": write_results(sorted(cand, key=value_order), root / "cand.jsonl"),
        "base_dir": write_folder(root / "base", base, seed=2),
        "cand_dir": write_folder(root / "cand", cand, parts=5, seed=3),
        "root": root,
    }


def test_part_files_are_every_parquet_under_the_folder_but_hidden_and_underscored(runs):
    found = [p.relative_to(runs["cand_dir"]).as_posix() for p in part_files(runs["cand_dir"])]
    assert found == ["batch=1/part-00001.parquet", "batch=1/part-00003.parquet", "part-00000.parquet",
                     "part-00002.parquet", "part-00004.parquet"]


@pytest.mark.parametrize("by", [["cohort"], ["cohort", "shard"]])
def test_a_folder_compares_exactly_as_the_same_rows_in_one_file(runs, by):
    files = compare(runs["base_file"], runs["cand_file"], by=by, max_error_rate=0.05)
    expected = files.to_dict()
    assert files.paired and files.failed and files.regressions  # not a trivial comparison
    cohorts = [r["cohort"] for r in expected["rows"]]
    assert cohorts[:5] == ["(all)", "cohort=a", "cohort=b", "cohort=c", "cohort=(missing)"]
    for base, cand in ((runs["base_dir"], runs["cand_dir"]), (runs["base_file"], runs["cand_dir"]),
                       (runs["base_dir"], runs["cand_file"]), (Dataset.from_results(runs["base_file"]),
                                                                runs["cand_dir"])):
        assert compare(base, cand, by=by, max_error_rate=0.05).to_dict() == expected, (base, cand)


def test_folder_counts_are_the_counts_of_its_rows(runs):
    """The paired cells and sides of cohort b, counted here by hand from the rows."""
    result = compare(runs["base_dir"], runs["cand_dir"], by="cohort", max_error_rate=0.05)
    cand = {r["row_id"]: r for r in runs["cand_rows"]}
    b_rows = [r for r in runs["base_rows"] if r["cohort"] == "b"]
    cells = [0, 0, 0, 0]
    for row in b_rows:
        x, y = bool(row["fc.passed"]), bool(cand[row["row_id"]]["fc.passed"])
        cells[0 if x and y else 1 if y else 2 if x else 3] += 1
    (b,) = [r for r in result.rows if r.cohort == "cohort=b"]
    assert b.pairs == Pairs(*cells) and b.regression
    assert (b.baseline.n, b.baseline.passed, b.baseline.errors) == (
        len(b_rows), sum(r["fc.passed"] is True for r in b_rows), sum(r["fc.passed"] is None for r in b_rows))
    assert result.pairing == "paired by 'row_id' (400 rows)"
    assert (result.baseline_label, result.candidate_label) == ("v1", "v2")


def test_unpaired_folders_and_missing_rows_compare_as_files(tmp_path):
    """Without row ids the sides are unpaired; a candidate with fewer rows fails the gate, the same
    whether the rows are in a file or a folder; an id column of the user's choosing pairs them."""
    base = [{**{k: v for k, v in r.items() if k != "row_id"}, "key": r["row_id"]} for r in results_rows("v1")]
    cand = [{**{k: v for k, v in r.items() if k != "row_id"}, "key": r["row_id"]}
            for r in results_rows("v2", seed=5)][:350]
    files = (write_results(sorted(base, key=lambda r: value_order({**r, "row_id": r["key"]})), tmp_path / "b.jsonl"),
             write_results(sorted(cand, key=lambda r: value_order({**r, "row_id": r["key"]})), tmp_path / "c.jsonl"))
    folders = write_folder(tmp_path / "b", base), write_folder(tmp_path / "c", cand, seed=7)
    pairing = {None: "unpaired: 400 baseline row(s) have no 'row_id' (results written before row ids, or no such "
                     "column; see --id-column)",
               "key": "unpaired: the rows do not match by 'key' (50 baseline row(s) without a candidate row, 0 "
                      "candidate row(s) without a baseline row)"}
    for id_column in (None, "key"):
        expected = compare(*files, by=["cohort", "shard"], max_error_rate=0.05, id_column=id_column).to_dict()
        assert expected["problems"] == ["fc: the candidate has 350 rows, the baseline 400 (50 missing)"]
        assert expected["pairing"] == pairing[id_column]
        got = compare(*folders, by=["cohort", "shard"], max_error_rate=0.05, id_column=id_column).to_dict()
        assert got == expected


def test_checkpoint_tags_label_the_sides(tmp_path, runs):
    mixed = write_folder(tmp_path / "mixed", results_rows("v1")[:200] + results_rows("v2")[200:])
    assert ResultsFolder(mixed).label == str(mixed)  # two checkpoints: named by the folder, as a file by its path
    assert ResultsFolder(runs["cand_dir"]).label == "v2"
    result = compare(runs["base_dir"], mixed, max_error_rate=0.05)
    assert (result.baseline_label, result.candidate_label) == ("v1", str(mixed))
    as_file = compare(runs["base_file"], write_results(results_rows("v1")[:200] + results_rows("v2")[200:],
                                                        tmp_path / "mixed.jsonl"), max_error_rate=0.05)
    assert as_file.candidate_label == str(tmp_path / "mixed.jsonl")


def test_a_repeated_row_id_across_parts_is_an_error_naming_it(tmp_path, runs):
    rows = results_rows("v2")
    folder = write_folder(tmp_path / "twice", rows)
    write_results([rows[7]], folder / "part-retry.parquet")  # a retried task wrote row r0007 again
    for read in (lambda: compare(runs["base_dir"], folder, max_error_rate=0.05), lambda: Dataset.from_results(folder)):
        with pytest.raises(ValueError) as caught:
            read()
        message = str(caught.value)
        assert "row_id 'r0007' is in 2 rows" in message and "part-retry.parquet" in message and str(folder) in message


def test_a_folder_without_parts_is_an_error_naming_it(tmp_path, runs):
    empty = tmp_path / "empty"
    empty.mkdir()
    only_other = tmp_path / "only_other"
    only_other.mkdir()
    (only_other / "_fi_evals_manifest.json").write_text("{}")
    (only_other / ".part-00000.tmp").write_bytes(b"...")
    for folder in (empty, only_other):
        with pytest.raises(ValueError, match=rf"results folder {re.escape(str(folder))}: no Parquet part file"):
            compare(runs["base_file"], folder)
        with pytest.raises(ValueError, match=rf"results folder {re.escape(str(folder))}: no Parquet part file"):
            Dataset.from_results(folder)


def test_a_broken_part_is_an_error_naming_the_file(tmp_path, runs):
    folder = write_folder(tmp_path / "cut", results_rows("v2"))
    good = (folder / "part-00000.parquet").read_bytes()
    (folder / "part-00099.parquet").write_bytes(good[: len(good) // 2])  # a part written only in part
    for read in (lambda: compare(runs["base_dir"], folder), lambda: Dataset.from_results(folder),
                 lambda: load_rows([folder])):
        with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'part-00099.parquet'))} is not a readable "
                                             "Parquet file"):
            read()


def test_parts_that_disagree_on_a_column_type_are_named(tmp_path):
    folder = tmp_path / "clash"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"row_id": "a", "cohort": "x", "fc.score": 1.0, "fc.passed": True}]),
                   folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist([{"row_id": "b", "cohort": 3, "fc.score": 1.0, "fc.passed": True}]),
                   folder / "part-1.parquet")
    with pytest.raises(ValueError, match="column 'cohort' is string in part-0.parquet and int64 in part-1.parquet"):
        ResultsFolder(folder)


def test_an_errored_folder_is_refused_with_its_cause_as_a_file_is(tmp_path, runs):
    rows = results_rows("v2")
    for row in rows[:30]:
        row.update({"fc.passed": None, "fc.score": None, "fc.error_type": "OSError",
                    "fc.reason": "no model at\n /typo/path"})
    folder = write_folder(tmp_path / "broken", rows)
    path = write_results(rows, tmp_path / "broken.jsonl")
    messages = []
    for cand in (path, folder):
        with pytest.raises(BrokenResults) as caught:
            compare(runs["base_file"], cand)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert messages[1] == ("the candidate (v2): 31 of 400 rows of evaluation 'fc' errored (7.8%, more than the 1.0% "
                           "allowed by --max-error-rate); most common cause: OSError: no model at /typo/path")


def test_the_run_record_of_a_folder_is_read_beside_it(tmp_path, runs):
    base = write_folder(tmp_path / "v1", runs["base_rows"])
    cand = write_folder(tmp_path / "v2", runs["cand_rows"])
    scorer = {"model": "nli-a", "profile": "default", "dtype": "float32", "device": "cpu", "labels": ["e", "n", "c"]}
    write_run_info(base, {"scorers": {"fc": scorer}})
    write_run_info(cand, {"scorers": {"fc": {**scorer, "model": "nli-b"}}})
    assert (tmp_path / "v2.run.json").is_file()
    result = compare(str(base) + "/", cand, max_error_rate=0.05)
    assert result.warnings == ["the scorer of fc changed (model nli-a -> nli-b): the two sides' scores are not "
                               "measured alike"]


def test_from_results_and_load_rows_read_a_folder_as_its_rows(runs):
    by_id = sorted(runs["cand_rows"], key=lambda r: r["row_id"])
    data = Dataset.from_results(runs["cand_dir"])
    assert data.results == by_id  # every column; claims parsed back from JSON text; sorted by row_id
    assert data.rows[0] == {k: v for k, v in by_id[0].items() if not k.startswith("fc.")}
    assert read_results_rows(runs["cand_dir"])[0]["fc.claims"] == json.dumps(by_id[0]["fc.claims"])
    assert load_rows([runs["cand_dir"]]) == sorted(load_rows([runs["cand_file"]]), key=lambda r: r["row_id"])
    # the row path over a folder read whole agrees with the folder counted column-wise
    rows = compare_results(Dataset.from_results(runs["base_dir"]).results, data.results, base_label="v1",
                           cand_label="v2", max_error_rate=0.05)
    assert rows.to_dict() == compare(runs["base_dir"], runs["cand_dir"], max_error_rate=0.05).to_dict()


def _section(html, table_id):
    return re.search(rf'<table id="{table_id}">.*?</table>', html, re.S).group(0)


def test_report_of_folders_matches_the_report_of_files(tmp_path, runs):
    from_files = write_report([runs["base_file"], runs["cand_file"]], tmp_path / "files.html", by=["cohort"])
    from_dirs = write_report([runs["base_dir"], runs["cand_dir"]], tmp_path / "dirs.html", by=["cohort"])
    files_html, dirs_html = from_files.read_text(), from_dirs.read_text()
    summary = _section(dirs_html, "summary")
    assert summary == _section(files_html, "summary")
    assert 'data-checkpoint="v2"' in summary
    cand_passed = sum(r["fc.passed"] is True for r in runs["cand_rows"])
    assert f'data-col="passed">{cand_passed}/400<' in summary
    assert 'data-cohort="cohort=b" data-regression="true"' in dirs_html
    histograms = [re.search(r'<h2 id="dist-h">.*?<h2 id="worst-h">', html, re.S).group(0)
                  for html in (files_html, dirs_html)]
    assert histograms[0] == histograms[1] and "<rect" in histograms[1]
    assert dirs_html.count("<tr><td class=\"num\">") == files_html.count("<tr><td class=\"num\">") == 10  # worst


def test_a_folder_report_is_the_files_report_and_reads_whole_only_the_rows_it_shows(tmp_path, monkeypatch):
    """Distinct scores, human labels and rows in `row_id` order (the order a folder is read in): the
    report of two folders is the report of the same rows as two files, byte for byte after the header
    (counts, verdicts, cohorts, agreement, histograms, the worst and errored rows). Of a folder, only the
    rows shown are read with every column; scans over all rows read the few columns counted."""
    import fi_evals_core.evals.results_folder as results_folder

    paths = {}
    for checkpoint, seed in (("v1", 0), ("v2", 1)):
        rows = results_rows(checkpoint, drop_b=0.6 * seed, seed=seed, n=160)
        for i, row in enumerate(rows):
            if row["fc.score"] is not None:
                row["fc.score"] = round((i * 0.6180339 + seed * 0.01) % 1, 6)
            row["human"] = None if i % 7 == 0 else (row["fc.score"] or 0) > 0.4 - 0.2 * (i % 2)
        paths[checkpoint] = (write_results(rows, tmp_path / f"{checkpoint}.jsonl"),
                             write_folder(tmp_path / checkpoint, rows, parts=3, seed=seed))
    scans = []
    real_scan, real_rows_with_ids = results_folder._scan, ResultsFolder.rows_with_ids

    def recording(dataset, folder, **kwargs):
        table = real_scan(dataset, folder, **kwargs)
        scans.append((kwargs.get("columns"), table.num_rows))
        return table

    def recording_rows(side, row_ids):
        table = real_rows_with_ids(side, row_ids)
        scans.append((None, table.num_rows))
        return table

    monkeypatch.setattr(results_folder, "_scan", recording)
    monkeypatch.setattr(ResultsFolder, "rows_with_ids", recording_rows)
    options = dict(by=["cohort", "shard"], label_column="human", worst_n=7)
    from_files = write_report([paths["v1"][0], paths["v2"][0]], tmp_path / "files.html", **options).read_text()
    assert scans == []
    from_dirs = write_report([paths["v1"][1], paths["v2"][1]], tmp_path / "dirs.html", **options).read_text()
    body = [html.split("</header>", 1)[1] for html in (from_files, from_dirs)]
    assert body[0] == body[1]
    for part in ('data-cohort="cohort=b" data-regression="true"', 'id="agreement"', 'class="worst"',
                 'id="errors"', "scorer blew up"):
        assert part in body[1], part
    assert body[1].count('<tr><td class="num">') == 7  # the worst rows shown
    whole = [rows for columns, rows in scans if columns is None]
    assert whole and sum(whole) <= 2 * (7 + 20)  # per checkpoint: its worst rows and its errored rows
    counted = {column for columns, rows in scans if columns and rows == 160 for column in columns}
    assert counted and counted <= {"row_id", "checkpoint", "cohort", "shard", "human", "fc.score", "fc.passed",
                                   "fc.error_type"}, counted


def test_a_folder_of_a_checkpoint_another_input_holds_is_shown_apart(tmp_path, runs):
    """A local run's file and a Ray run's folder of one checkpoint: two sides, the folder's named with
    it, compared row by row (the same rows: no change), not merged into one checkpoint of twice the rows."""
    html = write_report([runs["base_file"], runs["base_dir"]], tmp_path / "r.html").read_text()
    summary = _section(html, "summary")
    assert 'data-checkpoint="v1"' in summary and 'data-checkpoint="v1 (base)"' in summary
    assert summary.count('data-col="rows">400<') == 2
    assert "<h3>v1 (base) against v1</h3>" in html and 'data-verdict="pass"' in html


def test_cli_compare_and_report_take_folders(tmp_path, runs):
    same = write_folder(tmp_path / "same", [{**r, "checkpoint": "v1b"} for r in runs["base_rows"]])
    ok = fi_evals("compare", runs["base_dir"], same, "--by", "cohort", "--max-error-rate", "0.05")
    assert ok.returncode == 0, ok.stderr
    assert "paired by 'row_id' (400 rows)" in ok.stdout and "0 regression(s)" in ok.stdout

    bad = fi_evals("compare", runs["base_dir"], runs["cand_dir"], "--by", "cohort", "--max-error-rate", "0.05",
                   "--json")
    assert bad.returncode == 1, bad.stderr
    data = json.loads(bad.stdout)
    assert data == json.loads(json.dumps(compare(runs["base_file"], runs["cand_file"], by="cohort",
                                                 max_error_rate=0.05).to_dict(), default=str))
    assert "cohort=b" in [r["cohort"] for r in data["rows"] if r["regression"]]

    mixed = fi_evals("compare", runs["base_file"], runs["cand_dir"], "--max-error-rate", "0.05")
    assert mixed.returncode == 1 and "REGRESSION" in mixed.stdout, mixed.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = fi_evals("compare", runs["base_dir"], empty)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"fi-evals: error: results folder {empty}: no Parquet part file (*.parquet) in " \
                                     "it (names starting with '_' or '.' are skipped)"

    out = tmp_path / "report.html"
    report = fi_evals("report", runs["base_dir"], runs["cand_dir"], "-o", out, "--by", "cohort")
    assert report.returncode == 0, report.stderr
    html = out.read_text()
    assert 'data-checkpoint="v1"' in html and 'data-checkpoint="v2"' in html and "base, cand" in html
    no_report = fi_evals("report", empty, "-o", tmp_path / "none.html")
    assert no_report.returncode == 2 and f"results folder {empty}: no Parquet part file" in no_report.stderr
    assert not (tmp_path / "none.html").exists()


def test_all_missing_and_list_valued_cohorts_and_a_row_without_id_compare_as_files(tmp_path):
    """A cohort column that is null in every row (typed null in Parquet) and one holding lists (grouped
    by their JSON text), paired; then a candidate row without a row_id (unpaired, and not a repeat)."""
    def rows(checkpoint, no_id=None):
        return [{"row_id": None if i == no_id else f"r{i}", "checkpoint": checkpoint, "grp": None,
                 "tags": ["x", str(i % 2)], "fc.score": 0.5, "fc.passed": i % 3 != (checkpoint == "v2"),
                 "fc.error_type": None} for i in range(30)]
    for no_id, pairing in ((None, "paired by 'row_id' (30 rows)"),
                           (3, "unpaired: 1 candidate row(s) have no 'row_id' (results written before row ids, or "
                               "no such column; see --id-column)")):
        base, cand = rows("v1"), rows("v2", no_id)
        files = (write_results(base, tmp_path / f"b{no_id}.jsonl"), write_results(cand, tmp_path / f"c{no_id}.jsonl"))
        folders = (write_folder(tmp_path / f"b{no_id}", base, parts=2), write_folder(tmp_path / f"c{no_id}", cand))
        expected = compare(*files, by=["grp", "tags"]).to_dict()
        assert expected["pairing"] == pairing
        assert [r["cohort"] for r in expected["rows"]] == ["(all)", "grp=(missing)", 'tags=["x", "0"]',
                                                           'tags=["x", "1"]']
        assert compare(*folders, by=["grp", "tags"]).to_dict() == expected
