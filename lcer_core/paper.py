"""The numbers the paper reports (Tables 2 and 3, section 4.1), as data to compare with.

Datasets use this project's registry names (``ml-100k``, ``ml-1m``, ``alishop``,
``epinions``) and methods its explainer names (``fia``, ``kaffes``, ``accent``, ``lcer``).
Percentages are 0–100; ``val_pct`` is None for FIA ("–" in the paper).

Besides the numbers, the facts the reports read their structure from (so that no SQL and no
report names a method): the paper's row order (:data:`TABLE_ORDER`) and the method it studies
(:data:`SUBJECT_METHOD`). A *baseline* of Table 3 is a run of a method that reports validity
(``runs.reports_validity``; FIA's explanations are not counterfactuals) and is not the subject.
"""

from __future__ import annotations

import polars as pl

__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE3",
    "PAPER_LCER_PARAMS",
    "PAPER_ALPHAS",
    "PAPER_LAMS",
    "PAPER_RECOMMENDER",
    "SUBJECT_METHOD",
    "TABLE_ORDER",
    "paper_table2",
    "paper_table3",
]

_T2_COLUMNS = ("dataset", "method", "k", "val_pct", "len", "ps_pct", "pn_pct", "fns_pct")

#: Table 2: (dataset, method, k, val_pct, len, ps_pct, pn_pct, fns_pct).
PAPER_TABLE2: tuple[tuple[str, str, int, float | None, float, float, float, float], ...] = (
    ("ml-100k", "fia", 5, None, 1.000, 35.54, 27.47, 30.61),
    ("ml-100k", "kaffes", 5, 68.0, 1.691, 47.06, 36.76, 41.28),
    ("ml-100k", "accent", 5, 87.8, 3.431, 39.64, 60.82, 47.99),
    ("ml-100k", "lcer", 5, 100.0, 4.461, 55.56, 61.41, 58.34),
    ("ml-100k", "fia", 10, None, 1.000, 42.52, 23.73, 30.47),
    ("ml-100k", "kaffes", 10, 65.8, 1.948, 55.92, 39.36, 46.20),
    ("ml-100k", "accent", 10, 86.0, 3.857, 47.67, 48.84, 48.25),
    ("ml-100k", "lcer", 10, 88.5, 3.361, 66.63, 51.89, 58.34),
    ("ml-1m", "fia", 5, None, 1.000, 25.80, 34.40, 29.49),
    ("ml-1m", "kaffes", 5, 56.8, 1.482, 41.20, 57.04, 47.84),
    ("ml-1m", "accent", 5, 97.0, 3.303, 34.43, 58.35, 43.31),
    ("ml-1m", "lcer", 5, 97.2, 3.685, 59.67, 64.20, 61.85),
    ("ml-1m", "fia", 10, None, 1.000, 34.10, 28.60, 31.11),
    ("ml-1m", "kaffes", 10, 56.3, 1.622, 49.02, 58.97, 53.54),
    ("ml-1m", "accent", 10, 96.2, 3.418, 45.43, 44.59, 45.01),
    ("ml-1m", "lcer", 10, 96.8, 4.092, 70.04, 63.84, 66.80),
    ("alishop", "fia", 5, None, 1.000, 9.80, 33.40, 15.15),
    ("alishop", "kaffes", 5, 60.8, 1.457, 19.08, 57.24, 28.62),
    ("alishop", "accent", 5, 99.2, 3.028, 15.93, 57.46, 24.94),
    ("alishop", "lcer", 5, 99.6, 3.135, 31.53, 64.26, 42.29),
    ("alishop", "fia", 10, None, 1.000, 15.30, 28.80, 19.98),
    ("alishop", "kaffes", 10, 59.1, 1.387, 25.72, 52.45, 34.51),
    ("alishop", "accent", 10, 98.1, 3.060, 23.45, 45.36, 30.91),
    ("alishop", "lcer", 10, 99.0, 3.021, 42.12, 55.45, 47.88),
    ("epinions", "fia", 5, None, 1.000, 32.26, 58.06, 41.47),
    ("epinions", "kaffes", 5, 58.2, 1.306, 40.21, 58.08, 47.52),
    ("epinions", "accent", 5, 58.4, 1.527, 38.36, 71.92, 50.03),
    ("epinions", "lcer", 5, 100.0, 2.074, 49.53, 73.23, 58.97),
    ("epinions", "fia", 10, None, 1.000, 33.55, 50.00, 40.15),
    ("epinions", "kaffes", 10, 58.1, 1.361, 45.27, 52.67, 48.69),
    ("epinions", "accent", 10, 57.8, 1.528, 36.85, 60.03, 45.67),
    ("epinions", "lcer", 10, 99.5, 1.551, 53.33, 62.60, 57.60),
)

