"""Table 2 and Table 3 of one dataset, ours beside the paper's (what ``lcer report`` prints)."""

from __future__ import annotations

import polars as pl

from lcer_core.errors import MissingDataError
from lcer_core.paper import PAPER_RECOMMENDER, SUBJECT_METHOD, paper_table2, paper_table3
from lcer_core.store.formatting import format_value
from lcer_core.store.store import ResultStore
from lcer_core.store.views import METHOD_ORDER

__all__ = [
    "REPORT_METRICS",
    "METRIC_HEADERS",
    "METRIC_SPECS",
    "COST_METRICS",
    "STRICT_METRICS",
    "STRICT_COLUMNS",
    "lam_report",
    "paired_report",
    "seed_rows",
    "selects_text",
    "strict_cells",
    "strict_report",
    "strict_title",
    "NOT_MEASURED",
    "RECOMMENDER_OF_KEY",
    "recommender_table2",
    "table2_report",
    "table3_report",
]

#: The metric columns compared with the paper, in Table 2's order.
REPORT_METRICS = ("val_pct", "len", "ps_pct", "pn_pct", "fns_pct")
#: How a metric is headed in a printed or HTML table.
METRIC_HEADERS = {
    "val_pct": "Val %",
    "len": "Len",
    "ps_pct": "PS %",
    "pn_pct": "PN %",
    "fns_pct": "F_NS %",
}
#: Decimals as printed in the paper's tables.
METRIC_SPECS = {"val_pct": ".1f", "len": ".3f", "ps_pct": ".2f", "pn_pct": ".2f", "fns_pct": ".2f"}
#: What a run cost per pair (not in the paper): recommender inputs scored, seconds.
COST_METRICS = ("calls_per_pair", "s_per_pair")


#: The strict metrics over all pairs (``strict`` view), in the printed order.
STRICT_METRICS = (
    "strict_val_pct",
    "strict_len",
    "strict_ps_pct",
    "strict_pn_pct",
    "strict_fns_pct",
)
#: The cost per pair beside them, counted at the recommender seam, the same way for every method.
STRICT_COSTS = ("s_per_pair", "catalogue_per_pair", "target_per_pair", "grad_steps_per_pair")
#: The strict table as printed and on the HTML page: (column, header, format).
STRICT_COLUMNS = (
    ("method", "Method", ""),
    ("k", "K", ""),
    ("strict_val_pct", "verified Val %", ".1f"),
    ("strict_len", "Len", ".3f"),
    ("strict_ps_pct", "PS %", ".2f"),
    ("strict_pn_pct", "PN %", ".2f"),
    ("strict_fns_pct", "F_NS %", ".2f"),
    ("s_per_pair", "s/pair", ".4f"),
    ("catalogue_per_pair", "whole-catalogue scorings/pair", ".1f"),
    ("target_per_pair", "target-only scorings/pair", ".1f"),
    ("grad_steps_per_pair", "gradient steps/pair", ".1f"),
    ("selects_on", "selects on", ""),
)
#: What a cell says where a run stored before schema 8 has no such number.
NOT_MEASURED = "not measured"


def strict_title(dataset: str) -> str:
    """The strict table's title (the same words in the terminal and on the HTML page)."""
    return (
        f"Beside the paper · strict metrics over all pairs · {dataset}  (a pair without a set is a failure; "
        "verified Val = sets that really drop the item out of the re-ranked top-K = strict PN; "
        "Len over those sets; cost per pair counted at the recommender seam; mean over seeds)"
    )


def selects_text(tests: list[str] | None) -> str:
    """``topk+sufficiency``, ``none`` (selects on no test) or ``unknown`` (a method unknown here)."""
    if tests is None:
        return "unknown"
    return "+".join(sorted(tests)) or "none"


