"""`fi-evals report`: one self-contained HTML file from one or more results files.

The page has no external resources: inline CSS, charts drawn here as inline SVG, no scripts.
It holds, in order:

- a summary table per evaluation x checkpoint: rows, passed, pass rate (and its change against
  the first checkpoint), mean score, errors (with the most common cause);
- the regression verdicts of every later checkpoint against the first, as `fi-evals compare`
  gives them (per evaluation and cohort: change, interval, paired or not, McNemar's p, verdict);
  a side too broken to compare says so instead;
- a grouped bar chart of pass rate per checkpoint, by evaluation, and for each `by` column one
  per evaluation with the column's cohorts as groups (cohorts with most rows first);
- with a human label column (`label_column`): the agreement of each evaluation and checkpoint with
  the labels (agreement.py: balanced accuracy of the verdict, ROC-AUC of the score, both with
  bootstrap intervals; a threshold tuned on the dev split and its balanced accuracy on the test
  split; the rows left out), a ROC curve per evaluation (one line per checkpoint), and the score
  distribution of supported and unsupported rows per checkpoint;
- a score histogram (10 bins from 0 to 1, share of the scored rows) per evaluation and checkpoint;
- per evaluation the lowest-scoring items with their reason and least-supported claim,
  and the rows that could not be scored.

Input is the results format described in dataset.py: one JSON object per row with the row's own columns,
`checkpoint`, and per evaluation N the columns `N.score`, `N.passed`, `N.label`, `N.reason`,
`N.error_type`, `N.claims`. Evaluations are found by the `.score` suffix. A row's checkpoint is
its `checkpoint` value, else its file's stem. `.parquet` files are read when pyarrow is installed, and so is a results
folder of Parquet parts (`run --ray`), which is aggregated with Arrow and never loaded whole: only
the rows the report shows are read (report_views.py).

Pass rate = passed / rows, as in `fi-evals compare`: a row that errored or was not scored is a
failure (the gate fails closed), and is counted apart under errors; it is left out of the mean
score.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from .agreement import DEFAULT_DEV_FRACTION, Agreement, Labelled, check_label_column, measure, \
    roc_points
from .regression import BrokenResults, compare_results
from .report_views import (BINS, CheckpointFolder, CheckpointRows, Shown, Stats, bin_of,
                           checkpoint_views, clean, cohort_name, folder_checkpoints, passed_value)

__all__ = ["PALETTE", "load_rows", "write_report"]

# One colour per checkpoint, in order: Okabe-Ito's (safe for colour-blind readers) come first.
# Okabe-Ito first, then a few more that stay apart from them; beyond that the colours repeat.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D31", "#5D5D5D",
           "#7570B3", "#66A61E", "#E7298A", "#17BECF")
MAX_COHORTS = 30


# --------------------------------------------------------------------------------------------
# input


def load_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All rows of the results files, each with `checkpoint` set (its value, else the file's stem).
    A results folder (Parquet parts) is loaded whole, its rows sorted by `row_id` (results_folder.py);
    the report itself reads a folder column-wise (`report_views`)."""
    from .dataset import Dataset  # reads JSONL, Parquet or a folder (claims parsed back from JSON text)

    out: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ValueError(f"results file not found: {path}")
        for row in Dataset.from_results(path).results:
            row = {k: clean(v) for k, v in row.items()}
            ckpt = row.get("checkpoint")
            row["checkpoint"] = str(ckpt) if ckpt not in (None, "") else path.stem
            out.append(row)
    return out


View = CheckpointRows | CheckpointFolder


def load_views(paths: Iterable[str | Path]) -> dict[str, View]:
    """A view per checkpoint of the results, in input order: files' rows grouped by checkpoint (several
    files may hold one, as `load_rows` merges them), and each results folder's checkpoints read
    column-wise. A folder's checkpoint that another input holds too (a local run and a Ray run of one
    checkpoint) is shown apart, named with the folder: `v1 (out)`."""
    from .results_folder import is_results_folder

    inputs: list[tuple[Path, list[Any]]] = []  # (path, its checkpoints: names for a file, (name, filter) for a folder)
    file_rows: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if is_results_folder(path):
            inputs.append((path, folder_checkpoints(path)))
        else:
            rows = load_rows([path])
            file_rows += rows
            inputs.append((path, list(dict.fromkeys(row["checkpoint"] for row in rows))))
    held: Counter = Counter(item if isinstance(item, str) else item[0] for _, items in inputs for item in items)
    files = {view.name: view for view in checkpoint_views(file_rows)}
    views: dict[str, View] = {}
    for path, items in inputs:
        for item in items:
            if isinstance(item, str):
                views.setdefault(item, files[item])
                continue
            name, where = item
            shown = name if held[name] == 1 else f"{name} ({path.name})"
            if shown in views:
                raise ValueError(f"checkpoint {shown!r} is in two results folders of one name: rename one")
            views[shown] = CheckpointFolder(path, shown, where)
    return views


def _evaluations(views: dict[str, View]) -> list[str]:
    names: dict[str, None] = {}
    for view in views.values():
        for key in view.columns:
            if key.endswith(".score") and len(key) > len(".score"):
                names.setdefault(key[: -len(".score")], None)
    return list(names)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _middle(text: str, limit: int) -> str:
    """Shortened in the middle: checkpoint names differ at the end (`org/model-step-1000`)."""
    text = str(text)
    if len(text) <= limit:
        return text
    tail = (limit - 1) * 3 // 5
    return text[: limit - 1 - tail] + "…" + text[-tail:]


# --------------------------------------------------------------------------------------------
# SVG charts


def _attr(value: Any) -> str:
    return escape(str(value), quote=True)


CHAR_W = 7.4  # rough width of a character at the charts' 13px