#: The paper's row order of its tables (Table 2 lists its methods in this order).
TABLE_ORDER: tuple[str, ...] = tuple(dict.fromkeys(row[1] for row in PAPER_TABLE2))

#: The recommender the paper explains (section 3.2.1): Mult-VAE, by its registry name.
PAPER_RECOMMENDER = "multvae"

#: The method the paper proposes and studies: Table 3 sets each baseline beside its runs of about
#: the baseline's length, the α/λ figures and the λ study sweep it, the report explains with it.
SUBJECT_METHOD = "lcer"

_T3_COLUMNS = (
    "dataset",
    "k",
    "baseline",
    "baseline_val_pct",
    "baseline_len",
    "baseline_ps_pct",
    "baseline_pn_pct",
    "baseline_fns_pct",
    "lcer_val_pct",
    "lcer_len",
    "lcer_ps_pct",
    "lcer_pn_pct",
    "lcer_fns_pct",
)

#: Table 3 (Epinions, top-5): a baseline and the LCER run of about the same length.
PAPER_TABLE3: tuple[
    tuple[str, int, str, float, float, float, float, float, float, float, float, float, float], ...
] = (
    ("epinions", 5, "kaffes", 58.2, 1.306, 40.21, 58.08, 47.52, 79.2, 1.315, 48.54, 63.59, 55.06),
    ("epinions", 5, "accent", 58.4, 1.527, 38.36, 71.92, 50.03, 100.0, 1.535, 49.68, 68.39, 57.55),
)

#: The α and λ of the paper's Table 2 rows for LCER, per dataset (section 4.1).
PAPER_LCER_PARAMS: dict[str, dict[str, float]] = {
    "ml-100k": {"alpha": 0.1, "lam": 0.01},
    "ml-1m": {"alpha": 0.04, "lam": 0.02},
    "alishop": {"alpha": 0.08, "lam": 0.03},
    "epinions": {"alpha": 0.1, "lam": 0.01},
}

#: The grids the paper searched (section 4.1).
PAPER_ALPHAS = (0.02, 0.04, 0.06, 0.08, 0.1)
PAPER_LAMS = (0.01, 0.02, 0.03, 0.04, 0.05)

_SCHEMA2 = {
    "dataset": pl.String,
    "method": pl.String,
    "k": pl.Int32,
    **{c: pl.Float64 for c in _T2_COLUMNS[3:]},
}
_SCHEMA3 = {
    "dataset": pl.String,
    "k": pl.Int32,
    "baseline": pl.String,
    **{c: pl.Float64 for c in _T3_COLUMNS[3:]},
}


def paper_table2(dataset: str | None = None) -> pl.DataFrame:
    """The paper's Table 2 (one dataset, or all), in the columns of the ``table2`` view."""
    frame = pl.DataFrame(list(PAPER_TABLE2), schema=_SCHEMA2, orient="row")
    return frame if dataset is None else frame.filter(pl.col("dataset") == dataset)


def paper_table3(dataset: str | None = None) -> pl.DataFrame:
    """The paper's Table 3 (it reports Epinions only)."""
    frame = pl.DataFrame(list(PAPER_TABLE3), schema=_SCHEMA3, orient="row")
    return frame if dataset is None else frame.filter(pl.col("dataset") == dataset)
