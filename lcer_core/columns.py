"""The columns of the frames one explanation run produces: its recommendations and explanations.

Core facts (polars only): shard files hold these columns (:mod:`lcer_core.shards`), and the
results database stores them as they are (:mod:`lcer_core.store.schema` re-exports them).
Each spec maps a column to ``(polars dtype, required)``.
"""

from __future__ import annotations

import polars as pl

__all__ = ["RECOMMENDATION_COLUMNS", "EXPLANATION_COLUMNS", "COST_COLUMNS", "STRICT_KEYS"]

#: The strict metrics over all pairs (:func:`lcer_core.metrics.strict_summary`), as stored
#: (``metrics`` columns) and logged (MLflow metrics of the same names).
STRICT_KEYS = ("strict_val_pct", "strict_len", "strict_ps_pct", "strict_pn_pct", "strict_fns_pct")

#: What an explanation run cost per pair, as stored (metrics column) from the shard files'
#: per-pair columns (:func:`lcer_core.shards.explain_users`, counted at the recommender seam
#: by :class:`~lcer_core.recommender.counting.CountingRecommender`): recommender inputs
#: scored, whole-catalogue scorings (a row of M scores = 1), target-only scorings (one item's
#: score = 1), gradient steps (one pair's vector-Jacobian product = 1) and seconds.
COST_COLUMNS: dict[str, str] = {
    "calls_per_pair": "forward_calls",
    "s_per_pair": "explain_s",
    "catalogue_per_pair": "catalogue_calls",
    "target_per_pair": "target_calls",
    "grad_steps_per_pair": "grad_steps",
}

#: One row per user × rank of the top-K list.
RECOMMENDATION_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "uid": (pl.Int64(), True),
    "raw_user": (pl.String(), False),
    "rank": (pl.Int32(), True),
    "sid": (pl.Int64(), True),
    "raw_item": (pl.String(), False),
    "score": (pl.Float64(), False),
}

#: One row per user × recommended item: the CE's items, their importance and what removing them did.
EXPLANATION_COLUMNS: dict[str, tuple[pl.DataType, bool]] = {
    "uid": (pl.Int64(), True),
    "raw_user": (pl.String(), False),
    "sid": (pl.Int64(), True),
    "raw_item": (pl.String(), False),
    "rank": (pl.Int32(), False),
    "found": (pl.Boolean(), False),
    "ce_items": (pl.List(pl.Int32()), True),
    "ce_raw": (pl.List(pl.String()), False),
    "ce_importance": (pl.List(pl.Float64()), False),
    "length": (pl.Int32(), False),
    "sufficient": (pl.Boolean(), False),
    "necessary": (pl.Boolean(), False),
    "rank_after": (pl.Int32(), False),
}
