"""Paired comparison of two explanation methods on the same pairs, with a bootstrap over users.

Two runs that explain the same (user, item) pairs (same model, users and K) are compared on
the strict metrics, where a pair without a set counts as a failure: PS = share of all pairs
whose set is sufficient, PN = share whose set is necessary, F_NS their harmonic mean. The
difference A − B comes with a percentile bootstrap confidence interval over *users* (a user's
K pairs are resampled together: they share a history, so they are not independent draws).
The resampling is a ``[B, U]`` matrix of multinomial counts applied to per-user sums, one
matrix product per metric, never a loop per resample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from lcer_core.errors import InvalidParameterError

__all__ = ["PAIR_COLUMNS", "PairedComparison", "paired_comparison"]

#: What each run's rows must hold: one row per pair.
PAIR_COLUMNS = ("uid", "sid", "found", "sufficient", "necessary")


@dataclass(frozen=True)
class PairedComparison:
    """Strict PS/PN/F_NS (0–100) of A and B on their common pairs, F_NS(A) − F_NS(B) and the
    bootstrap interval of that difference (and of PS's and PN's) over users."""

    pairs: int
    users: int
    ps_a: float
    ps_b: float
    pn_a: float
    pn_b: float
    fns_a: float
    fns_b: float
    d_ps: float
    d_ps_ci: tuple[float, float]
    d_pn: float
    d_pn_ci: tuple[float, float]
    d_fns: float
    d_fns_ci: tuple[float, float]
    level: float
    resamples: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("d_ps_ci", "d_pn_ci", "d_fns_ci"):
            out[name] = list(out[name])
        return out


def _per_user(rows: pl.DataFrame, name: str) -> pl.DataFrame:
    missing = [c for c in PAIR_COLUMNS if c not in rows.columns]
    if missing:
        raise InvalidParameterError(f"run {name} lacks the column(s) {', '.join(missing)}")
    if rows.select(pl.struct("uid", "sid").is_duplicated().any()).item():
        raise InvalidParameterError(f"run {name} holds a (user, item) pair twice")
    strict = rows.select(
        "uid",
        "sid",
        s=(pl.col("found") & pl.col("sufficient").fill_null(False)).cast(pl.Int64),
        n=(pl.col("found") & pl.col("necessary").fill_null(False)).cast(pl.Int64),
    )
    return strict


def _f(ps: np.ndarray, pn: np.ndarray) -> np.ndarray:
    total = ps + pn
    return np.where(total > 0, 2 * ps * pn / np.where(total > 0, total, 1), 0.0)


def paired_comparison(
    rows_a: pl.DataFrame,
    rows_b: pl.DataFrame,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare run A's rows with run B's on the same pairs (see the module docstring).

    Both runs must explain exactly the same (uid, sid) pairs; anything else is a one-line
    error (the runs are not paired).
    """
    if resamples < 1:
        raise InvalidParameterError(f"resamples must be >= 1, got {resamples}", param="resamples")
    if not 0 < level < 1:
        raise InvalidParameterError(f"level must be in (0, 1), got {level}", param="level")
    a, b = _per_user(rows_a, "A"), _per_user(rows_b, "B")
    joined = a.join(b, on=["uid", "sid"], how="full", suffix="_b", coalesce=True)
    if joined.select(pl.col("s").is_null().any() | pl.col("s_b").is_null().any()).item():
        raise InvalidParameterError(
            "the two runs do not explain the same pairs (another model, K or users)"
        )
    if joined.height == 0:
        raise InvalidParameterError("the two runs have no pair to compare")
    users = (
        joined.group_by("uid")
        .agg(
            pl.len().alias("p"),
            pl.col("s").sum(),
            pl.col("n").sum(),
            pl.col("s_b").sum(),
            pl.col("n_b").sum(),
        )
        .sort("uid")
    )
    sums = users.select("p", "s", "n", "s_b", "n_b").to_numpy().astype(np.float64)  # [U, 5]
    n_users = sums.shape[0]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=resamples)
    boot = weights.astype(np.float64) @ sums  # [B, 5]
    full = sums.sum(0, keepdims=True)  # [1, 5]

    def metrics(t: np.ndarray) -> dict[str, np.ndarray]:
        p = t[:, 0]
        ps_a, pn_a, ps_b, pn_b = (100 * t[:, i] / p for i in (1, 2, 3, 4))
        return {
            "ps_a": ps_a,
            "pn_a": pn_a,
            "ps_b": ps_b,
            "pn_b": pn_b,
            "fns_a": _f(ps_a, pn_a),
            "fns_b": _f(ps_b, pn_b),
        }

    point, dist = metrics(full), metrics(boot)
    tail = (1 - level) / 2 * 100

    def interval(name: str) -> tuple[float, float]:
        diff = dist[f"{name}_a"] - dist[f"{name}_b"]
        low, high = np.percentile(diff, [tail, 100 - tail])
        return float(low), float(high)

    value = {name: float(v[0]) for name, v in point.items()}
    return PairedComparison(
        pairs=int(full[0, 0]),
        users=n_users,
        **value,
        d_ps=value["ps_a"] - value["ps_b"],
        d_ps_ci=interval("ps"),
        d_pn=value["pn_a"] - value["pn_b"],
        d_pn_ci=interval("pn"),
        d_fns=value["fns_a"] - value["fns_b"],
        d_fns_ci=interval("fns"),
        level=level,
        resamples=resamples,
    )