def _legend(checkpoints: Sequence[str], colours: dict[str, str], x0: float, y0: float, width: float):
    """Swatch + name per checkpoint, wrapped into rows within `width`.

    Returns the SVG parts, the number of rows and the width used.
    """
    parts, x, y, rows, used = [], x0, y0, 1, 0.0
    for ck in checkpoints:
        label = _middle(ck, 32)
        w = 17 + CHAR_W * len(label) + 20
        if x > x0 and x + w > x0 + width:
            x, y, rows = x0, y + 20, rows + 1
        parts.append(
            f'<g><title>{escape(ck)}</title>'
            f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" rx="2" fill="{colours[ck]}"/>'
            f'<text x="{x + 17:.1f}" y="{y:.1f}" class="legend">{escape(label)}</text></g>'
        )
        x += w
        used = max(used, x - 20 - x0)
    return parts, rows, used


def _bar_chart(
    title: str,
    groups: Sequence[tuple[str, dict[str, Stats]]],
    checkpoints: Sequence[str],
    colours: dict[str, str],
    x_label: str,
    chart_id: str,
) -> str:
    """Grouped bars: one group per entry of `groups`, one bar per checkpoint, height = pass rate."""
    n_ck = len(checkpoints)
    bar_w = 30 if n_ck <= 3 else 22 if n_ck <= 6 else 14
    gap = 28
    group_w = n_ck * bar_w + (n_ck - 1) * 3
    left, right, bottom = 64, 20, 62
    plot_h = 220
    plot_w = max(len(groups) * (group_w + gap), 360)
    legend, legend_rows, legend_w = _legend(checkpoints, colours, left, 24, 880)
    top = 34 + 20 * legend_rows
    width = left + max(plot_w, legend_w) + right
    height = top + plot_h + bottom
    slot = plot_w / max(len(groups), 1)
    out = [
        f'<svg width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">Pass rate per checkpoint ({escape(", ".join(checkpoints))}) '
        f"for each {escape(x_label)}; hover a bar for its value and counts.</desc>",
    ]
    out += legend
    for tick in range(0, 101, 25):
        y = top + plot_h * (1 - tick / 100)
        out.append(f'<line x1="{left}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'class="{"axis" if tick == 0 else "grid"}"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" class="tick" text-anchor="end">{tick}%</text>')
    out.append(f'<text transform="translate(16 {top + plot_h / 2:.0f}) rotate(-90)" class="axis-label" '
               f'text-anchor="middle">Pass rate</text>')
    out.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 10}" class="axis-label" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    max_chars = max(4, int((slot - 6) / CHAR_W))
    for gi, (group, per_ck) in enumerate(groups):
        gx = left + gi * slot + (slot - group_w) / 2
        for ci, ck in enumerate(checkpoints):
            st = per_ck.get(ck)
            x = gx + ci * (bar_w + 3)
            if st is None or st.pass_rate is None:
                out.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - 4:.1f}" class="na" '
                           f'text-anchor="middle">–</text>')
                continue
            rate = st.pass_rate
            h = max(plot_h * rate, 1.0)
            y = top + plot_h - h
            tip = f"{ck} · {group}: pass rate {_pct(rate)} ({st.passed}/{st.rows} passed"
            tip += f", {st.errors} errors)" if st.errors else ")"
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w}" height="{h:.1f}" fill="{colours[ck]}" '
                f'shape-rendering="crispEdges"><title>{escape(tip)}</title></rect>'
            )
            if bar_w >= 22:
                out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" class="value" '
                           f'text-anchor="middle">{100 * rate:.0f}</text>')
        label = _short(group, max_chars)
        n = sum(st.rows for st in per_ck.values())
        out.append(f'<text x="{left + (gi + 0.5) * slot:.1f}" y="{top + plot_h + 18}" class="group" '
                   f'text-anchor="middle"><title>{escape(group)}</title>{escape(label)}</text>')
        out.append(f'<text x="{left + (gi + 0.5) * slot:.1f}" y="{top + plot_h + 33}" class="count" '
                   f'text-anchor="middle">n={n}</text>')
    out.append("</svg>")
    return "".join(out)


def _bin_counts(scores: Sequence[float]) -> list[int]:
    """Rows per score bin [0, 0.1), ..., [0.9, 1.0]; scores outside 0..1 go to the end bins."""
    counts = [0] * BINS
    for score in scores:
        counts[bin_of(score)] += 1
    return counts


def _hist_frame(left: float, top: float, plot_w: float, plot_h: float, y_max: float) -> list[str]:
    """A histogram's grid, share ticks (0 to `y_max`) and score ticks (0 to 1)."""
    out = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'class="{"axis" if frac == 0 else "grid"}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                   f'{100 * frac * y_max:.0f}%</text>')
    for i in range(0, BINS + 1, 2):
        out.append(f'<text x="{left + i * plot_w / BINS:.1f}" y="{top + plot_h + 15}" class="tick" '
                   f'text-anchor="middle">{i / BINS:.1f}</text>')
    return out


def _share_scale(top: float) -> float:
    """The vertical scale of histograms whose tallest bar is `top` (a share): the next tenth up."""
    return min(1.0, math.ceil(round(top * 10, 6)) / 10) or 1.0


def _histogram(ev: str, ck: str, st: Stats, colour: str, y_max: float, chart_id: str) -> str:
    """Share of the scored rows per score bin [0, 0.1), ..., [0.9, 1.0]."""
    counts = st.bins
    total = st.scored
    left, right, top, bottom = 44, 12, 12, 40
    plot_w, plot_h = 250, 120
    width, height = left + plot_w + right, top + plot_h + bottom
    bw = plot_w / BINS
    title = f"Score distribution of {ev} for checkpoint {ck}"
    out = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="hist" role="img" aria-labelledby="{chart_id}-t">',
        f'<title id="{chart_id}-t">{escape(title)}: {total} scored rows in {BINS} bins from 0 to 1</title>',
        *_hist_frame(left, top, plot_w, plot_h, y_max),
    ]
    for i, c in enumerate(counts):
        lo, hi = i / BINS, (i + 1) / BINS
        share = c / total if total else 0.0
        bracket = "]" if i == BINS - 1 else ")"
        tip = f"{ck}, {ev}: score {lo:.1f}–{hi:.1f}{bracket}: {c} rows ({_pct(share)})"
        h = plot_h * share / y_max if y_max else 0.0
        out.append(
            f'<rect x="{left + i * bw + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
            f'height="{max(h, 0):.1f}" fill="{colour}" shape-rendering="crispEdges">'
            f"<title>{escape(tip)}</title></rect>"
        )
    if st.mean is not None:
        x = left + plot_w * min(max(st.mean, 0.0), 1.0)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" class="mean">'
                   f"<title>mean score {st.mean:.3f}</title></line>")
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" class="axis-label" text-anchor="middle">'
               f"Score (dashed line: mean)</text>")
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# HTML


