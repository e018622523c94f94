"""One self-contained HTML page per dataset: Table 2 beside the paper, Table 3, the strict
comparison over all pairs (with each method's cost and what it selects on), the figures and
a few explained recommendations in words (``lcer report DATASET --html FILE``, and an MLflow
artifact of each pipeline run).

Readable offline: the CSS is inline, the figures are PNG data URIs, and the page names no
external URL. Every string from the data (titles, ids) is escaped by Jinja's autoescape.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from jinja2 import Environment

from lcer_core import plots
from lcer_core.errors import InvalidParameterError, LcerHomeError
from lcer_core.explain_user import sentences
from lcer_core.fsio import target_mode, write_text_atomic
from lcer_core.paper import SUBJECT_METHOD
from lcer_core.store import ResultStore, table2_report, table3_report
from lcer_core.store.formatting import format_value
from lcer_core.store.frontier import (
    FRONTIER_HEADERS,
    frontier_cells,
    frontier_rows,
    frontier_title,
)
from lcer_core.store.report import (
    METRIC_HEADERS,
    METRIC_SPECS,
    REPORT_METRICS,
    STRICT_COLUMNS,
    strict_cells,
    strict_report,
    strict_title,
)

__all__ = ["build_report", "render_html", "write_html_report", "EXAMPLE_USERS"]

#: How many users' recommendations the page explains in words.
EXAMPLE_USERS = 3


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LCER report · {{ dataset }}</title>
<style>
body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
p.meta { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: .8rem 0 1.2rem; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.paper { color: #6e7781; background: #fafbfc; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9rem; }
ol.explained li { margin: .35rem 0; }
.note { color: #57606a; font-style: italic; }
</style>
</head>
<body>
<h1>LCER report · {{ dataset }}</h1>
<p class="meta">{{ summary }}</p>

<h2>Table 2 · counterfactual explanations, ours beside the paper's</h2>
{% for t in table2 %}
<table class="table2" id="table2-k{{ t.k }}">
<caption>Top-{{ t.k }} (grey: the paper's value)</caption>
<thead><tr><th>Method</th><th>α</th><th>λ</th><th>pairs</th>
{% for h in metric_headers %}<th>{{ h }}</th><th>paper</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr><td>{{ row.method }}</td>
{% for c in row.cells %}<td class="num{% if c.paper %} paper{% endif %}">{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endfor %}

<h2>Table 3 · LCER at the length of each baseline</h2>
{% if table3 %}
<table class="table3" id="table3">
<caption>LCER's grid point whose length is within 0.05 of the baseline's</caption>
<thead><tr>{% for h in table3_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table3 %}<tr>{% for c in row %}<td class="num">{{ c }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="note">No LCER run matches a baseline's length within 0.05 (run <code>lcer sweep {{ dataset }}</code> for more α/λ points).</p>
{% endif %}

<h2>{{ strict_title }}</h2>
{% if strict %}
<table class="strict" id="strict">
<caption>PS, PN and F_NS with every pair in the denominator; selects on: the evaluation tests a method queries to choose its answer (its score on them is high by construction)</caption>
<thead><tr>{% for h in strict_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in strict %}<tr>{% for c in row %}<td class="num">{{ c }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="note">No finished run to compare.</p>
{% endif %}

<h2>Strict F_NS against cost, over split seeds and budgets</h2>
{% if frontier_figure %}
<figure id="frontier-figure"><img src="data:image/png;base64,{{ frontier_figure.data }}" alt="{{ frontier_figure.caption }}" width="{{ frontier_figure.width }}" height="{{ frontier_figure.height }}">
<figcaption>{{ frontier_figure.caption }}</figcaption></figure>
{% for t in frontier %}
<table class="frontier" id="frontier-k{{ t.k }}">
<caption>{{ t.title }}</caption>
<thead><tr>{% for h in frontier_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr>{% for c in row %}<td class="num">{{ c }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endfor %}
{% else %}
<p class="note">No run with a measured cost to place on the frontier.</p>
{% endif %}

<h2>Figures</h2>
{% for f in figures %}
<figure><img src="data:image/png;base64,{{ f.data }}" alt="{{ f.caption }}" width="{{ f.width }}" height="{{ f.height }}">
<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}
{% for n in figure_notes %}<p class="note">{{ n }}</p>{% endfor %}

<h2>Explained recommendations</h2>
{% if examples %}
<p class="meta">{{ examples_method }} at K = {{ examples_k }}, the first {{ examples|length }} test users.</p>
{% for ex in examples %}
<h3>User {{ ex.user }}</h3>
<ol class="explained">{% for s in ex.sentences %}<li>{{ s }}</li>{% endfor %}</ol>
{% endfor %}
{% else %}
<p class="note">No stored explanations to show.</p>
{% endif %}
</body>
</html>
"""


