"""The fair comparison across split seeds and budgets: strict metrics against cost.

Every finished explanation run of a dataset is a point: its method, its budget (the config's
declared budget field, e.g. ``orders=8``, or ``steps`` for a method optimised in steps), its
split seed (the default split when the run names none) and its strict metrics and cost
(:mod:`lcer_core.store.views`' ``strict`` view). :func:`over_splits` averages each (k, method,
budget) over its split seeds (mean ± sample sd, and how many), and :func:`frontier` marks the
points that no other point of the same K beats on both strict F_NS (higher) and seconds per
pair (lower): the question "at matched cost, does anything beat X?" read off one table.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from lcer_core.columns import COST_COLUMNS, STRICT_KEYS
from lcer_core.store.formatting import format_value
from lcer_core.store.report import NOT_MEASURED, selects_text
from lcer_core.store.store import ResultStore

__all__ = [
    "DEFAULT_SPLIT",
    "POINT_METRICS",
    "budget_label",
    "strict_points",
    "over_splits",
    "frontier",
    "frontier_rows",
    "frontier_title",
    "FRONTIER_HEADERS",
    "frontier_cells",
    "describe",
]

#: How the paper's split shows in the ``split_seed`` column.
DEFAULT_SPLIT = -1
#: The per-run numbers averaged over split seeds.
POINT_METRICS = (*STRICT_KEYS, *(c for c in COST_COLUMNS if c != "calls_per_pair"))


def budget_label(method: str, config_json: str | None) -> str:
    """``field=value`` of the run's budget (its method's declared budget field, else ``steps``
    where the configuration has steps); empty for a method without either."""
    from lcer_core.explainers import METHODS  # lazily: the registry imports torch

    try:
        config = json.loads(config_json) if config_json else {}
    except ValueError:
        config = {}
    cls = METHODS.get(method)
    field = getattr(cls.config_type, "budget_option", None) if cls is not None else None
    field = field or ("steps" if "steps" in config else None)
    return f"{field}={config[field]}" if field and field in config else ""


def strict_points(store: ResultStore, dataset: str) -> pl.DataFrame:
    """One row per finished run of ``dataset``: k, method, budget, split seed, seed, users,
    selects_on, the strict metrics and the cost (the latest run of each such combination)."""
    rows = store.query(
        "SELECT s.k, s.method, s.seed, s.n_users, s.selects_on, s.finished_at, r.config, "
        "r.params_json, " + ", ".join(f"s.{m}" for m in POINT_METRICS) + " "
        "FROM strict s JOIN runs r USING (run_id) WHERE s.dataset = ? ORDER BY s.finished_at",
        [dataset],
    )
    if rows.height == 0:
        return rows
    budgets = [budget_label(m, c) for m, c in zip(rows["method"], rows["config"], strict=True)]
    splits = [_split_seed(p) for p in rows["params_json"]]
    rows = rows.with_columns(
        budget=pl.Series(budgets, dtype=pl.String),
        split_seed=pl.Series(splits, dtype=pl.Int64),
        k=pl.col("k").cast(pl.Int32),
    ).drop("config", "params_json")
    keys = ["k", "method", "budget", "split_seed", "seed", "n_users"]
    return rows.unique(keys, keep="last", maintain_order=True).sort(keys, nulls_last=True)


def _split_seed(params_json: str | None) -> int:
    try:
        value = json.loads(params_json or "{}").get("split_seed")
    except (ValueError, AttributeError):
        value = None
    return DEFAULT_SPLIT if value is None else int(value)


def over_splits(points: pl.DataFrame) -> pl.DataFrame:
    """Per (k, method, budget): mean and sample sd (``*_sd``, null for one) of every strict
    metric and cost over the split seeds present (``n_splits``; explainer seeds averaged
    first), with ``selects_on``."""
    if points.height == 0:
        return pl.DataFrame()
    per_split = points.group_by(["k", "method", "budget", "split_seed"]).agg(
        pl.col("selects_on").first(), *[pl.col(m).mean() for m in POINT_METRICS]
    )
    out = per_split.group_by(["k", "method", "budget"]).agg(
        pl.len().alias("n_splits"),
        pl.col("split_seed").sort().alias("split_seeds"),
        pl.col("selects_on").first(),
        *[pl.col(m).mean() for m in POINT_METRICS],
        *[pl.col(m).std().alias(f"{m}_sd") for m in POINT_METRICS],
    )
    return out.sort(["k", "method", "budget"])


def frontier(summary: pl.DataFrame) -> pl.DataFrame:
    """``summary`` (from :func:`over_splits`) with ``on_frontier``: true for the points of each K
    that no other point beats on both strict F_NS and seconds per pair."""
    if summary.height == 0:
        return summary.with_columns(on_frontier=pl.lit(False))
    measured = pl.col("s_per_pair").is_not_null() & pl.col("strict_fns_pct").is_not_null()
    ranked = summary.with_columns(measured.alias("_ok")).sort(
        ["k", "s_per_pair", "strict_fns_pct"], descending=[False, False, True], nulls_last=True
    )
    best_before = (
        pl.when(pl.col("_ok")).then(pl.col("strict_fns_pct")).otherwise(None)
        .cum_max().shift(1).over("k").fill_null(float("-inf"))
    )  # fmt: skip
    return ranked.with_columns(
        on_frontier=pl.col("_ok") & (pl.col("strict_fns_pct") > best_before)
    ).drop("_ok")


def frontier_rows(store: ResultStore, dataset: str) -> pl.DataFrame:
    """:func:`frontier` of :func:`over_splits` of the dataset's runs (empty when none)."""
    return frontier(over_splits(strict_points(store, dataset)))


