"""The views of the results database: Table 2, Table 3 and the popularity analysis of section 4.3.

- ``table2``: one row per (dataset, method, k), the latest finished explanation run and its
  latest metrics: ``dataset, method, k, alpha, lam, n_pairs, val_pct, len, ps_pct, pn_pct,
  fns_pct, run_id, finished_at`` (percentages 0–100; ``val_pct`` NULL for a method that does
  not report validity, ``runs.reports_validity`` false: FIA, as in the paper).
- ``table3``: per (dataset, k, CE baseline) of ``table2`` (every method that reports validity
  but the paper's subject, LCER: :data:`lcer_core.paper.SUBJECT_METHOD`), the LCER run (any
  α/λ, same model and number of users) whose average length is closest to the baseline's,
  within 0.05, with both methods' Val/PS/PN/F_NS side by side.
- ``run_results``: every finished explanation run with its latest metrics (the sweep grid)
  and what it cost per pair (``calls_per_pair``: recommender inputs scored; ``s_per_pair``).
  The run's whole configuration is in ``runs.config`` (JSON, e.g. ``config->>'lr'``).
- ``strict``: the strict comparison, one row per finished explanation run: ``dataset, method,
  k, seed, alpha, lam, steps, n_users, n_pairs``, the strict metrics over all pairs (a pair
  without a set is a failure: ``strict_val_pct`` the share whose set really drops the item out
  of the re-ranked top-K, equal to ``strict_pn_pct`` by definition; ``strict_len`` over those
  verified sets; ``strict_ps_pct, strict_pn_pct, strict_fns_pct``), the cost per pair counted
  at the recommender seam (``s_per_pair``, ``catalogue_per_pair``: whole-catalogue scorings,
  ``target_per_pair``: target-only scorings, ``grad_steps_per_pair``: gradient steps,
  ``calls_per_pair``: inputs scored), ``device, threads``, ``selects_on`` (the evaluation tests
  the method chose its answers with: ``'topk'``, ``'sufficiency'``; ``[]`` for none; NULL for a
  method this lcer does not know), ``run_id, finished_at``. NULL where not measured (runs
  stored before these columns: no cost; re-evaluated without the strict metrics).
- ``seed_results``: per (dataset, method, k) of ``table2`` and seed, the latest run with
  ``table2``'s α, λ, steps and users: the rows ``lcer report`` averages over seeds.
- ``latest_metrics``: the newest metrics row of each run (re-evaluations keep their history
  in ``metrics``).
- ``explanation_items``: one row per item of each CE (``sid`` the CE item, ``rec_sid`` the
  recommended item it explains, ``importance`` its importance in that CE).
- ``item_explanations``: per (dataset, method, k, item) of the runs in ``table2``: the item's
  ``popularity``, ``explanation_count`` (CEs it belongs to), ``mean_importance`` (over those
  CEs) and ``recommendation_count`` (times it is in a top-K list). Every item of the dataset
  appears, with zero counts where it never does.

Section 4.3 with one query each::

    -- which items appear most often in CEs, with their popularity and mean importance
    SELECT sid, title, popularity, explanation_count, mean_importance
    FROM item_explanations
    WHERE dataset = 'ml-100k' AND method = 'lcer' AND k = 5
    ORDER BY explanation_count DESC, popularity DESC LIMIT 20;

    -- how explanation count, mean importance and recommendation count relate to popularity
    SELECT dataset, method, k,
           corr(explanation_count, popularity) AS r_explanations,
           corr(mean_importance, popularity) AS r_importance,
           corr(recommendation_count, popularity) AS r_recommendations
    FROM item_explanations GROUP BY ALL ORDER BY ALL;

    -- how often each item is recommended
    SELECT sid, title, popularity, recommendation_count
    FROM item_explanations
    WHERE dataset = 'ml-100k' AND method = 'lcer' AND k = 5
    ORDER BY recommendation_count DESC;
"""

from __future__ import annotations

import duckdb

from lcer_core.paper import SUBJECT_METHOD, TABLE_ORDER

__all__ = [
    "VIEWS",
    "create_views",
    "TABLE2_COLUMNS",
    "TABLE3_COLUMNS",
    "STRICT_COLUMNS",
    "METHOD_ORDER",
]

#: The columns of ``table2``, in order: a contract that users' queries and our checks rely on.
TABLE2_COLUMNS = (
    "dataset",
    "method",
    "k",
    "alpha",
    "lam",
    "n_pairs",
    "val_pct",
    "len",
    "ps_pct",
    "pn_pct",
    "fns_pct",
    "run_id",
    "finished_at",
)

