"""The columns of the frames one explanation run produces: its recommendations and explanations.

Core facts (polars only): shard files hold these columns (:mod:`lcer_core.shards`), and the
results database stores them as they are (:mod:`lcer_core.store.schema` re-exports them).
Each spec maps a column to ``(polars dtype, required)``.
"""

from __future__ import annotations

import polars as pl

__all__ = ["RECOMMENDATION_COLUMNS", "EXPLANATION_COLUMNS"]

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