CSS = """
:root { --fg:#1d2433; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff;
  --bad:#b42318; --good:#067647; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Liberation Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 28px 32px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 19px; margin: 36px 0 6px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
p.note { color: var(--muted); margin: 0 0 12px; font-size: 14px; }
section.card, .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px; margin: 12px 0; }
.chips { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 14px; }
.chip { background: var(--card); border: 1px solid var(--line); border-radius: 999px; padding: 3px 12px;
  font-size: 13px; color: var(--muted); }
.chip b { color: var(--fg); }
.swatch { display:inline-block; width:11px; height:11px; border-radius:2px; margin-right:6px;
  vertical-align:-1px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12.5px; text-transform: uppercase;
  letter-spacing: .04em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.first-of-eval td { border-top: 2px solid #d5d9e0; }
.rate { display: inline-flex; align-items: center; gap: 8px; justify-content: flex-end; }
.meter { display:inline-block; width: 70px; height: 8px; background: #eceef2; border-radius: 4px;
  overflow: hidden; }
caption { text-align: left; caption-side: bottom; padding-top: 8px; }
.meter span { display:block; height: 100%; }
.up { color: var(--good); } .down { color: var(--bad); } .err { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.grid .card { margin: 0; padding: 12px 14px; }
.grid h4 { margin: 0 0 2px; font-size: 14px; }
.grid .stat { color: var(--muted); font-size: 13px; margin-bottom: 4px; }
svg { display: block; overflow: visible; }
svg.hist { width: 100%; height: auto; max-width: 420px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 40px; }
figure { margin: 0; min-width: 0; max-width: 100%; }
figcaption { font-weight: 600; font-size: 14px; margin: 2px 0 4px; }
.card > h3:first-child { margin-top: 2px; }
td.ev { border-bottom: 1px solid var(--line); }
svg text { font-family: inherit; fill: var(--fg); }
svg .tick, svg .count { font-size: 11.5px; fill: var(--muted); }
svg .axis-label { font-size: 12.5px; fill: var(--muted); }
svg .legend, svg .group { font-size: 13px; }
svg .value { font-size: 11px; fill: var(--fg); }
svg .na { font-size: 12px; fill: var(--muted); }
svg line.grid { stroke: #eceef2; stroke-width: 1; }
svg line.axis { stroke: #9aa1ae; stroke-width: 1; }
svg line.mean { stroke: var(--fg); stroke-width: 1.5; stroke-dasharray: 4 3; }
svg line.tuned { stroke: var(--fg); stroke-width: 1.5; stroke-dasharray: 1.5 2.5; }
svg line.chance { stroke: #9aa1ae; stroke-width: 1; stroke-dasharray: 5 4; }
svg polyline.roc { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg.roc { width: 100%; height: auto; max-width: 420px; }
td.reason { max-width: 420px; }
td.claim { max-width: 300px; }
.claim q { font-style: italic; }
.small { font-size: 12.5px; color: var(--muted); }
details summary { cursor: pointer; color: var(--muted); font-size: 12.5px; }
details pre { white-space: pre-wrap; word-break: break-word; font-size: 12px; background: var(--bg);
  padding: 8px; border-radius: 6px; margin: 6px 0 0; max-width: 560px; }
code { font-size: 13px; }
"""


def _meter(rate: float | None, colour: str) -> str:
    if rate is None:
        return ""
    bar = f'<span style="width:{100 * rate:.1f}%;background:{colour}"></span>'
    return f'<span class="meter" aria-hidden="true">{bar}</span>'


def _summary(views: dict[str, View], evals: list[str], colours: dict[str, str]) -> str:
    checkpoints = list(views)
    out = [
        '<table id="summary"><caption class="small">'
        "Pass rate = passed / rows; an error (a row the evaluation could not score) is a failure, as in "
        "<code>fi-evals compare</code>, and is counted apart. "
        f"Δ is the change in pass rate against the first checkpoint ({escape(checkpoints[0])}).</caption>",
        "<thead><tr><th>Evaluation</th><th>Checkpoint</th><th class=num>Rows</th><th class=num>Passed</th>"
        "<th class=num>Pass rate</th><th class=num>Δ pass rate</th><th class=num>Mean score</th>"
        "<th class=num>Errors</th></tr></thead><tbody>",
    ]
    for ev in evals:
        stats = [(ck, st) for ck in checkpoints if (st := views[ck].stats(ev)).rows]
        base = stats[0][1].pass_rate if stats and stats[0][0] == checkpoints[0] else None
        for i, (ck, st) in enumerate(stats):
            if ck == checkpoints[0] or base is None or st.pass_rate is None:
                delta = '<span class="muted">–</span>'
            else:
                d = st.pass_rate - base
                cls = "down" if d < 0 else "up" if d > 0 else "muted"
                sign = "+" if d > 0 else "−" if d < 0 else "±"
                delta = f'<span class="{cls}">{sign}{100 * abs(d):.1f} pt</span>'
            first = ' class="first-of-eval"' if i == 0 else ""
            name = f'<td rowspan="{len(stats)}" class="ev"><code>{escape(ev)}</code></td>' if i == 0 else ""
            err = "0"
            if st.errors:
                cause = views[ck].error_cause(ev) or ""
                err = (f'<span class="err">{st.errors}</span>'
                       f'<div class="cause small">most: {escape(_short(cause, 160))}</div>')
            out.append(
                f'<tr{first} data-evaluation="{_attr(ev)}" data-checkpoint="{_attr(ck)}">'
                f"{name}"
                f"<td>{_swatch(colours[ck])}{escape(ck)}</td>"
                f'<td class="num" data-col="rows">{st.rows}</td>'
                f'<td class="num" data-col="passed">{st.passed}/{st.rows}</td>'
                f'<td class="num" data-col="pass_rate"><span class="rate">{_meter(st.pass_rate, colours[ck])}'
                f"<span>{_pct(st.pass_rate)}</span></span></td>"
                f'<td class="num" data-col="delta">{delta}</td>'
                f'<td class="num" data-col="mean_score">{_num(st.mean)}</td>'
                f'<td class="num" data-col="errors">{err}</td></tr>'
            )
    out.append("</tbody></table>")
    return "".join(out)


