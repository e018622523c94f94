"""Shape-true synthetic interaction files: the paper's datasets' Table 1 rows, heavy tails, real filters.

``synthesize("epinions", seed=0)`` returns a raw interaction table (``user, item, rating``)
that ``lcer prepare NAME --from FILE --user-col user --item-col item --rating-col rating``
turns into exactly the dataset's Table 1 row (users, items, interactions; taken from
:data:`~lcer_core.datasets.registry.BUILTIN`), while the raw file carries what the real
filters drop (ratings ≤ 3.5, users with fewer than five positive ratings, items seen only
there), sized like the real raw file. Only the shape is synthetic.

How (all vectorised, numpy at this boundary, one ``numpy.random.Generator`` per seed):

1. Degrees of the kept data. User activity is ``5 + Multinomial(I − 5U, p)``, item
   popularity ``1 + Multinomial(I − M, q)``, with ``p`` and ``q`` proportional to lognormal
   weights (σ per shape, below): every kept user has at least the five positives the filter
   asks for, every kept item at least one, and the sums are exactly Table 1's I.
   Degrees above a cap (a user with more than ``user_cap`` of the items, an item with more
   than ``item_cap`` of the users) are cut and the excess given to the others.
2. Edges: the configuration model (user stubs against a random permutation of item
   stubs); a (user, item) drawn twice is repaired by re-shuffling the items among the
   duplicates and as many random other edges, until none is left (degrees unchanged).
3. What the filters drop: users with one to four positives (P(n) ∝ 1/n), and ratings
   1–3 spread over all users and items by the same weights, so that the raw file has the
   real one's users, items and rows; the raw items beyond Table 1's appear only there.
   Ratings follow the real file's mix (ML 1M's counts per star; Epinions' chosen).

Parameters: ML 1M takes σ fitted on the real ML 100K after filtering (same platform,
protocol and thresholds): σ_user = 0.95, σ_item = 1.9 give ML 100K's Gini coefficients of
user activity (0.47) and item popularity (0.66) at its own Table 1 row. Epinions and
Alishop are not on these machines, so theirs are chosen, not fitted: a longer tail for
Epinions (σ_user 1.25, σ_item 1.6; ~4 interactions per item, a third of the items seen once)
and a milder one for Alishop (σ_user 0.8, σ_item 1.4). The raw sizes are those of the public
files (ML 1M: 1,000,209 ratings of 6,040 users on 3,706 movies; Epinions: 664,824 ratings of
49,290 users on 139,738 items); Alishop arrives filtered, so nothing is dropped for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lcer_core.checks import check_seed
from lcer_core.errors import InvalidParameterError
from lcer_core.fsio import atomic_file, parquet_bytes

from .registry import BUILTIN, Table1

__all__ = ["SHAPES", "SynthShape", "synthesize", "write_synth", "degree_stats"]

_MIN_USER = 5  # the prepare filter's minimum (DatasetSpec.min_user_interactions)


@dataclass(frozen=True)
class SynthShape:
    """How one dataset's raw file is shaped beyond its Table 1 row (see the module docstring)."""

    sigma_user: float  # lognormal σ of user activity weights
    sigma_item: float  # lognormal σ of item popularity weights
    raw_users: int  # users in the raw file (Table 1's plus those the filter drops)
    raw_items: int  # items in the raw file
    raw_rows: int  # rows in the raw file
    positive_mix: tuple[float, float]  # P(rating 4), P(rating 5) among kept rows
    negative_mix: tuple[float, float, float]  # P(1), P(2), P(3) among dropped low ratings
    user_top: float  # the most active user's share of the items
    item_top: float  # the most popular item's share of the users


SHAPES: dict[str, SynthShape] = {
    "ml-1m": SynthShape(
        sigma_user=1.2,
        sigma_item=1.75,
        raw_users=6040,
        raw_items=3706,
        raw_rows=1_000_209,
        positive_mix=(348_971, 226_310),
        negative_mix=(56_174, 107_557, 261_197),
        user_top=0.26,
        item_top=0.53,
    ),
    "alishop": SynthShape(
        sigma_user=0.8,
        sigma_item=1.4,
        raw_users=10_668,
        raw_items=20_591,
        raw_rows=767_493,
        positive_mix=(0.0, 1.0),  # implicit feedback: every click is a positive (rating 5)
        negative_mix=(1.0, 1.0, 1.0),
        user_top=0.03,
        item_top=0.15,
    ),
    "epinions": SynthShape(
        sigma_user=1.25,
        sigma_item=1.6,
        raw_users=49_290,
        raw_items=139_738,
        raw_rows=664_824,
        positive_mix=(0.4, 0.6),
        negative_mix=(0.3, 0.25, 0.45),
        user_top=0.01,
        item_top=0.08,
    ),
}


def _table1(shape: str) -> Table1:
    if shape not in SHAPES:
        raise InvalidParameterError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    t1 = BUILTIN[shape].table1
    assert t1 is not None
    return t1