def _num(value: Any, spec: str) -> str:
    return format_value(value, "–", spec)


def _table2(frame: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for k in frame["k"].unique().sort().to_list():
        rows = []
        for row in frame.filter(pl.col("k") == k).iter_rows(named=True):
            ran = row["run_id"] is not None
            cells = [
                {"text": format_value(row[c], "–"), "paper": False}
                for c in ("alpha", "lam", "n_pairs")
            ]
            for metric in REPORT_METRICS:
                spec = METRIC_SPECS[metric]
                ours = _num(row[metric], spec) if ran else "not run"
                cells += [
                    {"text": ours, "paper": False},
                    {"text": _num(row[f"paper_{metric}"], spec), "paper": True},
                ]
            rows.append({"method": row["method"], "cells": cells})
        out.append({"k": k, "rows": rows})
    return out


_T3_METRICS = ("val_pct", "ps_pct", "pn_pct", "fns_pct")


def _table3(ours: pl.DataFrame, paper: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["source", "k", "baseline", "Len", "LCER Len", "α", "λ"]
    for metric in _T3_METRICS:
        headers += [METRIC_HEADERS[metric], f"LCER {METRIC_HEADERS[metric]}"]
    rows = []
    for source, frame in (("ours", ours), ("paper", paper)):
        for row in frame.iter_rows(named=True):
            cells = [source, str(row["k"]), str(row["baseline"])]
            cells += [_num(row[c], ".3f") for c in ("baseline_len", "lcer_len")]
            cells += [format_value(row.get(c), "–") for c in ("alpha", "lam")]
            for metric in _T3_METRICS:
                cells += [
                    _num(row[f"baseline_{metric}"], METRIC_SPECS[metric]),
                    _num(row[f"lcer_{metric}"], METRIC_SPECS[metric]),
                ]
            rows.append(cells)
    return headers, rows


def _sweep(store: ResultStore, dataset: str, k: int) -> pl.DataFrame:
    """The latest metrics of every finished (α, λ) point of the paper's subject (LCER) on
    ``dataset`` at ``k``, on the model, steps, seed and users of the run Table 2 shows."""
    return store.query(
        """
        WITH shown AS (
            SELECT r.model_key, r.steps, r.seed, r.n_users FROM table2 t JOIN runs r USING (run_id)
            WHERE t.dataset = ? AND t.k = ? AND t.method = ?
        ), points AS (
            SELECT r.alpha, r.lam, m.val_pct, m.len, m.ps_pct, m.pn_pct, m.fns_pct,
                   row_number() OVER (PARTITION BY r.alpha, r.lam
                                      ORDER BY r.finished_at DESC, m.evaluated_at DESC) AS latest
            FROM runs r JOIN metrics m USING (run_id) JOIN shown s
              ON r.model_key IS NOT DISTINCT FROM s.model_key AND r.steps IS NOT DISTINCT FROM s.steps
             AND r.seed IS NOT DISTINCT FROM s.seed AND r.n_users IS NOT DISTINCT FROM s.n_users
            WHERE r.dataset = ? AND r.k = ? AND r.method = ? AND r.status = 'finished'
              AND r.alpha IS NOT NULL AND r.lam IS NOT NULL
        )
        SELECT alpha, lam, val_pct, len, ps_pct, pn_pct, fns_pct FROM points WHERE latest = 1
        ORDER BY alpha, lam
        """,
        [dataset, k, SUBJECT_METHOD, dataset, k, SUBJECT_METHOD],
    )


def _best_baseline(table2: pl.DataFrame, k: int) -> dict[str, float | None] | None:
    """The metrics of the method other than the subject with the highest F_NS at ``k``."""
    rows = table2.filter(
        (pl.col("k") == k) & (pl.col("method") != SUBJECT_METHOD) & pl.col("run_id").is_not_null()
    )
    if rows.height == 0:
        return None
    row = rows.sort("fns_pct", descending=True, nulls_last=True).row(0, named=True)
    return {m: row[m] for m in REPORT_METRICS}


def _png(path: Path, caption: str) -> dict[str, Any]:
    data = path.read_bytes()
    # Width and height from the PNG header (IHDR), so the page lays out before decoding.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return {
        "data": base64.b64encode(data).decode("ascii"),
        "caption": caption,
        "width": width,
        "height": height,
    }


_CAPTIONS = {
    "fig5_explanation_count.png": "Figure 5 · explanation count of each item against its popularity",
    "fig6_mean_importance.png": "Figure 6 · mean importance in CEs against popularity",
    "fig7_recommendation_count.png": "Figure 7 · recommendation count against popularity",
    "fig8_effect_lambda.png": "Figure 8 · effect of λ",
    "fig9_effect_alpha.png": "Figure 9 · effect of α",
    "pareto_fns_len.png": "Pareto front · F_NS against CE length over the α/λ grid",
}


def _figures(
    store: ResultStore, dataset: str, table2: pl.DataFrame, k: int
) -> tuple[list[dict[str, Any]], list[str]]:
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lcer-report-") as tmp:
        items = store.query(
            "SELECT * FROM item_explanations WHERE dataset = ? AND k = ?", [dataset, k]
        )
        if items.height:
            for path in plots.render_item_figures(items, Path(tmp)):
                figures.append(_png(path, f"{_CAPTIONS[path.name]} (top-{k})"))
        sweep = _sweep(store, dataset, k)
        if sweep.height >= 2:
            paths = plots.render_sweep_figures(sweep, Path(tmp), baseline=_best_baseline(table2, k))
            figures += [
                _png(p, f"{_CAPTIONS[p.name]} (top-{k}, {sweep.height} grid points)") for p in paths
            ]
        else:
            notes.append(
                f"Figures 8, 9 and the Pareto front need an α/λ sweep: run `lcer sweep {dataset} --k {k}`."
            )
    return figures, notes


def _frontier(store: ResultStore, dataset: str) -> dict[str, Any]:
    """The frontier figure (every K) and one table per K."""
    points = frontier_rows(store, dataset)
    measured = points.filter(pl.col("s_per_pair").is_not_null()) if points.height else points
    if measured.height == 0:
        return {"frontier_figure": None, "frontier": [], "frontier_headers": FRONTIER_HEADERS}
    with tempfile.TemporaryDirectory(prefix="lcer-report-") as tmp:
        path = plots.plot_frontier(points, Path(tmp) / "frontier.png")
        figure = _png(
            path,
            "Strict F_NS (all pairs) against seconds per pair, every method and "
            "budget; error bars: sd over split seeds; dashed: the frontier",
        )
    tables = [
        {"k": k, "title": frontier_title(dataset, k),
         "rows": frontier_cells(points.filter(pl.col("k") == k))}
        for k in sorted(set(points["k"].to_list()))
    ]  # fmt: skip
    return {"frontier_figure": figure, "frontier": tables, "frontier_headers": FRONTIER_HEADERS}


def _examples(
    store: ResultStore, dataset: str, table2: pl.DataFrame, k: int, n_users: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """A few users' explanations in words, from the stored run of the paper's subject (LCER;
    else the first method) at ``k``."""
    rows = table2.filter((pl.col("k") == k) & pl.col("run_id").is_not_null())
    if rows.height == 0:
        return None, []
    subject = rows.filter(pl.col("method") == SUBJECT_METHOD)
    row = (subject if subject.height else rows).row(0, named=True)
    expl = store.query(
        """
        WITH firsts AS (SELECT DISTINCT uid FROM explanations WHERE run_id = ? ORDER BY uid LIMIT ?)
        SELECT e.*, i.title FROM explanations e JOIN firsts USING (uid)
        LEFT JOIN items i ON i.dataset = ? AND i.sid = e.sid
        WHERE e.run_id = ? ORDER BY e.uid, e.rank
        """,
        [row["run_id"], n_users, dataset, row["run_id"]],
    )
    titles = store.query("SELECT sid, title FROM items WHERE dataset = ?", [dataset])
    title_of = dict(zip(titles["sid"].to_list(), titles["title"].to_list(), strict=True))
    examples = []
    for (uid,), part in expl.group_by(["uid"], maintain_order=True):
        recs = []
        for r in part.iter_rows(named=True):
            ce = [
                {"title": title_of.get(sid) or f"item {raw}"}
                for sid, raw in zip(r["ce_items"] or [], r["ce_raw"] or [], strict=False)
            ]
            recs.append(
                {
                    "rank": r["rank"],
                    "title": r["title"] or f"item {r['raw_item']}",
                    "found": r["found"],
                    "ce": ce,
                    "rank_after": r["rank_after"],
                    "necessary": r["necessary"],
                }
            )
        result = {"dataset": dataset, "method": row["method"], "k": k, "recommendations": recs}
        examples.append({"user": part["raw_user"][0] or str(uid), "sentences": sentences(result)})
    return row["method"], examples


def build_report(
    dataset: str, store: ResultStore | None = None, *, n_users: int = EXAMPLE_USERS
) -> dict[str, Any]:
    """Everything the page shows, from the results database (MissingDataError when no run finished)."""
    store = store or ResultStore()
    table2 = table2_report(store, dataset)
    ours3, paper3 = table3_report(store, dataset)
    ks = table2.filter(pl.col("run_id").is_not_null())["k"].unique().sort().to_list()
    k = ks[0]
    figures, notes = _figures(store, dataset, table2, k)
    method, examples = _examples(store, dataset, table2, k, n_users)
    headers3, rows3 = _table3(ours3, paper3)
    runs = store.query(
        "SELECT max(finished_at) AS last, count(*) AS n FROM table2 WHERE dataset = ?", [dataset]
    )
    last = runs["last"][0]
    summary = (
        f"{int(runs['n'][0])} explanation runs in the results database, the latest finished "
        f"{format_value(last, '–')}; K = {', '.join(str(x) for x in ks)}."
    )
    return {
        "dataset": dataset,
        "summary": summary,
        "metric_headers": [METRIC_HEADERS[m] for m in REPORT_METRICS],
        "table2": _table2(table2),
        "table3_headers": headers3,
        "table3": rows3,
        "strict_title": strict_title(dataset),
        "strict_headers": [header for _, header, _ in STRICT_COLUMNS],
        "strict": [strict_cells(r) for r in strict_report(store, dataset).iter_rows(named=True)],
        **_frontier(store, dataset),
        "figures": figures,
        "figure_notes": notes,
        "examples_method": method,
        "examples_k": k,
        "examples": examples,
    }


def render_html(report: dict[str, Any]) -> str:
    """The page of :func:`build_report`'s content, every data string escaped."""
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_TEMPLATE).render(**report)


@contextlib.contextmanager
def _user_path() -> Iterator[None]:
    """A write to a path the user named fails as a parameter error, in the same words."""
    try:
        yield
    except LcerHomeError as exc:
        raise InvalidParameterError(str(exc), param="out") from None


def write_html_report(dataset: str, out: Path, store: ResultStore | None = None) -> Path:
    """Write ``dataset``'s page to ``out`` (whole or not at all); its path."""
    out = Path(out)
    with _user_path():
        target_mode(out)  # a device or a FIFO is refused before the page is built
    page = render_html(build_report(dataset, store))
    with _user_path():
        write_text_atomic(out, page, parents=False)
    return out