def _least_supported(claims: Any) -> dict[str, Any] | None:
    if isinstance(claims, str):
        try:
            claims = json.loads(claims)
        except json.JSONDecodeError:
            return None
    if not isinstance(claims, list):
        return None
    scored = [c for c in claims if isinstance(c, dict) and isinstance(c.get("support"), (int, float))]
    return min(scored, key=lambda c: c["support"]) if scored else None


def _claim_cell(claim: dict[str, Any] | None) -> str:
    if claim is None:
        return '<span class="muted">–</span>'
    text = f'<q>{escape(_short(claim.get("claim", ""), 220))}</q>'
    meta = f'support {float(claim["support"]):.2f}'
    if isinstance(claim.get("contradiction"), (int, float)):
        meta += f', contradiction {float(claim["contradiction"]):.2f}'
    evidence = claim.get("evidence")
    ev_text = evidence.get("text") if isinstance(evidence, dict) else None
    out = f'{text}<div class="small">{meta}</div>'
    if ev_text:
        out += f'<div class="small">best evidence: “{escape(_short(ev_text, 160))}”</div>'
    return out


def _row_details(row: dict[str, Any], evals: list[str]) -> str:
    """The row's own columns (not the evaluation outputs), collapsed."""
    prefixes = tuple(f"{ev}." for ev in evals)
    own = {k: v for k, v in row.items() if k != "checkpoint" and not k.startswith(prefixes)}
    if not own:
        return ""
    lines = []
    for k, v in own.items():
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        lines.append(f"{k}: {_short(text, 600)}")
    return f"<details><summary>row</summary><pre>{escape(chr(10).join(lines))}</pre></details>"