#: The columns of ``strict``, in order.
STRICT_COLUMNS = (
    "dataset",
    "method",
    "k",
    "seed",
    "alpha",
    "lam",
    "steps",
    "n_users",
    "n_pairs",
    "strict_val_pct",
    "strict_len",
    "strict_ps_pct",
    "strict_pn_pct",
    "strict_fns_pct",
    "s_per_pair",
    "catalogue_per_pair",
    "target_per_pair",
    "grad_steps_per_pair",
    "calls_per_pair",
    "device",
    "threads",
    "selects_on",
    "run_id",
    "finished_at",
)

TABLE3_COLUMNS = (
    "dataset",
    "k",
    "baseline",
    "baseline_len",
    "lcer_len",
    "alpha",
    "lam",
    "baseline_val_pct",
    "lcer_val_pct",
    "baseline_ps_pct",
    "lcer_ps_pct",
    "baseline_pn_pct",
    "lcer_pn_pct",
    "baseline_fns_pct",
    "lcer_fns_pct",
    "baseline_run_id",
    "lcer_run_id",
)

#: Row order of the paper's tables (:data:`lcer_core.paper.TABLE_ORDER`).
METHOD_ORDER = TABLE_ORDER


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (views take no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _order(column: str) -> str:
    """An SQL expression ranking ``column`` (a method name) in the paper's row order."""
    cases = " ".join(f"WHEN {_literal(m)} THEN {i}" for i, m in enumerate(METHOD_ORDER))
    return f"CASE {column} {cases} ELSE {len(METHOD_ORDER)} END"


_SUBJECT = _literal(SUBJECT_METHOD)

# Length tolerance of Table 3 (the paper: "when their lengths are close").
_LEN_TOLERANCE = 0.05

VIEWS: dict[str, str] = {
    "latest_metrics": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT m.*, row_number() OVER (PARTITION BY run_id ORDER BY evaluated_at DESC) AS rn
            FROM metrics m
        ) WHERE rn = 1
    """,
    # val_pct NULL where the method does not report validity; a method this lcer does not
    # know (reports_validity NULL) keeps its value, as the views did before the column existed
    "run_results": """
        SELECT r.run_id, r.dataset, r.method, r.k, r.alpha, r.lam, r.steps, r.seed, r.n_users,
               r.model_key, r.device, r.started_at, r.finished_at, r.mlflow_run_id,
               m.n_pairs,
               CASE WHEN NOT coalesce(r.reports_validity, true) THEN NULL
                    ELSE m.val_pct END AS val_pct,
               m.len, m.ps_pct, m.pn_pct, m.fns_pct, m.evaluated_at, m.kind AS metrics_kind,
               c.calls_per_pair, c.s_per_pair,
               m.strict_val_pct, m.strict_len, m.strict_ps_pct, m.strict_pn_pct, m.strict_fns_pct,
               c.catalogue_per_pair, c.target_per_pair, c.grad_steps_per_pair, c.threads,
               r.selects_on
        FROM runs r JOIN latest_metrics m ON m.run_id = r.run_id
        LEFT JOIN (
            -- what the explanation cost, from its own metrics row (re-evaluations cost nothing)
            SELECT run_id, max(calls_per_pair) AS calls_per_pair, max(s_per_pair) AS s_per_pair,
                   max(catalogue_per_pair) AS catalogue_per_pair,
                   max(target_per_pair) AS target_per_pair,
                   max(grad_steps_per_pair) AS grad_steps_per_pair, max(threads) AS threads
            FROM metrics WHERE kind = 'explain' GROUP BY run_id
        ) c ON c.run_id = r.run_id
        WHERE r.status = 'finished' AND r.kind = 'explain'
    """,
    "strict": f"""
        SELECT dataset, method, k, seed, alpha, lam, steps, n_users, n_pairs,
               strict_val_pct, strict_len, strict_ps_pct, strict_pn_pct, strict_fns_pct,
               s_per_pair, catalogue_per_pair, target_per_pair, grad_steps_per_pair,
               calls_per_pair, device, threads, selects_on, run_id, finished_at
        FROM run_results
        ORDER BY dataset, k, {_order("method")}, method, finished_at, run_id
    """,
    "seed_results": """
        -- per (dataset, method, k) of table2 and seed: the latest finished run with the same
        -- alpha, lam, steps and users as table2's (what lcer report averages over seeds)
        WITH cfg AS (
            SELECT t.dataset, t.method, t.k, t.alpha, t.lam, r.steps, r.n_users
            FROM table2 t JOIN run_results r ON r.run_id = t.run_id
        ),
        same AS (
            SELECT rr.* FROM run_results rr JOIN cfg c
              ON rr.dataset = c.dataset AND rr.method = c.method AND rr.k = c.k
             AND rr.alpha IS NOT DISTINCT FROM c.alpha AND rr.lam IS NOT DISTINCT FROM c.lam
             AND rr.steps IS NOT DISTINCT FROM c.steps
             AND rr.n_users IS NOT DISTINCT FROM c.n_users
        )
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY dataset, method, k, seed
                ORDER BY finished_at DESC NULLS LAST, evaluated_at DESC, run_id
            ) AS rn
            FROM same
        ) WHERE rn = 1
    """,
    "table2": f"""
        SELECT dataset, method, k, alpha, lam, n_pairs, val_pct, len, ps_pct, pn_pct, fns_pct,
               run_id, finished_at
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY dataset, method, k
                ORDER BY finished_at DESC NULLS LAST, evaluated_at DESC, run_id
            ) AS rn
            FROM run_results
        ) WHERE rn = 1
        ORDER BY dataset, k, {_order("method")}, method
    """,
    "table3": f"""
        WITH base AS (
            -- the baselines: methods that report validity (CEs), except the subject
            SELECT t.*, r.model_key, r.n_users
            FROM table2 t JOIN runs r ON r.run_id = t.run_id
            WHERE t.method <> {_SUBJECT} AND coalesce(r.reports_validity, true)
        ),
        lcer AS (
            SELECT * EXCLUDE (rn) FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY dataset, k, alpha, lam, model_key, n_users
                    ORDER BY finished_at DESC NULLS LAST, run_id
                ) AS rn
                FROM run_results WHERE method = {_SUBJECT}
            ) WHERE rn = 1
        ),
        matched AS (
            SELECT b.dataset, b.k, b.method AS baseline, b.len AS baseline_len, l.len AS lcer_len,
                   l.alpha, l.lam,
                   b.val_pct AS baseline_val_pct, l.val_pct AS lcer_val_pct,
                   b.ps_pct AS baseline_ps_pct, l.ps_pct AS lcer_ps_pct,
                   b.pn_pct AS baseline_pn_pct, l.pn_pct AS lcer_pn_pct,
                   b.fns_pct AS baseline_fns_pct, l.fns_pct AS lcer_fns_pct,
                   b.run_id AS baseline_run_id, l.run_id AS lcer_run_id,
                   row_number() OVER (
                       PARTITION BY b.dataset, b.k, b.method
                       ORDER BY abs(l.len - b.len), l.fns_pct DESC NULLS LAST, l.run_id
                   ) AS rn
            FROM base b JOIN lcer l
              ON l.dataset = b.dataset AND l.k = b.k
             AND l.model_key IS NOT DISTINCT FROM b.model_key
             AND l.n_users IS NOT DISTINCT FROM b.n_users
             AND abs(l.len - b.len) <= {_LEN_TOLERANCE} + 1e-9
        )
        SELECT * EXCLUDE (rn) FROM matched WHERE rn = 1
        ORDER BY dataset, k, {_order("baseline")}, baseline
    """,
    "explanation_items": """
        SELECT run_id, uid, raw_user, sid AS rec_sid, rank,
               unnest(ce_items) AS sid, unnest(ce_importance) AS importance
        FROM explanations
        WHERE found AND len(ce_items) > 0
    """,
    "item_explanations": """
        WITH sel AS (SELECT run_id, dataset, method, k FROM table2),
        ce AS (
            SELECT x.run_id, x.sid, count(*) AS explanation_count,
                   avg(x.importance) AS mean_importance
            FROM explanation_items x SEMI JOIN sel s ON s.run_id = x.run_id
            GROUP BY ALL
        ),
        rec AS (
            SELECT r.run_id, r.sid, count(*) AS recommendation_count
            FROM recommendations r JOIN sel s ON s.run_id = r.run_id
            WHERE r.rank <= s.k
            GROUP BY ALL
        ),
        universe AS (
            SELECT s.run_id, i.sid FROM sel s JOIN items i ON i.dataset = s.dataset
            UNION SELECT run_id, sid FROM ce
            UNION SELECT run_id, sid FROM rec
        )
        SELECT s.dataset, s.method, s.k, u.sid, i.raw_id, i.title, i.genres, i.popularity,
               coalesce(ce.explanation_count, 0) AS explanation_count,
               ce.mean_importance,
               coalesce(rec.recommendation_count, 0) AS recommendation_count,
               s.run_id
        FROM universe u
        JOIN sel s ON s.run_id = u.run_id
        LEFT JOIN items i ON i.dataset = s.dataset AND i.sid = u.sid
        LEFT JOIN ce ON ce.run_id = u.run_id AND ce.sid = u.sid
        LEFT JOIN rec ON rec.run_id = u.run_id AND rec.sid = u.sid
    """,
}

# seed_results reads table2: after it
VIEWS["seed_results"] = VIEWS.pop("seed_results")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every view; views depend on views, so the order of :data:`VIEWS` matters."""
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