def _degrees(
    rng: np.random.Generator, n: int, total: int, floor: int, sigma: float, top: int
) -> np.ndarray:
    """``n`` degrees, each at least ``floor``, summing to ``total``: a lognormal body whose
    head saturates smoothly (weights ``w / (1 + w / h)``) so that the largest is about ``top``."""
    spare = total - floor * n
    if spare < 0 or top <= floor:
        raise InvalidParameterError(f"cannot spread {total} over {n} rows from {floor} to {top}")
    w = rng.lognormal(0.0, sigma, size=n)

    def largest(h: float) -> float:
        g = w / (1.0 + w / h)
        return floor + spare * float(g.max() / g.sum())

    h = np.inf
    if largest(h) > top:  # bisection on log h: the largest degree falls as h does
        lo, hi = np.log(w.min()) - 20, np.log(w.max()) + 20
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if largest(np.exp(mid)) > top else (mid, hi)
        h = float(np.exp(lo))
    g = w / (1.0 + w / h)
    deg = floor + rng.multinomial(spare, g / g.sum())
    cap = int(top * 1.1) + 1  # the multinomial's noise around the head, bounded
    while (over := deg > cap).any():
        excess = int((deg[over] - cap).sum())
        deg[over] = cap
        room = np.where(deg < cap, g, 0.0)
        deg += rng.multinomial(excess, room / room.sum())
    return deg