def _worst(views: dict[str, View], ev: str, by: list[str], colours: dict[str, str], limit: int) -> str:
    """The `limit` lowest-scoring rows over all checkpoints (ties: checkpoint order, then row order)."""
    ranked = sorted((((shown.order[0], ci, shown.order[1:]), shown)
                     for ci, view in enumerate(views.values()) for shown in view.worst(ev, limit)),
                    key=lambda item: item[0])
    if not ranked:
        return '<p class="note">No scored rows.</p>'
    head = "".join(f"<th>{escape(b)}</th>" for b in by)
    out = [f'<div class="scroll"><table class="worst" data-evaluation="{_attr(ev)}"><thead><tr>'
           f"<th class=num>Score</th><th>Verdict</th><th>Checkpoint</th><th>Row</th>{head}<th>Reason</th>"
           "<th>Least-supported claim</th></tr></thead><tbody>"]
    for (score, _, _), shown in ranked[:limit]:
        row = shown.row
        ck = row["checkpoint"]
        verdict = {True: "pass", False: '<span class="down">fail</span>'}.get(passed_value(row, ev), "–")
        cohorts = "".join(f"<td>{escape(cohort_name(row.get(b)))}</td>" for b in by)
        out.append(
            f'<tr><td class="num">{score:.3f}</td><td>{verdict}</td>'
            f"<td>{_swatch(colours[ck])}{escape(ck)}</td>"
            f'<td class="muted">{escape(shown.ref)}</td>{cohorts}'
            f'<td class="reason">{escape(_short(row.get(f"{ev}.reason") or "", 600))}'
            f"{_row_details(row, [ev])}</td>"
            f'<td class="claim">{_claim_cell(_least_supported(row.get(f"{ev}.claims")))}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _errors(views: dict[str, View], evals: list[str], colours: dict[str, str], limit: int) -> str:
    kinds: Counter = Counter()
    shown: list[tuple[str, Shown]] = []
    for ev in evals:
        for view in views.values():
            if view.has_evaluation(ev):
                counts, rows = view.errors(ev, limit - len(shown))
                kinds.update({(ev, kind): n for kind, n in counts.items()})
                shown += [(ev, row) for row in rows]
    total = sum(kinds.values())
    if not total:
        return '<p class="note">Every row was scored.</p>'
    chips = "".join(f'<span class="chip"><code>{escape(ev)}</code> · {escape(kind)} <b>{n}</b></span>'
                    for (ev, kind), n in kinds.most_common())
    out = [f'<div class="chips" style="margin:0 0 10px">{chips}</div>',
           '<div class="scroll"><table id="errors"><thead><tr><th>Evaluation</th><th>Checkpoint</th>'
           "<th>Row</th><th>Error</th><th>Reason</th></tr></thead><tbody>"]
    for ev, item in shown:
        row = item.row
        ck = row["checkpoint"]
        out.append(
            f"<tr><td><code>{escape(ev)}</code></td>"
            f"<td>{_swatch(colours[ck])}{escape(ck)}</td>"
            f'<td class="muted">{escape(item.ref)}</td>'
            f'<td class="err">{escape(row.get(f"{ev}.error_type") or "not scored")}</td>'
            f'<td class="reason">{escape(_short(row.get(f"{ev}.reason") or "", 400))}</td></tr>'
        )
    out.append("</tbody></table></div>")
    if total > limit:
        out.append(f'<p class="note">{total - limit} more not shown.</p>')
    return "".join(out)


def _verdicts(views: dict[str, View], evals: list[str], by: list[str], max_delta: float = 0.02) -> str:
    """Each later checkpoint against the first, per evaluation, as `fi-evals compare` judges it (a
    results folder counted column-wise, as `compare` counts it)."""
    from .results_folder import ResultsRows, compare_sides

    checkpoints = list(views)
    if len(checkpoints) < 2:
        return '<p class="note">One checkpoint: nothing to compare.</p>'
    out = []
    base = checkpoints[0]
    for ck in checkpoints[1:]:
        table, notes, failed, pairing = [], [], False, ""
        for ev in evals:
            pair = (views[base], views[ck])
            if not all(view.has_evaluation(ev) for view in pair):
                continue
            sides = [view.compare_side(ev, role) for view, role in zip(pair, ("baseline", "candidate"))]
            options = dict(max_delta=max_delta, evaluations=[ev],
                           by=[b for b in by if all(view.has_column(b, ev) for view in pair)])
            try:
                if all(isinstance(side, ResultsRows) for side in sides):
                    result = compare_results(*(side.rows for side in sides), base_label=base, cand_label=ck,
                                             **options)
                else:
                    result = compare_sides(*sides, **options)
            except (BrokenResults, ValueError) as exc:  # too broken to compare: said, and never a pass
                notes.append(f'<p class="err" data-not-compared="{_attr(ev)}">{escape(ev)} not compared: '
                             f"{escape(str(exc))}</p>")
                failed = True
                continue
            failed |= result.failed
            pairing = result.pairing
            notes += [f'<p class="err">{escape(problem)}</p>' for problem in result.problems]
            table += result.rows
        verdict = "fails the gate" if failed else "passes the gate"
        out.append(f"<h3>{escape(ck)} against {escape(base)}</h3>"
                   f'<p data-verdict="{"fail" if failed else "pass"}"><b class="{"down" if failed else "up"}">'
                   f"{verdict}</b>; tolerance {100 * max_delta:g} points; {escape(pairing or 'nothing compared')}.</p>")
        out += notes
        if not table:
            continue
        out.append('<div class="scroll"><table class="verdicts"><thead><tr><th>Evaluation</th><th>Cohort</th>'
                   "<th class=num>Base</th><th class=num>Candidate</th><th class=num>Change</th>"
                   "<th class=num>95% interval</th><th class=num>Lost / gained</th><th class=num>McNemar p</th>"
                   "<th>Verdict</th></tr></thead><tbody>")
        for r in table:
            flag = ('<b class="down">REGRESSION</b>' if r.regression else
                    "significant" if r.significant else '<span class="muted">–</span>')
            interval = "–" if r.ci_low is None else f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
            lost = "–" if r.pairs is None else f"{r.pairs.baseline_only} / {r.pairs.candidate_only}"
            p = "–" if r.mcnemar_p is None else f"{r.mcnemar_p:.3g}"
            out.append(
                f'<tr data-evaluation="{_attr(r.evaluation)}" data-cohort="{_attr(r.cohort)}" '
                f'data-regression="{str(r.regression).lower()}"><td><code>{escape(r.evaluation)}</code></td>'
                f"<td>{escape(r.cohort)}</td>"
                f'<td class="num">{_pct(r.baseline.pass_rate)} <span class="muted">n={r.baseline.n}</span></td>'
                f'<td class="num">{_pct(r.candidate.pass_rate)} <span class="muted">n={r.candidate.n}</span></td>'
                f'<td class="num">{"–" if r.change is None else f"{100 * r.change:+.1f} pt"}</td>'
                f'<td class="num" data-col="interval">{interval}</td><td class="num">{lost}</td>'
                f'<td class="num">{p}</td><td>{flag}</td></tr>')
        out.append("</tbody></table></div>")
    return "".join(out)


def _changes(run_infos: Sequence[tuple[str, dict[str, Any] | None]]) -> list[str]:
    """"What changed underneath": each later run's record against the first's (runinfo.py)."""
    from .runinfo import describe_changes

    if len(run_infos) < 2 or all(info is None for _, info in run_infos):
        return []
    first_name, first = run_infos[0]
    out = ['<h2 id="changes-h">What changed underneath</h2>',
           '<p class="note">From each run record (<code>.run.json</code> beside the results): versions, '
           "the generator (engine, dtype, quantization, compile mode, tokenizer) and the scorer.</p>",
           '<section class="card" aria-labelledby="changes-h">']
    for name, info in run_infos[1:]:
        changes, warnings = describe_changes(first, info)
        items = [f'<li class="err" data-warning>{escape(w)}</li>' for w in warnings]
        items += [f"<li>{escape(c)}</li>" for c in changes]
        body = f"<ul>{''.join(items)}</ul>" if items else '<p class="muted">Nothing changed.</p>'
        out.append(f"<h3>{escape(name)} against {escape(first_name)}</h3>{body}")
    out.append("</section>")
    return out


def _cohort_groups(views: dict[str, View], ev: str, col: str) -> tuple[list, int]:
    per_view = {ck: view.stats_by(ev, col) for ck, view in views.items() if view.has_evaluation(ev)}
    sizes: Counter = Counter()
    for groups in per_view.values():
        for name, st in groups.items():
            sizes[name] += st.rows
    names = sorted(sizes, key=lambda c: (-sizes[c], c))
    groups = []
    for name in names[:MAX_COHORTS]:
        groups.append((name, {ck: st for ck, by_name in per_view.items() if (st := by_name.get(name)) and st.rows}))
    return groups, max(0, len(names) - MAX_COHORTS)


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _header(title: str, views: dict[str, View], evals: list[str], colours: dict[str, str],
            sources: Sequence[str]) -> str:
    n_rows = sum(view.size for view in views.values())
    n_ck = len(views)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    chips = "".join(f'<span class="chip">{_swatch(colours[ck])}<b>{escape(ck)}</b> · {view.size} rows</span>'
                    for ck, view in views.items())
    src = f'<p class="small">{escape(", ".join(sources))}</p>' if sources else ""
    return (f"<header><h1>{escape(title)}</h1>"
            f"<p>{n_rows} rows · {n_ck} checkpoint{'s' * (n_ck != 1)} · {len(evals)} "
            f"evaluation{'s' * (len(evals) != 1)}: {escape(', '.join(evals))} · generated {now}</p>"
            f'{src}<div class="chips">{chips}</div></header>')


def _cohort_section(views: dict[str, View], evals: list[str], colours: dict[str, str],
                    col: str, index: int) -> str:
    checkpoints = list(views)
    charts = []
    for ei, ev in enumerate(evals):
        groups, dropped = _cohort_groups(views, ev, col)
        chart = _bar_chart(f"Pass rate of {ev} per checkpoint, by {col}", groups, checkpoints, colours,
                           col, f"c-{index}-{ei}")
        more = f'<p class="note">{dropped} smaller cohorts not shown.</p>' if dropped else ""
        charts.append(f'<figure><figcaption><code>{escape(ev)}</code></figcaption>'
                      f'<div class="scroll">{chart}</div>{more}</figure>')
    return (f'<h2 id="by-{index}">Pass rate by <code>{escape(col)}</code></h2>'
            '<p class="note">One group per cohort, most rows first; n is the cohort\'s rows over all '
            "checkpoints. Small cohorts swing widely: hover a bar for its counts.</p>"
            f'<section class="card charts" aria-labelledby="by-{index}">{"".join(charts)}</section>')


def _distributions(views: dict[str, View], evals: list[str], colours: dict[str, str]) -> str:
    out = ['<h2 id="dist-h">Score distributions</h2>'
           '<p class="note">Share of scored rows per score bin of width 0.1; the dashed line marks the mean. '
           "The vertical scale is shared within an evaluation.</p>"]
    for ei, ev in enumerate(evals):
        stats = {ck: st for ck, view in views.items() if (st := view.stats(ev)).rows}
        top = max((max(st.bins) / st.scored for st in stats.values() if st.scored), default=1.0)
        y_max = _share_scale(top)
        cards = []
        for ci, (ck, st) in enumerate(stats.items()):
            svg = _histogram(ev, ck, st, colours[ck], y_max, f"h-{ei}-{ci}")
            stat = f'<div class="stat">{st.scored} scored · mean {_num(st.mean)}</div>'
            cards.append(f'<div class="card"><h4>{_swatch(colours[ck])}{escape(ck)}</h4>{stat}{svg}</div>')
        out.append(f'<h3><code>{escape(ev)}</code></h3><div class="grid">{"".join(cards)}</div>')
    return "".join(out)


# --------------------------------------------------------------------------------------------
# agreement with human labels


def _thin(points: list[tuple[float, float]], step: float = 0.002) -> list[tuple[float, float]]:
    """The curve with points closer than `step` to the last kept one dropped (ends kept): the same
    line at any size, in a few hundred points."""
    kept = points[:1]
    for x, y in points[1:-1]:
        if abs(x - kept[-1][0]) >= step or abs(y - kept[-1][1]) >= step:
            kept.append((x, y))
    return kept + points[-1:] if len(points) > 1 else kept


def _roc_chart(ev: str, curves: list[tuple[str, list[tuple[float, float]], Agreement]], colours: dict[str, str],
               chart_id: str) -> str:
    """ROC curves of one evaluation, one line per checkpoint, over the chance diagonal."""
    size, left, right, bottom = 240, 52, 16, 44
    legend, legend_rows, legend_w = _legend([ck for ck, _, _ in curves], colours, left, 18, 300)
    top = 26 + 20 * legend_rows
    width, height = left + max(size, legend_w) + right, top + size + bottom
    names = ", ".join(f"{ck} {ag.roc_auc:.3f}" for ck, _, ag in curves)
    out = [f'<svg width="{width:.0f}" height="{height}" viewBox="0 0 {width:.0f} {height}" class="roc" role="img" '
           f'aria-labelledby="{chart_id}-t">',
           f'<title id="{chart_id}-t">{escape(f"ROC curve of {ev} against the human labels; ROC-AUC: {names}")}'
           f"</title>", *legend]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x, y = left + size * tick, top + size * (1 - tick)
        cls = "axis" if tick == 0 else "grid"
        out.append(f'<line x1="{left}" x2="{left + size}" y1="{y:.1f}" y2="{y:.1f}" class="{cls}"/>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + size}" class="{cls}"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{tick:g}</text>'
                   f'<text x="{x:.1f}" y="{top + size + 15}" class="tick" text-anchor="middle">{tick:g}</text>')
    out.append(f'<line x1="{left}" y1="{top + size}" x2="{left + size}" y2="{top}" class="chance">'
               "<title>chance (ROC-AUC 0.5)</title></line>")
    for ck, points, ag in curves:
        path = " ".join(f"{left + size * fpr:.1f},{top + size * (1 - tpr):.1f}" for fpr, tpr in _thin(points))
        tip = f"{ck}: ROC-AUC {ag.roc_auc:.3f} over {ag.positives} supported and {ag.negatives} unsupported rows"
        out.append(f'<polyline points="{path}" class="roc" stroke="{colours[ck]}"><title>{escape(tip)}</title>'
                   "</polyline>")
    out.append(f'<text x="{left + size / 2}" y="{top + size + 34}" class="axis-label" text-anchor="middle">'
               "False positive rate (unsupported rows passed)</text>")
    out.append(f'<text transform="translate(14 {top + size / 2:.0f}) rotate(-90)" class="axis-label" '
               'text-anchor="middle">True positive rate</text></svg>')
    return "".join(out)


def _by_label(data: Labelled) -> dict[bool, list[float]]:
    return {flag: [s for s, y in zip(data.scores, data.labels) if y == flag] for flag in (True, False)}


def _label_histogram(ev: str, ck: str, data: Labelled, ag: Agreement, colour: str, y_max: float,
                     chart_id: str) -> str:
    """Share of the supported (filled) and of the unsupported (outlined) rows per score bin, side by
    side; the dotted line is the threshold tuned on the dev split."""
    classes = _by_label(data)
    left, right, top, bottom = 44, 12, 30, 40
    plot_w, plot_h = 250, 120
    width, height = left + plot_w + right, top + plot_h + bottom
    bw = plot_w / BINS
    title = f"Scores of {ev} for checkpoint {ck} by human label"
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="hist" role="img" '
           f'aria-labelledby="{chart_id}-t">',
           f'<title id="{chart_id}-t">{escape(title)}: {len(classes[True])} supported, {len(classes[False])} '
           f"unsupported rows, share of each per score bin</title>",
           *_hist_frame(left, top, plot_w, plot_h, y_max)]
    x0 = 8.0
    for k, (label, name) in enumerate(((False, "unsupported"), (True, "supported"))):
        scores = classes[label]
        fill = f'fill="{colour}"' if label else f'fill="#fff" stroke="{colour}" stroke-width="1.5"'
        key = f"{name} ({len(scores)})"
        out.append(f'<rect x="{x0:.1f}" y="4" width="11" height="11" rx="2" {fill}/>'
                   f'<text x="{x0 + 16:.1f}" y="14" class="tick">{key}</text>')
        x0 += 16 + 6.6 * len(key) + 16
        for i, c in enumerate(_bin_counts(scores)):
            share = c / len(scores) if scores else 0.0
            h = plot_h * share / y_max
            tip = (f"{ck}, {ev}: score {i / BINS:.1f}–{(i + 1) / BINS:.1f}{']' if i == BINS - 1 else ')'}: "
                   f"{c} of {len(scores)} {name} rows ({_pct(share)})")
            out.append(f'<rect x="{left + i * bw + 1 + k * (bw - 2) / 2:.1f}" y="{top + plot_h - h:.1f}" '
                       f'width="{(bw - 2) / 2:.1f}" height="{h:.1f}" {fill} shape-rendering="crispEdges">'
                       f"<title>{escape(tip)}</title></rect>")
    if ag.threshold is not None:
        x = left + plot_w * min(max(ag.threshold, 0.0), 1.0)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" class="tuned">'
                   f"<title>threshold tuned on the dev split: {ag.threshold:.3f}</title></line>")
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" class="axis-label" text-anchor="middle">'
               "Score (dotted line: threshold tuned on dev)</text></svg>")
    return "".join(out)