def strict_report(store: ResultStore, dataset: str) -> pl.DataFrame:
    """Per (k, method) of ``table2``: the strict metrics and cost of the runs ``lcer report``
    averages (``seed_results``), means over seeds (null where not measured), and ``selects_on``."""
    metrics = STRICT_METRICS + STRICT_COSTS
    rows = store.query(
        "SELECT k, method, seed, selects_on, "
        + ", ".join(metrics)
        + " FROM seed_results WHERE dataset = ? ORDER BY k, method, seed",
        [dataset],
    )
    if rows.height == 0:
        return pl.DataFrame()
    out = rows.group_by(["k", "method"]).agg(
        pl.len().alias("n_seeds"),
        pl.col("selects_on").first(),
        *[pl.col(m).mean() for m in metrics],
    )
    return out.with_columns(pl.col("k").cast(pl.Int32)).sort(["k", _method_rank(), "method"])


def strict_cells(row: dict) -> list[str]:
    """One row of the strict table as text, in :data:`STRICT_COLUMNS`' order."""
    cells = []
    for column, _, spec in STRICT_COLUMNS:
        value = row.get(column)
        if column == "selects_on":
            cells.append(selects_text(value))
        elif not spec:
            cells.append(str(value))
        else:
            cells.append(NOT_MEASURED if value is None else format_value(value, "–", spec))
    return cells


def seed_rows(store: ResultStore, dataset: str) -> pl.DataFrame:
    """One row per (k, method, seed) of ``dataset``: the runs ``lcer report`` averages."""
    return store.query(
        "SELECT dataset, k, method, seed, alpha, lam, n_pairs, "
        + ", ".join(REPORT_METRICS + COST_METRICS)
        + ", run_id FROM seed_results WHERE dataset = ? ORDER BY k, method, seed",
        [dataset],
    ).with_columns(pl.col("k").cast(pl.Int32))


def _over_seeds(rows: pl.DataFrame) -> pl.DataFrame:
    """Mean and sample standard deviation of each metric over the seeds of a (k, method)."""
    metrics = REPORT_METRICS + COST_METRICS
    return rows.group_by(["dataset", "method", "k"]).agg(
        pl.len().alias("n_seeds"),
        pl.col("seed").sort().alias("seeds"),
        *[pl.col(m).mean().alias(m) for m in metrics],
        *[pl.col(m).std().alias(f"{m}_std") for m in metrics],
    )


def _method_rank() -> pl.Expr:
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return pl.col("method").replace_strict(order, default=len(order), return_dtype=pl.Int32)


def table2_report(store: ResultStore, dataset: str) -> pl.DataFrame:
    """Our ``table2`` rows of ``dataset`` joined with the paper's (``paper_*`` columns).

    Our metrics are means over the seeds present (``n_seeds``, ``seeds``; ``*_std`` the sample
    standard deviation, null for one seed) of the runs with ``table2``'s α, λ, steps and users.
    Every (k, method) of either side is a row, so methods the paper reports but we have not
    run show as nulls on our side. Raises MissingDataError when we have no finished run.
    """
    ours = store.table2(dataset)
    if ours.height == 0:
        from lcer_core.datasets.registry import get_spec

        get_spec(dataset)  # an unknown name: say so, with the known ones
        raise MissingDataError(
            f"no finished runs for dataset {dataset!r} in {store.path}: run `lcer run {dataset}` first"
        )
    ours = ours.with_columns(pl.col("k").cast(pl.Int32)).drop(REPORT_METRICS)
    # every metric is the mean over the seeds present (one seed: its value, std null)
    ours = ours.join(_over_seeds(seed_rows(store, dataset)), on=["dataset", "method", "k"])
    paper = paper_table2(dataset).rename({c: f"paper_{c}" for c in REPORT_METRICS})
    merged = ours.join(paper, on=["dataset", "method", "k"], how="full", coalesce=True)
    columns = [
        "dataset",
        "k",
        "method",
        "alpha",
        "lam",
        "n_pairs",
        "n_seeds",
        "seeds",
        *[c for m in REPORT_METRICS for c in (m, f"{m}_std", f"paper_{m}")],
        *[c for m in COST_METRICS for c in (m, f"{m}_std")],
        "run_id",
    ]
    return merged.sort(["k", _method_rank(), "method"]).select(columns)


