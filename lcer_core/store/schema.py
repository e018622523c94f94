"""The tables of the results database, and the shape of the frames written into them.

Percentages are stored as 0–100, lengths in items, timestamps as UTC without a zone.
Child tables (``recommendations``, ``explanations``) carry no key of their own: a run's
rows are always replaced as a whole (delete + insert in one transaction), which DuckDB
handles better than updates of indexed columns.
"""

from __future__ import annotations

import polars as pl

from lcer_core.columns import COST_COLUMNS, EXPLANATION_COLUMNS, RECOMMENDATION_COLUMNS, STRICT_KEYS

__all__ = [
    "TABLES",
    "STATUSES",
    "KINDS",
    "METRIC_KEYS",
    "COST_KEYS",
    "STRICT_KEYS",
    "RUN_COLUMNS",
    "RECOMMENDATION_COLUMNS",
    "SHARD_COLUMNS",
    "EXPLANATION_COLUMNS",
    "ITEM_COLUMNS",
]

#: Every table of the schema (views are in :mod:`lcer_core.store.views`).
TABLES = (
    "schema_version",
    "datasets",
    "items",
    "models",
    "runs",
    "recommendations",
    "explanations",
    "metrics",
    "shards",
)

#: Life cycle of a run.
STATUSES = ("running", "finished", "failed")
#: What produced a run or a metrics row: the explanation itself, or a later re-evaluation.
KINDS = ("explain", "reevaluate")
#: The metrics of one evaluation, as in Table 2 of the paper (``len`` in items, the rest 0–100).
METRIC_KEYS = ("n_pairs", "val_pct", "len", "ps_pct", "pn_pct", "fns_pct")
#: What an explanation run cost, per pair (optional; see :data:`lcer_core.columns.COST_COLUMNS`):
#: recommender inputs scored, seconds, whole-catalogue and target-only scorings, gradient steps;
#: and ``threads``, the torch threads it ran on (on the run's ``device``).
COST_KEYS = (*COST_COLUMNS, "threads")

#: Columns of ``runs`` a caller may give (besides ``params``, a dict stored as JSON). ``config``
#: is the explainer's whole configuration (a dict, ``Explainer.dump_config()``, stored as JSON),
#: ``reports_validity`` whether the method reports validity (FIA does not: ``val_pct`` NULL),
#: ``plugins`` the explainer plugins loaded by the process that wrote the run (JSON list of
#: ``{"name", "distribution", "version"}``; ``[]`` for none; NULL for runs stored before v7).
RUN_COLUMNS = (
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
    "config",
    "reports_validity",
    "selects_on",
    "plugins",
)

# Frame specs: column -> (polars dtype, required).
ITEM_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "sid": (pl.Int64(), True),
    "raw_id": (pl.String(), False),
    "title": (pl.String(), False),
    "genres": (pl.String(), False),
    "popularity": (pl.Int64(), False),
}

# The first schema (version 1). Later versions change it only through migrations.
V1_DDL = (
    """
    CREATE TABLE IF NOT EXISTS datasets (
        dataset VARCHAR PRIMARY KEY,
        users BIGINT,
        items BIGINT,
        interactions BIGINT,
        density_pct DOUBLE,
        train_users BIGINT,
        val_users BIGINT,
        test_users BIGINT,
        stats_json VARCHAR,
        prepared_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS items (
        dataset VARCHAR NOT NULL,
        sid BIGINT NOT NULL,
        raw_id VARCHAR,
        title VARCHAR,
        genres VARCHAR,
        popularity BIGINT,
        PRIMARY KEY (dataset, sid)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS models (
        model_key VARCHAR PRIMARY KEY,
        dataset VARCHAR NOT NULL,
        version VARCHAR,
        params_json VARCHAR,
        ndcg100 DOUBLE,
        recall20 DOUBLE,
        recall50 DOUBLE,
        path VARCHAR,
        mlflow_model_uri VARCHAR,
        created_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY,
        dataset VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        k INTEGER NOT NULL,
        alpha DOUBLE,
        lam DOUBLE,
        steps INTEGER,
        seed INTEGER,
        n_users INTEGER,
        model_key VARCHAR,
        device VARCHAR,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        mlflow_run_id VARCHAR,
        params_json VARCHAR
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS recommendations (
        run_id VARCHAR NOT NULL,
        uid BIGINT NOT NULL,
        raw_user VARCHAR,
        rank INTEGER NOT NULL,
        sid BIGINT NOT NULL,
        raw_item VARCHAR,
        score DOUBLE
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS explanations (
        run_id VARCHAR NOT NULL,
        uid BIGINT NOT NULL,
        raw_user VARCHAR,
        sid BIGINT NOT NULL,
        raw_item VARCHAR,
        rank INTEGER,
        found BOOLEAN NOT NULL,
        ce_items INTEGER[],
        ce_raw VARCHAR[],
        ce_importance DOUBLE[],
        length INTEGER NOT NULL,
        sufficient BOOLEAN,
        necessary BOOLEAN
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS metrics (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        k INTEGER NOT NULL,
        n_pairs BIGINT,
        val_pct DOUBLE,
        len DOUBLE,
        ps_pct DOUBLE,
        pn_pct DOUBLE,
        fns_pct DOUBLE,
        evaluated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, evaluated_at)
    )
    """,
)