def _with_interval(value: float | None, ci: tuple[float, float] | None, percent: bool) -> str:
    """`81.2% [78.0, 84.1]` (percent) or `0.861 [0.802, 0.913]`."""
    if value is None:
        return '<span class="muted">–</span>'
    show = (lambda x: f"{100 * x:.1f}") if percent else (lambda x: f"{x:.3f}")
    interval = "" if ci is None else f'<div class="small">[{show(ci[0])}, {show(ci[1])}]</div>'
    return show(value) + ("%" if percent else "") + interval


def _agreement_table(measured: dict[tuple[str, str], tuple[Labelled, Agreement]], colours: dict[str, str]) -> str:
    conf = next(iter(measured.values()))[1].confidence
    out = [f'<table id="agreement"><caption class="small">Balanced accuracy of the evaluator\'s own verdict, '
           f"ROC-AUC of its score; under each its {conf:.0%} interval. Rows as supported / unsupported; under the "
           "threshold the dev rows and the balanced accuracy it gives there.</caption><thead><tr><th>Evaluation</th><th>Checkpoint</th>"
           "<th class=num>Measured</th><th class=num>Left out</th><th class=num>Balanced<br>accuracy</th>"
           "<th class=num>ROC-AUC</th><th class=num>Threshold<br>tuned on dev</th>"
           "<th class=num>Balanced<br>acc. on test</th></tr></thead><tbody>"]
    notes = []
    previous = None
    for (ev, ck), (_, ag) in measured.items():
        first = ' class="first-of-eval"' if ev != previous else ""
        previous = ev
        tuned = '<span class="muted">–</span>' if ag.threshold is None else (
            f'{ag.threshold:.3f}<div class="small">dev {ag.dev_rows} ({ag.dev_positives} / {ag.dev_negatives})<br>'
            f"there {_pct(ag.dev_balanced_accuracy)}</div>")
        test = (_with_interval(ag.test_balanced_accuracy, ag.test_balanced_accuracy_ci, True)
                + f'<div class="small">test {ag.test_rows} ({ag.test_positives} / {ag.test_negatives})</div>')
        out.append(
            f'<tr{first} data-evaluation="{_attr(ev)}" data-checkpoint="{_attr(ck)}">'
            f"<td><code>{escape(ev)}</code></td><td>{_swatch(colours[ck])}{escape(ck)}</td>"
            f'<td class="num" data-col="measured">{ag.measured}<div class="small">'
            f"{ag.positives} / {ag.negatives}</div></td>"
            f'<td class="num" data-col="left_out">{ag.unlabelled} unlabelled<br>{ag.errored} errored</td>'
            f'<td class="num" data-col="bacc">{_with_interval(ag.balanced_accuracy, ag.balanced_accuracy_ci, True)}'
            f'<div class="small">accuracy {_pct(ag.accuracy)}</div></td>'
            f'<td class="num" data-col="auc">{_with_interval(ag.roc_auc, ag.roc_auc_ci, False)}</td>'
            f'<td class="num" data-col="threshold">{tuned}</td>'
            f'<td class="num" data-col="test_bacc">{test}</td></tr>')
        notes += [f"{ev} · {ck}: {note}" for note in ag.notes]
    out.append("</tbody></table>")
    out += [f'<p class="note err">{escape(note)}</p>' for note in notes]
    return "".join(out)