def table3_report(store: ResultStore, dataset: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Our ``table3`` rows of ``dataset`` and the paper's Table 3 rows for it (often none)."""
    return store.table3(dataset), paper_table3(dataset)


def lam_report(store: ResultStore, dataset: str) -> pl.DataFrame:
    """LCER (the paper's subject) per (k, α, λ): means over seeds beside the paper's row, and
    which λ is closest.

    Runs with the α, steps and users of ``table2``'s LCER row; per seed the latest run.
    ``distance`` is the mean relative difference from the paper's Val, Len, PS, PN and F_NS;
    ``closest`` flags the smallest per k. Empty when LCER ran with one λ only.
    """
    runs = store.query(
        """
        WITH cfg AS (
            SELECT t.dataset, t.method, t.k, t.alpha, r.steps, r.n_users
            FROM table2 t JOIN run_results r ON r.run_id = t.run_id
            WHERE t.method = ? AND t.dataset = ?
        )
        SELECT * EXCLUDE (rn) FROM (
            SELECT rr.*, row_number() OVER (
                PARTITION BY rr.k, rr.lam, rr.seed ORDER BY rr.finished_at DESC, rr.run_id
            ) AS rn
            FROM run_results rr JOIN cfg c
              ON rr.dataset = c.dataset AND rr.k = c.k AND rr.method = c.method
             AND rr.alpha IS NOT DISTINCT FROM c.alpha AND rr.steps IS NOT DISTINCT FROM c.steps
             AND rr.n_users IS NOT DISTINCT FROM c.n_users
        ) WHERE rn = 1
        """,
        [SUBJECT_METHOD, dataset],
    )
    if runs.height == 0 or runs.group_by("k").agg(pl.col("lam").n_unique()).max()[0, 1] < 2:
        return pl.DataFrame()
    runs = runs.with_columns(pl.col("k").cast(pl.Int32))
    means = runs.group_by(["dataset", "k", "alpha", "lam"]).agg(
        pl.len().alias("n_seeds"),
        *[pl.col(m).mean().alias(m) for m in REPORT_METRICS],
        *[pl.col(m).std().alias(f"{m}_std") for m in REPORT_METRICS],
    )
    paper = paper_table2(dataset).filter(pl.col("method") == SUBJECT_METHOD).drop("method")
    paper = paper.rename({m: f"paper_{m}" for m in REPORT_METRICS})
    out = means.join(paper, on=["dataset", "k"], how="left")
    distance = pl.mean_horizontal(
        *[((pl.col(m) - pl.col(f"paper_{m}")) / pl.col(f"paper_{m}")).abs() for m in REPORT_METRICS]
    )
    out = out.with_columns(distance=distance)
    out = out.with_columns(closest=pl.col("distance") == pl.col("distance").min().over("k"))
    return out.sort(["k", "lam"])


def _settings(method: str, config: str | None) -> dict | None:
    """A stored configuration without its model-bound fields (e.g. an explainer network's key),
    to tell runs of the same settings on different models."""
    import json

    from lcer_core.explainers import METHODS

    try:
        fields = json.loads(config) if config else None
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return fields
    cls = METHODS.get(method)
    bound = cls.config_type.model_bound if cls is not None else ()
    return {k: v for k, v in fields.items() if k not in bound}


def paired_report(
    store: ResultStore, dataset: str, method_a: str, method_b: str, *, resamples: int = 2000
) -> pl.DataFrame:
    """Per K: the paired comparison of A with B (:func:`lcer_core.paired.paired_comparison`;
    strict metrics, bootstrap over users) on every model both explained with their ``table2``
    settings (model-bound fields aside) and the same users: each split seed's (or seed's) model adds its pairs, a
    user of one model being another unit than the same id of another. A K where they share no
    model is left out."""
    from lcer_core.errors import InvalidParameterError
    from lcer_core.paired import PAIR_COLUMNS, paired_comparison

    runs = store.query(
        """
        SELECT r.k, r.method, r.model_key, r.n_users, r.run_id, r.finished_at,
               r.config::VARCHAR AS config, tr.config::VARCHAR AS table2_config
        FROM runs r JOIN table2 t USING (dataset, method, k)
        JOIN runs tr ON tr.run_id = t.run_id
        WHERE r.dataset = ? AND r.method IN (?, ?) AND r.status = 'finished'
          AND r.kind = 'explain' AND r.seed = tr.seed
        ORDER BY r.finished_at
        """,
        [dataset, method_a, method_b],
    )
    same = [
        _settings(m, c) == _settings(m, t)
        for m, c, t in runs.select("method", "config", "table2_config").iter_rows()
    ]
    runs = (
        runs.filter(pl.Series(same, dtype=pl.Boolean))
        .unique(["k", "method", "model_key", "n_users"], keep="last")
        .sort(["k", "method", "model_key"])
    )
    out = []
    for k in sorted(set(runs["k"].to_list())):
        part = runs.filter(pl.col("k") == k)
        a_runs = part.filter(pl.col("method") == method_a)
        b_runs = part.filter(pl.col("method") == method_b)
        shared = a_runs.join(b_runs, on=["model_key", "n_users"], suffix="_b", nulls_equal=True)
        if shared.height == 0:
            continue
        rows_a, rows_b = [], []
        for unit, row in enumerate(shared.iter_rows(named=True)):
            for run_id, rows in ((row["run_id"], rows_a), (row["run_id_b"], rows_b)):
                frame = store.explanations(run_id).select(PAIR_COLUMNS)
                rows.append(frame.with_columns(uid=pl.col("uid") * len(shared) + unit))
        try:
            result = paired_comparison(pl.concat(rows_a), pl.concat(rows_b), resamples=resamples)
        except InvalidParameterError:
            continue
        out.append(
            {"dataset": dataset, "k": k, "a": method_a, "b": method_b, "models": shared.height,
             **result.as_dict()}
        )  # fmt: skip
    return pl.DataFrame(out)


#: The recommender of a run, in SQL, from its ``model_key``: the name before the key's ``-``
#: (``ease-3f2a...``), else the paper's (whose keys are bare hashes); as
#: :func:`lcer_core.models.recommender_of_key`. Derived, so no schema change and old homes agree.
RECOMMENDER_OF_KEY = (
    f"coalesce(nullif(regexp_extract(model_key, '^([a-z0-9_]+)-', 1), ''), '{PAPER_RECOMMENDER}')"
)


def recommender_table2(store: ResultStore, dataset: str) -> pl.DataFrame:
    """Table 2 per recommender: per (recommender, k, method) of ``dataset`` the latest finished
    explanation run of that recommender's models (``table2`` picks the latest of any model);
    the paper's recommender first. Empty when there is no run."""
    rec = RECOMMENDER_OF_KEY
    frame = store.query(
        f"""
        SELECT * EXCLUDE (rn) FROM (
            SELECT {rec} AS recommender, dataset, k, method, alpha, lam, n_users, n_pairs,
                   {", ".join(REPORT_METRICS)}, s_per_pair, model_key, run_id, finished_at,
                   row_number() OVER (
                       PARTITION BY dataset, {rec}, method, k
                       ORDER BY finished_at DESC NULLS LAST, evaluated_at DESC, run_id
                   ) AS rn
            FROM run_results WHERE dataset = ?
        ) WHERE rn = 1
        """,
        [dataset],
    )
    if frame.height == 0:
        return frame
    first = (pl.col("recommender") != PAPER_RECOMMENDER).cast(pl.Int32)
    return frame.with_columns(pl.col("k").cast(pl.Int32)).sort(
        [first, "recommender", "k", _method_rank(), "method"]
    )
