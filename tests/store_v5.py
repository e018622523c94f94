"""The results database exactly as schema version 5 (lcer before issue #16) left it: a frozen copy
of that version's views, and its way of writing a run, to build such a database in a test."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from lcer_core.store.migrations import apply_migrations

# The views of version 5, verbatim (lcer_core/store/views.py at commit e0d35e4, the f-strings
# resolved), in the order that version created them.
V5_VIEWS: dict[str, str] = {
    "latest_metrics": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT m.*, row_number() OVER (PARTITION BY run_id ORDER BY evaluated_at DESC) AS rn
            FROM metrics m
        ) WHERE rn = 1
    """,
    "run_results": """
        SELECT r.run_id, r.dataset, r.method, r.k, r.alpha, r.lam, r.steps, r.seed, r.n_users,
               r.model_key, r.device, r.started_at, r.finished_at, r.mlflow_run_id,
               m.n_pairs,
               CASE WHEN r.method = 'fia' THEN NULL ELSE m.val_pct END AS val_pct,
               m.len, m.ps_pct, m.pn_pct, m.fns_pct, m.evaluated_at, m.kind AS metrics_kind,
               c.calls_per_pair, c.s_per_pair
        FROM runs r JOIN latest_metrics m ON m.run_id = r.run_id
        LEFT JOIN (
            -- what the explanation cost, from its own metrics row (re-evaluations cost nothing)
            SELECT run_id, max(calls_per_pair) AS calls_per_pair, max(s_per_pair) AS s_per_pair
            FROM metrics WHERE kind = 'explain' GROUP BY run_id
        ) c ON c.run_id = r.run_id
        WHERE r.status = 'finished' AND r.kind = 'explain'
    """,
    "table2": """
        SELECT dataset, method, k, alpha, lam, n_pairs, val_pct, len, ps_pct, pn_pct, fns_pct,
               run_id, finished_at
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY dataset, method, k
                ORDER BY finished_at DESC NULLS LAST, evaluated_at DESC, run_id
            ) AS rn
            FROM run_results
        ) WHERE rn = 1
        ORDER BY dataset, k, CASE method WHEN 'fia' THEN 0 WHEN 'kaffes' THEN 1 WHEN 'accent' THEN 2 WHEN 'lcer' THEN 3 ELSE 4 END, method
    """,
    "table3": """
        WITH base AS (
            SELECT t.*, r.model_key, r.n_users
            FROM table2 t JOIN run_results r ON r.run_id = t.run_id
            WHERE t.method NOT IN ('lcer', 'fia')
        ),
        lcer AS (
            SELECT * EXCLUDE (rn) FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY dataset, k, alpha, lam, model_key, n_users
                    ORDER BY finished_at DESC NULLS LAST, run_id
                ) AS rn
                FROM run_results WHERE method = 'lcer'
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
             AND abs(l.len - b.len) <= 0.05 + 1e-9
        )
        SELECT * EXCLUDE (rn) FROM matched WHERE rn = 1
        ORDER BY dataset, k, CASE baseline WHEN 'fia' THEN 0 WHEN 'kaffes' THEN 1
                                           WHEN 'accent' THEN 2 ELSE 3 END, baseline
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
}

#: The columns of ``runs`` that version 5 wrote (besides ``params_json``).
V5_RUN_COLUMNS = (
    "run_id",
    "dataset",
    "method",
    "k",
    "alpha",
    "lam",
    "steps",
    "seed",
    "n_users",
    "model_key",
    "device",
    "status",
    "started_at",
    "finished_at",
    "mlflow_run_id",
    "kind",
)
_RECS = ("uid", "raw_user", "rank", "sid", "raw_item", "score")
_EXPL = (
    "uid",
    "raw_user",
    "sid",
    "raw_item",
    "rank",
    "found",
    "ce_items",
    "ce_raw",
    "ce_importance",
    "length",
    "sufficient",
    "necessary",
    "rank_after",
)
_METRICS = (
    "n_pairs",
    "val_pct",
    "len",
    "ps_pct",
    "pn_pct",
    "fns_pct",
    "calls_per_pair",
    "s_per_pair",
)


def create_v5(con: duckdb.DuckDBPyConnection) -> None:
    """Schema version 5 with its views, as that version's ``lcer`` created it."""
    assert apply_migrations(con, upto=5) == 0
    for name, sql in V5_VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def write_v5_run(
    con: duckdb.DuckDBPyConnection,
    run: Mapping[str, Any],
    recommendations: pl.DataFrame,
    explanations: pl.DataFrame,
    metrics: Mapping[str, Any],
) -> None:
    """Store a finished run as version 5's ``ResultStore.write_run`` did (keys outside its
    ``runs`` columns, ``params`` among them, went to ``params_json``)."""
    params = dict(run.get("params") or {})
    params.update({k: v for k, v in run.items() if k not in V5_RUN_COLUMNS and k != "params"})
    row = {c: run.get(c) for c in V5_RUN_COLUMNS}
    row.update(status="finished", kind="explain", params_json=json.dumps(params, sort_keys=True))
    row["finished_at"] = row["finished_at"] or datetime(2026, 1, 1)
    columns = list(row)
    con.execute(
        f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        list(row.values()),
    )
    ce_len = pl.col("ce_items").list.len().cast(pl.Int32)
    frames = {
        "recommendations": (_RECS, recommendations.select(_RECS)),
        "explanations": (_EXPL, explanations.with_columns(length=ce_len, found=ce_len > 0)),
    }
    for table, (columns, frame) in frames.items():
        con.register("_v5_rows", frame.select(columns).to_arrow())
        names = ", ".join(columns)
        con.execute(
            f"INSERT INTO {table} (run_id, {names}) SELECT ?, {names} FROM _v5_rows",
            [row["run_id"]],
        )
        con.unregister("_v5_rows")
    values = [metrics.get(m) for m in _METRICS]
    con.execute(
        "INSERT INTO metrics (run_id, dataset, method, k, "
        f"{', '.join(_METRICS)}, evaluated_at, kind) "
        f"VALUES (?, ?, ?, ?, {', '.join('?' for _ in _METRICS)}, ?, 'explain')",
        [row["run_id"], row["dataset"], row["method"], row["k"], *values, row["finished_at"]],
    )