def _agreement_section(views: dict[str, View], evals: list[str], colours: dict[str, str],
                       label_column: str, dev_fraction: float) -> str:
    measured: dict[tuple[str, str], tuple[Labelled, Agreement]] = {}
    for ev in evals:
        for ck, view in views.items():
            if view.has_evaluation(ev) and view.size:
                data = view.labelled(ev, label_column)
                measured[ev, ck] = data, measure(data, ev, label_column, dev_fraction=dev_fraction, checkpoint=ck)
    first = next(iter(measured.values()))[1]
    out = ['<h2 id="agree-h">Agreement with human labels</h2>',
           f'<p class="note">Against the human labels in <code>{escape(label_column)}</code> (supported = 1, true, '
           "yes, pass, supported, consistent, correct or entailment). Balanced accuracy is the mean of the "
           "share of supported rows the evaluator passes and of unsupported rows it fails; ROC-AUC is the chance "
           "that a supported row scores above an unsupported one (ties count half). Intervals: "
           f"{escape(first.interval_method)}. As LLM-AggreFact measures fact-checkers (Tang et al. 2024, "
           "MiniCheck), the threshold that maximises balanced accuracy is tuned on the dev split and its balanced "
           f"accuracy reported on the held-out test split; a row's side is fixed by a hash of its "
           f"<code>row_id</code> (dev fraction {dev_fraction:g}), the same for every checkpoint. Rows without a "
           "label, or whose evaluation errored, are left out and counted.</p>",
           f'<section class="card scroll" aria-labelledby="agree-h">{_agreement_table(measured, colours)}</section>']
    for ei, ev in enumerate(evals):
        per_ck = [(ck, data, ag) for (e, ck), (data, ag) in measured.items() if e == ev]
        curves = [(ck, roc_points(data.scores, data.labels), ag) for ck, data, ag in per_ck if ag.roc_auc is not None]
        cards = []
        if curves:
            cards.append(f'<div class="card"><h4>ROC curve</h4><div class="stat">all measured rows</div>'
                         f'{_roc_chart(ev, curves, colours, f"roc-{ei}")}</div>')
        y_max = _share_scale(max((max(_bin_counts(group)) / len(group) for _, data, _ in per_ck
                                  for group in _by_label(data).values() if group), default=1.0))
        for ci, (ck, data, ag) in enumerate(per_ck):
            cards.append(f'<div class="card"><h4>{_swatch(colours[ck])}{escape(ck)}</h4>'
                         f'<div class="stat">scores by human label</div>'
                         f'{_label_histogram(ev, ck, data, ag, colours[ck], y_max, f"lh-{ei}-{ci}")}</div>')
        out.append(f'<h3><code>{escape(ev)}</code></h3><div class="grid">{"".join(cards)}</div>')
    return "".join(out)