def _simple_edges(
    rng: np.random.Generator, user_deg: np.ndarray, item_deg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A bipartite graph without repeated (user, item) with exactly these degrees.

    The configuration model, then degree-preserving swaps: each repeated edge (u1, i1) is
    offered a random edge (u2, i2) and becomes (u1, i2), (u2, i1) when neither exists yet
    and no other swap of the round touches the same edges or makes the same pair, so every
    accepted swap removes one repeat and creates none.
    """
    n_items = np.int64(item_deg.size)
    users = np.repeat(np.arange(user_deg.size, dtype=np.int64), user_deg)
    items = rng.permutation(np.repeat(np.arange(item_deg.size, dtype=np.int64), item_deg))
    n = users.size
    for _ in range(5_000):
        key = users * n_items + items
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        repeated = np.zeros(n, dtype=bool)
        repeated[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]
        dup = np.flatnonzero(repeated)
        if dup.size == 0:
            return users, items

        # Eight offers per repeat; each takes its first acceptable one.
        offers = rng.integers(0, n, size=(dup.size, 8))
        u1, i1 = users[dup, None], items[dup, None]
        u2, i2 = users[offers], items[offers]
        fine = (u1 != u2) & (i1 != i2) & ~repeated[offers]
        fine &= ~_present(sorted_keys, u1 * n_items + i2) & ~_present(
            sorted_keys, u2 * n_items + i1
        )
        pick = fine.argmax(1)
        rows = np.arange(dup.size)
        other, ok = offers[rows, pick], fine[rows, pick]
        u1, i1, u2, i2 = u1[:, 0], i1[:, 0], users[other], items[other]
        new1, new2 = u1 * n_items + i2, u2 * n_items + i1
        ok &= _once(other, ok)
        ok &= _once(np.concatenate([new1, new2]), np.tile(ok, 2)).reshape(2, -1).all(0)
        items[dup[ok]] = i2[ok]
        items[other[ok]] = i1[ok]
    raise RuntimeError("could not draw a simple graph with these degrees")  # pragma: no cover


def _present(sorted_keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """True where ``k`` is one of ``sorted_keys``."""
    at = np.minimum(np.searchsorted(sorted_keys, k), sorted_keys.size - 1)
    return sorted_keys[at] == k


def _once(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """True where ``values[j]`` occurs only once among the entries flagged in ``among``."""
    _, inverse, counts = np.unique(
        np.where(among, values, -1 - np.arange(values.size)),
        return_inverse=True,
        return_counts=True,
    )
    return counts[inverse] == 1


def synthesize(shape: str, *, seed: int = 0) -> pl.DataFrame:
    """A raw interaction table (``user``, ``item``, ``rating``) of the dataset's shape, per seed."""
    t1 = _table1(shape)
    check_seed(seed)
    spec = SHAPES[shape]
    rng = np.random.default_rng(seed)
    n_users, n_items, n_rows = t1.users, t1.items, t1.interactions

    # 1-2. The kept data: degrees, then a simple bipartite graph with them.
    user_deg = _degrees(
        rng, n_users, n_rows, _MIN_USER, spec.sigma_user, round(spec.user_top * n_items)
    )
    item_deg = _degrees(rng, n_items, n_rows, 1, spec.sigma_item, round(spec.item_top * n_users))
    users, items = _simple_edges(rng, user_deg, item_deg)
    p4, p5 = spec.positive_mix
    ratings = np.where(rng.random(n_rows) < p5 / (p4 + p5), 5.0, 4.0)

    # 3. What the filters drop: sparse users, extra items, low ratings.
    n_sparse = spec.raw_users - n_users
    n_extra = spec.raw_items - n_items
    one_to_four = np.arange(1, _MIN_USER)
    sparse_n = rng.choice(one_to_four, size=n_sparse, p=(1 / one_to_four) / (1 / one_to_four).sum())
    n_low = max(spec.raw_rows - n_rows - int(sparse_n.sum()), 0)
    all_users = n_users + n_sparse
    all_items = n_items + n_extra
    # Who gives the dropped rows, and to what: the kept users and items by their degree,
    # the sparse users and the extra items each at least once. Drawn with a margin (some
    # fall on a pair already rated), then cut to the raw file's size.
    user_w = np.concatenate([user_deg, np.ones(n_sparse)]).astype(float)
    item_w = np.concatenate([item_deg, np.ones(n_extra)]).astype(float)
    sp_users = np.repeat(np.arange(n_users, all_users, dtype=np.int64), sparse_n)
    n_draw = int(1.5 * n_low) + n_extra
    low_users = rng.choice(all_users, size=n_draw, p=user_w / user_w.sum())
    drop_users = np.concatenate([sp_users, low_users])
    drop_items = rng.choice(all_items, size=drop_users.size, p=item_w / item_w.sum())
    required = np.zeros(drop_users.size, dtype=bool)
    required[: sp_users.size] = True
    if n_extra:
        first_extra = rng.permutation(drop_users.size)[:n_extra]
        drop_items[first_extra] = np.arange(n_items, all_items)  # every raw item appears
        required[first_extra] = True
    neg = np.asarray(spec.negative_mix, dtype=float)
    drop_ratings = rng.choice(np.array([1.0, 2.0, 3.0]), size=drop_users.size, p=neg / neg.sum())
    drop_ratings[: sp_users.size] = np.where(rng.random(sp_users.size) < p5 / (p4 + p5), 5.0, 4.0)

    first_req = np.argsort(~required, kind="stable")  # the required rows win a repeated pair
    drop_users, drop_items = drop_users[first_req], drop_items[first_req]
    drop_ratings, required = drop_ratings[first_req], required[first_req]

    u = np.concatenate([users, drop_users])
    i = np.concatenate([items, drop_items])
    r = np.concatenate([ratings, drop_ratings])
    keep_req = np.concatenate([np.ones(n_rows, dtype=bool), required])
    # One row per (user, item), the kept rows first (they win), as in a real ratings file.
    key = u * np.int64(all_items) + i
    _, first = np.unique(key, return_index=True)
    first.sort()
    optional = first[~keep_req[first]]
    surplus = max(first.size - spec.raw_rows, 0)
    if surplus:
        cut = rng.choice(optional, size=min(surplus, optional.size), replace=False)
        first = np.setdiff1d(first, cut)
    u, i, r = u[first], i[first], r[first]
    # Raw ids: random labels, so that neither id order carries the degrees; rows grouped by
    # user, in random order within a user (as a file sorted by user, then time).
    user_id = rng.permutation(all_users).astype(np.int64) + 1
    item_id = rng.permutation(all_items).astype(np.int64) + 1
    order = np.lexsort((rng.random(u.size), user_id[u]))
    return pl.DataFrame(
        {"user": user_id[u][order], "item": item_id[i][order], "rating": r[order]},
        schema={"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64},
    )


def degree_stats(frame: pl.DataFrame, threshold: float = 3.5) -> dict[str, float]:
    """Table 1 and tail statistics of ``frame`` after the prepare filters (ratings > threshold,
    users with at least five): counts, Gini of user activity and item popularity, max degrees,
    share of items seen once."""
    kept = frame.filter(pl.col("rating") > threshold).unique(["user", "item"])
    kept = kept.filter(pl.len().over("user") >= _MIN_USER)
    out: dict[str, float] = {
        "users": kept["user"].n_unique(),
        "items": kept["item"].n_unique(),
        "interactions": kept.height,
    }
    for col, name in (("user", "user"), ("item", "item")):
        deg = np.sort(kept.group_by(col).len()["len"].to_numpy()).astype(float)
        n = deg.size
        out[f"{name}_gini"] = float((2 * np.arange(1, n + 1) - n - 1) @ deg / (n * deg.sum()))
        out[f"{name}_max"] = float(deg.max())
        out[f"{name}_median"] = float(np.median(deg))
        out[f"{name}_once_pct"] = float(100 * (deg == 1).mean())
    return out


def write_synth(shape: str, out: Path, *, seed: int = 0) -> pl.DataFrame:
    """Write :func:`synthesize`'s table to ``out`` (Parquet or CSV by suffix), atomically."""
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise InvalidParameterError(
            f"out must end in .parquet or .csv, got {out.name!r}", param="out"
        )
    out = out.expanduser().absolute()
    _table1(shape)
    # The temporary file first: a folder that cannot be written fails before the work.
    with atomic_file(out, parents=False) as fh:
        frame = synthesize(shape, seed=seed)
        fh.write(parquet_bytes(frame) if suffix != ".csv" else frame.write_csv().encode())
    return frame
