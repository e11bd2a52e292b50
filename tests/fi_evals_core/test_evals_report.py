"""`fi-evals report`: numbers, escaping and self-containment of the HTML, and the page as Chromium draws it.

The two results files are written by hand in the results format described in evals/dataset.py; every
expected number below is worked out by hand from them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fi_evals_core.evals.report import PALETTE, write_report
from fi_evals_core.testing.png import read_png

FC, GR = "factual_consistency", "groundedness"
XSS = "<script>alert(1)</script>"


def _row(topic, fc, gr, **extra):
    """One results row; fc / gr are (score, passed) or an error type string."""
    row = {"question": f"About {topic}?", "response": f"An answer about {topic}.", "topic": topic, **extra}
    for name, value in ((FC, fc), (GR, gr)):
        if isinstance(value, str):
            row.update({f"{name}.score": None, f"{name}.passed": None, f"{name}.label": None,
                        f"{name}.reason": "response: empty or whitespace-only text",
                        f"{name}.error_type": value, f"{name}.claims": []})
            continue
        score, passed = value
        claims = [
            {"claim": "A claim that holds.", "support": min(1.0, score + 0.2), "contradiction": 0.05,
             "evidence": {"text": "The premise says so.", "passage": 0, "start": 0, "end": 20},
             "contradicting": None},
            {"claim": f"The weakest claim about {topic} <b>bold</b>.", "support": score, "contradiction": 0.5,
             "evidence": {"text": "Unrelated premise text.", "passage": 0, "start": 21, "end": 44},
             "contradicting": None},
        ]
        row.update({f"{name}.score": score, f"{name}.passed": passed,
                    f"{name}.label": "pass" if passed else "fail",
                    f"{name}.reason": f"Least supported claim about {topic} (support {score:.2f}).",
                    f"{name}.error_type": None, f"{name}.claims": claims})
    return row


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def results(tmp_path):
    v1 = [
        _row("science", (0.9, True), (0.8, True), checkpoint="model-v1"),
        _row("science", (0.3, False), (0.7, True), checkpoint="model-v1"),
        _row("sports", (0.8, True), (0.2, False), checkpoint="model-v1"),
        _row("sports", (0.6, True), (0.9, True), checkpoint="model-v1"),
        _row("history", (0.1, False), (0.55, True), checkpoint="model-v1"),
        _row("history", "ValueError", (0.4, False), checkpoint="model-v1"),
    ]
    v1[4][f"{FC}.reason"] = f"Unsupported: {XSS} is not in the reference."
    # The second file has no checkpoint column: its checkpoint is the file's stem.
    v2 = [
        _row("science", (0.95, True), (0.9, True)),
        _row("science", (0.85, True), (0.3, False)),
        _row("sports", (0.2, False), (0.75, True)),
        _row("sports", (0.7, True), (0.65, True)),
        _row("history", (0.65, True), (0.6, True)),
    ]
    return [_write_jsonl(tmp_path / "run-a.jsonl", v1), _write_jsonl(tmp_path / "model-v2.jsonl", v2)]


# (evaluation, checkpoint) -> rows, passed/rows, pass rate, mean score, errors: by hand from the rows above.
# An error is a failure (as in compare) and counted apart, with its most common cause.
CAUSE = "most: ValueError: response: empty or whitespace-only text"
EXPECTED = {
    (FC, "model-v1"): ("6", "3/6", "50.0%", "0.540", "1" + CAUSE),  # 0.9+0.3+0.8+0.6+0.1 = 2.7 over 5 scored
    (FC, "model-v2"): ("5", "4/5", "80.0%", "0.670", "0"),  # 3.35 / 5
    (GR, "model-v1"): ("6", "4/6", "66.7%", "0.592", "0"),  # 3.55 / 6
    (GR, "model-v2"): ("5", "4/5", "80.0%", "0.640", "0"),  # 3.2 / 5
}


class _Summary(HTMLParser):
    """Cells of the summary table: {(evaluation, checkpoint): {column: text}}."""

    def __init__(self):
        super().__init__()
        self.table, self.key, self.col, self.inside = {}, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == "summary"
        elif self.inside and tag == "tr" and "data-evaluation" in a:
            self.key = (a["data-evaluation"], a["data-checkpoint"])
            self.table[self.key] = {}
        elif self.inside and tag == "td" and self.key:
            self.col = a.get("data-col")

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif tag == "td":
            self.col = None

    def handle_data(self, data):
        if self.inside and self.key and self.col:
            cells = self.table[self.key]
            cells[self.col] = (cells.get(self.col, "") + data).strip()


def test_report_numbers_escaping_and_no_external_resources(results, tmp_path):
    out = write_report(results, tmp_path / "out" / "report.html", by=["topic"], title="Checkpoint <v1> vs v2")
    assert out == tmp_path / "out" / "report.html"
    page = out.read_text(encoding="utf-8")

    parser = _Summary()
    parser.feed(page)
    columns = ("rows", "passed", "pass_rate", "mean_score", "errors")
    got = {key: tuple(cells[c] for c in columns) for key, cells in parser.table.items()}
    assert got == EXPECTED
    assert parser.table[(FC, "model-v2")]["delta"] == "+30.0 pt"
    assert parser.table[(GR, "model-v2")]["delta"] == "+13.3 pt"

    # cohort bars carry their value in <title>: fc, model-v1, history = 0 of 1 judged (the other row errored)
    titles = re.findall(r"<rect [^>]*><title>([^<]*)</title>", page)
    assert "model-v1 · history: pass rate 0.0% (0/2 passed, 1 errors)" in titles
    assert "model-v2 · science: pass rate 50.0% (1/2 passed)" in titles  # groundedness
    assert "model-v1 · factual_consistency: pass rate 50.0% (3/6 passed, 1 errors)" in titles

    # the verdicts: fc of model-v1 errored on 1 row of 6 (over the 1 % allowed): not compared, and
    # the candidate fails the gate for it; groundedness is compared (unpaired: these rows have no row_id)
    verdicts = page.split('id="verdicts-h"')[1].split('id="pass-h"')[0]
    assert 'data-verdict="fail"' in verdicts and "fails the gate" in verdicts
    assert f'data-not-compared="{FC}"' in verdicts and "1 of 6 rows of evaluation" in verdicts
    assert "unpaired: 6 baseline row(s) have no &#x27;row_id&#x27;" in verdicts
    gr_all = re.search(rf'<tr data-evaluation="{GR}" data-cohort="\(all\)"[^>]*>(.*?)</tr>', verdicts).group(1)
    assert "+13.3 pt" in gr_all and 'data-col="interval">[-' in gr_all
    # histograms: 10 bins per evaluation and checkpoint
    assert sum("score 0.9–1.0]" in t for t in titles) == 4
    assert "model-v1, factual_consistency: score 0.1–0.2): 1 rows (20.0%)" in titles

    # the worst item of fc is the v1 history row: reason and least-supported claim, escaped
    worst = page.split(f'<table class="worst" data-evaluation="{FC}">')[1].split("</table>")[0]
    first = worst.split("<tr>")[2]
    assert "0.100" in first and "&lt;script&gt;alert(1)&lt;/script&gt;" in first
    assert "The weakest claim about history &lt;b&gt;bold&lt;/b&gt;." in first and "support 0.10" in first
    assert XSS not in page and "<b>bold" not in page
    assert "<title>Checkpoint &lt;v1&gt; vs v2</title>" in page
    assert '<td class="err">ValueError</td>' in page

    # self-contained: no scripts, no links to anything outside the file
    assert "<script" not in page
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|<link\b|\bsrc=", page, re.I)


def test_report_input_errors(results, tmp_path):
    with pytest.raises(ValueError, match="by: no such column"):
        write_report(results, tmp_path / "r.html", by=["nope"])
    with pytest.raises(ValueError, match="not found"):
        write_report([tmp_path / "missing.jsonl"], tmp_path / "r.html")
    plain = _write_jsonl(tmp_path / "plain.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"no evaluations"):
        write_report([plain], tmp_path / "r.html")


# ---------------------------------------------------------------------------------------------
# the page in a real browser


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is not installed: run scripts/setup_env.sh test"
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", "--force-color-profile=srgb",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_headless_chromium(results, tmp_path):
    page = write_report(results, tmp_path / "report.html", by=["topic"])
    url = page.resolve().as_uri()

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    img = read_png(shot)
    assert (img.width, img.height) == (1280, 2000)

    counts: dict[tuple[int, int, int], int] = {}
    for px in img.pixels(step=2):
        counts[px] = counts.get(px, 0) + 1
    total = sum(counts.values())
    background = max(counts, key=counts.get)
    assert min(background) >= 240, f"page background is not light: {background}"
    # not blank: cards, text and charts cover a real part of the page
    not_bg = total - counts[background]
    assert not_bg / total > 0.25, f"only {not_bg / total:.1%} of the page differs from the background"
    dark = sum(n for px, n in counts.items() if max(px) < 110)
    assert dark / total > 0.002, "no dark pixels: no text drawn"
    # the two checkpoints' chart colours are drawn, in solid areas (bars), not just a few pixels
    for colour in PALETTE[:2]:
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert counts.get(rgb, 0) > 1500, f"chart colour {colour} hardly present ({counts.get(rgb, 0)} px)"
    assert len([px for px, n in counts.items() if n > 200]) >= 6, "too few distinct colours"

    proc = _chromium(tmp_path, "--dump-dom", url)
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, proc.stderr[-2000:]
    for text in ("model-v1", "model-v2", FC, GR, "Summary", "Pass rate by", "Score distributions",
                 "Worst items", "Regression verdicts", "50.0%", "80.0%", "66.7%"):
        assert text in dom, f"{text!r} not in the rendered page"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and XSS not in dom


def test_report_reads_parquet(results, tmp_path):
    import pyarrow as pa  # the datasets extra, installed by the test set-up
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in results[0].read_text().splitlines()]
    for row in rows:  # Parquet results store the claims as a JSON string
        for name in (FC, GR):
            row[f"{name}.claims"] = json.dumps(row[f"{name}.claims"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "run-a.parquet")
    page = write_report([tmp_path / "run-a.parquet", results[1]], tmp_path / "r.html").read_text()
    parser = _Summary()
    parser.feed(page)
    assert parser.table[(FC, "model-v1")]["pass_rate"] == "50.0%"
    assert parser.table[(GR, "model-v2")]["mean_score"] == "0.640"
    assert "The weakest claim about history &lt;b&gt;bold&lt;/b&gt;." in page


# ---------------------------------------------------------------------------------------------
# agreement with human labels

LABEL = "human<i>"  # a column name that needs escaping


def _labelled(checkpoint, cases):
    """Rows of `fc` from (row_id, score or None for an error, human label)."""
    rows = []
    for row_id, score, label in cases:
        row = {"row_id": row_id, "checkpoint": checkpoint, LABEL: label, f"{FC}.label": None, f"{FC}.claims": [],
               f"{FC}.reason": "", f"{FC}.score": score, f"{FC}.passed": None if score is None else score >= 0.5,
               f"{FC}.error_type": "ValueError" if score is None else None}
        rows.append(row)
    return rows


def _cells(page, checkpoint):
    """{data-col: text} of one checkpoint's row of the agreement table, tags dropped."""
    table = page.split('<table id="agreement">')[1].split("</table>")[0]
    tr = re.search(rf'<tr[^>]*data-evaluation="{FC}" data-checkpoint="{checkpoint}">(.*?)</tr>', table).group(1)
    return {col: re.sub(r"<[^>]+>", " ", text).split() for col, text in re.findall(r'data-col="(\w+)">(.*?)</td>', tr)}