def render_views(
    views: dict[str, View],
    by: Sequence[str] | None = None,
    title: str | None = None,
    sources: Sequence[str] = (),
    worst_n: int = 10,
    label_column: str | None = None,
    dev_fraction: float = DEFAULT_DEV_FRACTION,
    run_infos: Sequence[tuple[str, dict[str, Any] | None]] = (),
) -> str:
    """The report's HTML over a view per checkpoint (`load_views`: rows, or a results folder read
    column-wise); with `label_column`, the agreement with those human labels too; with `run_infos`
    ((file, run record) per results file, runinfo.py), what changed from the first run to each other."""
    by = list(by or [])
    if not any(view.size for view in views.values()):
        raise ValueError("no rows in the results files")
    evals = _evaluations(views)
    if not evals:
        raise ValueError("no evaluations in the results files (no column ends with `.score`)")
    missing = [b for b in by if not any(view.has_column(b) for view in views.values())]
    if missing:
        raise ValueError(f"by: no such column in the results: {', '.join(missing)}")
    if label_column is not None:
        check_label_column([dict.fromkeys(view.columns) for view in views.values()], label_column)
    checkpoints = list(views)
    colours = {ck: PALETTE[i % len(PALETTE)] for i, ck in enumerate(checkpoints)}
    title = title or "Evaluation report"

    overall = [(ev, {ck: st for ck, view in views.items() if (st := view.stats(ev)).rows}) for ev in evals]
    chart = _bar_chart("Pass rate per checkpoint and evaluation", overall, checkpoints, colours, "Evaluation",
                       "c-all")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        _header(title, views, evals, colours, sources),
        '<h2 id="summary-h">Summary</h2>',
        '<section class="card scroll" aria-labelledby="summary-h">',
        _summary(views, evals, colours),
        "</section>",
        '<h2 id="verdicts-h">Regression verdicts</h2>',
        '<p class="note">Each checkpoint against the first, as <code>fi-evals compare</code> judges it: a '
        "regression is a drop beyond the tolerance whose interval excludes 0. Rows are paired by "
        "<code>row_id</code> when both runs hold the same rows.</p>",
        f'<section class="card" aria-labelledby="verdicts-h">{_verdicts(views, evals, by)}</section>',
        *_changes(run_infos),
        '<h2 id="pass-h">Pass rate by checkpoint</h2>',
        f'<section class="card scroll" aria-labelledby="pass-h">{chart}</section>',
        *(_cohort_section(views, evals, colours, col, bi) for bi, col in enumerate(by)),
        _agreement_section(views, evals, colours, label_column, dev_fraction) if label_column is not None else "",
        _distributions(views, evals, colours),
        '<h2 id="worst-h">Worst items</h2>',
        f'<p class="note">Per evaluation, the {worst_n} lowest-scoring rows over all checkpoints, with the '
        "reason and the claim the checkpoint found least supported.</p>",
        *(f'<section class="card" aria-label="Worst items of {_attr(ev)}"><h3><code>{escape(ev)}</code></h3>'
          f"{_worst(views, ev, by, colours, worst_n)}</section>" for ev in evals),
        '<h2 id="errors-h">Errors</h2>',
        '<section class="card" aria-labelledby="errors-h">',
        _errors(views, evals, colours, 20),
        "</section>",
        "</main></body></html>\n",
    ]
    return "\n".join(parts)


def write_report(
    results_paths: list[str | Path],
    output: str | Path,
    by: list[str] | None = None,
    title: str | None = None,
    *,
    worst_n: int = 10,
    label_column: str | None = None,
    dev_fraction: float = DEFAULT_DEV_FRACTION,
) -> Path:
    """Write one self-contained HTML report of `results_paths` (results files or folders) to `output`;
    returns its path. With `label_column`, it also measures every evaluation against those human
    labels (agreement.py)."""
    if isinstance(results_paths, (str, Path)):
        results_paths = [results_paths]
    if not results_paths:
        raise ValueError("results_paths: give at least one results file")
    for p in results_paths:
        if not Path(p).exists():
            raise ValueError(f"results file not found: {p}")
    views = load_views(results_paths)
    sources = [Path(p).name for p in results_paths]
    from .runinfo import read_run_info

    run_infos = [(Path(p).name, read_run_info(Path(p))) for p in results_paths]  # `out/`: out.run.json
    html = render_views(views, by=by, title=title, sources=sources, worst_n=worst_n, label_column=label_column,
                        run_infos=run_infos, dev_fraction=dev_fraction)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