# Version 2: re-evaluation history (what produced a run / a metrics row) and the rank of the
# recommended item once its CE is removed.
V2_DDL = (
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'explain'",
    "UPDATE runs SET kind = 'explain' WHERE kind IS NULL",
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'explain'",
    "UPDATE metrics SET kind = 'explain' WHERE kind IS NULL",
    "ALTER TABLE explanations ADD COLUMN IF NOT EXISTS rank_after INTEGER",
)

# Version 3: which exact bytes a dataset was prepared from (the sha256 of the downloaded
# archive, and of each member read, as JSON), so every number traces to them.
V3_DDL = (
    "ALTER TABLE datasets ADD COLUMN IF NOT EXISTS archive_sha256 VARCHAR",
    "ALTER TABLE datasets ADD COLUMN IF NOT EXISTS source_json VARCHAR",
)

# Version 4: what a run cost per pair (recommender inputs scored, seconds of explanation).
V4_DDL = (
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS calls_per_pair DOUBLE",
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS s_per_pair DOUBLE",
)

# Version 5: where each explanation shard of a run ran (a Ray node id or a host name, and the
# torch device), replaced with the run's rows.
V5_DDL = (
    """
    CREATE TABLE IF NOT EXISTS shards (
        run_id VARCHAR NOT NULL,
        shard INTEGER NOT NULL,
        node VARCHAR,
        device VARCHAR,
        users INTEGER,
        pairs INTEGER,
        PRIMARY KEY (run_id, shard)
    )
    """,
)

# Version 6: each run's whole explainer configuration (JSON: {"method": ..., every field}) and
# whether its method reports validity, so that the views need no method's name. Existing rows
# are filled by :mod:`lcer_core.store.migrations` (from params_json's "explainer", and from the
# registry of explainers).
V6_DDL = (
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS config JSON",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS reports_validity BOOLEAN",
)

# Version 7: the explainer plugins loaded when each run was stored (JSON list of
# {"name", "distribution", "version"}); NULL for the runs stored before.
V7_DDL = ("ALTER TABLE runs ADD COLUMN IF NOT EXISTS plugins JSON",)

# Version 8: the strict comparison. Per metrics row, the strict metrics over all pairs
# (a pair without a set fails) and the cost counted the same way for every method; per run,
# the evaluation tests its method queried while choosing its answers (``selects_on``, a list
# of "topk", "sufficiency"; empty for none). Existing rows are filled where the stored
# explanations allow it (:mod:`lcer_core.store.migrations`); the cost stays NULL (not measured).
V8_DDL = (
    *(f"ALTER TABLE metrics ADD COLUMN IF NOT EXISTS {key} DOUBLE" for key in STRICT_KEYS),
    *(
        f"ALTER TABLE metrics ADD COLUMN IF NOT EXISTS {key} DOUBLE"
        for key in COST_COLUMNS
        if key not in ("calls_per_pair", "s_per_pair")
    ),
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS threads INTEGER",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS selects_on VARCHAR[]",
)

#: Columns of ``shards`` (besides ``run_id``), as :meth:`ResultStore.write_run` takes them.
SHARD_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "shard": (pl.Int32(), True),
    "node": (pl.String(), False),
    "device": (pl.String(), False),
    "users": (pl.Int32(), False),
    "pairs": (pl.Int32(), False),
}