def test_report_agreement_with_human_labels(tmp_path):
    from fi_evals_core.evals import measure_agreement

    # supported 0.9, 0.6, 0.4; unsupported 0.6, 0.2; one row unlabelled, one errored. ROC-AUC by hand:
    # 0.9 beats both (2), 0.6 ties 0.6 and beats 0.2 (1.5), 0.4 beats 0.2 (1): 4.5 / 6 = 0.750. The verdict
    # (score >= 0.5) passes 2 of 3 supported and fails 1 of 2 unsupported: (2/3 + 1/2) / 2 = 58.3 %.
    cases = [("a", 0.9, "supported"), ("b", 0.6, "supported"), ("c", 0.6, "unsupported"), ("d", 0.2, "unsupported"),
             ("e", 0.4, "supported"), ("f", 0.5, ""), ("g", None, "supported")]
    v1 = _labelled("model-v1", cases)
    # the same rows, a checkpoint that ranks them perfectly (0.8 and up supported, 0.3 and down not)
    v2 = _labelled("model-v2", [(i, None if s is None else (0.8 if y == "supported" else 0.3) + 0.01 * k, y)
                                for k, (i, s, y) in enumerate(cases)])
    paths = [_write_jsonl(tmp_path / "v1.jsonl", v1), _write_jsonl(tmp_path / "v2.jsonl", v2)]
    page = write_report(paths, tmp_path / "r.html", label_column=LABEL).read_text(encoding="utf-8")

    assert '<h2 id="agree-h">Agreement with human labels</h2>' in page
    one = _cells(page, "model-v1")
    assert one["measured"] == ["5", "3", "/", "2"]
    assert one["left_out"] == ["1", "unlabelled", "1", "errored"]
    assert one["auc"][0] == "0.750" and one["bacc"][0] == "58.3%"
    assert one["bacc"][-2:] == ["accuracy", "60.0%"]  # 3 of 5 verdicts right
    two = _cells(page, "model-v2")
    assert two["auc"][:2] == ["1.000", "[1.000,"] and two["bacc"][0] == "100.0%"
    # the tuned threshold and the test split are the API's, on the same rows
    for rows, cells in ((v1, one), (v2, two)):
        expected = measure_agreement(rows, FC, LABEL)
        assert cells["threshold"][0] == ("–" if expected.threshold is None else f"{expected.threshold:.3f}")
        assert f"test {expected.test_rows} ({expected.test_positives} / {expected.test_negatives})" \
            in " ".join(cells["test_bacc"])
    # the rows split the same way for both checkpoints (by a hash of row_id): 4 of the 5 measured in dev
    assert one["threshold"][1:6] == two["threshold"][1:6] == ["dev", "4", "(2", "/", "2)"]

    # a ROC curve per checkpoint in the palette, over the chance diagonal; scores split by label
    assert re.search(rf'<polyline points="[^"]+" class="roc" stroke="{PALETTE[0]}">', page)
    assert re.search(rf'<polyline points="[^"]+" class="roc" stroke="{PALETTE[1]}">', page)
    assert page.count('class="chance"') == 1
    titles = re.findall(r"<title>([^<]*)</title>", page)
    assert f"model-v1, {FC}: score 0.6–0.7): 1 of 3 supported rows (33.3%)" in titles
    assert f"model-v1, {FC}: score 0.6–0.7): 1 of 2 unsupported rows (50.0%)" in titles
    assert "model-v1: ROC-AUC 0.750 over 3 supported and 2 unsupported rows" in titles

    # escaped, and still self-contained
    assert "<code>human&lt;i&gt;</code>" in page and "<i>" not in page
    assert "<script" not in page
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|<link\b|\bsrc=", page, re.I)

    # no label column: no section; a wrong one or unreadable labels: an error naming them
    assert "Agreement with human labels" not in write_report(paths, tmp_path / "plain.html").read_text()
    with pytest.raises(ValueError, match="label column 'nope': no such column"):
        write_report(paths, tmp_path / "x.html", label_column="nope")
    bad = _write_jsonl(tmp_path / "bad.jsonl", _labelled("v3", [("a", 0.5, "maybe")]))
    with pytest.raises(ValueError, match="label column 'human<i>': 1 value\\(s\\) are not a human label: 'maybe'"):
        write_report([bad], tmp_path / "x.html", label_column=LABEL)