def describe(row: dict[str, Any]) -> str:
    """``method (budget)`` as a point's label."""
    return f"{row['method']} ({row['budget']})" if row.get("budget") else str(row["method"])


#: (column, header, format) of the frontier table, after Method, budget and splits.
_TABLE_COLUMNS = (
    ("strict_val_pct", "verified Val %", ".1f"),
    ("strict_len", "Len", ".2f"),
    ("strict_ps_pct", "PS %", ".2f"),
    ("strict_pn_pct", "PN %", ".2f"),
    ("strict_fns_pct", "F_NS %", ".2f"),
    ("s_per_pair", "s/pair", ".4f"),
    ("catalogue_per_pair", "catalogue/pair", ".1f"),
    ("target_per_pair", "target/pair", ".1f"),
    ("grad_steps_per_pair", "grad steps/pair", ".1f"),
)
#: The headers of the frontier table, printed and in the HTML page.
FRONTIER_HEADERS = (
    "Method",
    "budget",
    "splits",
    *(header for _, header, _ in _TABLE_COLUMNS),
    "selects on",
    "frontier",
)


def frontier_title(dataset: str, k: int) -> str:
    return (
        f"Strict comparison over split seeds and budgets · {dataset} · top-{k} "
        "(all pairs; mean ± sd over split seeds; * on the F_NS/seconds frontier)"
    )


def frontier_cells(frame: pl.DataFrame) -> list[list[str]]:
    """The rows of one K's frontier table as text, best strict F_NS first."""
    rows = []
    ordered = frame.sort("strict_fns_pct", descending=True, nulls_last=True)
    for row in ordered.iter_rows(named=True):
        cells = [str(row["method"]), row["budget"] or "–", str(row["n_splits"])]
        for column, _, spec in _TABLE_COLUMNS:
            value, sd = row[column], row.get(f"{column}_sd")
            text = NOT_MEASURED if value is None else format_value(value, "–", spec)
            if value is not None and sd is not None and column.startswith("strict_"):
                text += f" ± {format_value(sd, '–', spec)}"
            cells.append(text)
        cells += [selects_text(row["selects_on"]), "*" if row["on_frontier"] else ""]
        rows.append(cells)
    return rows
