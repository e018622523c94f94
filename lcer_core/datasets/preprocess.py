"""The Mult-VAE reference protocol (Liang et al., 2018, its ML-20M notebook): filter, then split.

1. Keep ratings strictly above the threshold; keep one row per (user, item), the first.
2. Drop users with fewer than ``min_user_interactions`` interactions (one pass, as the
   notebook does). Table 1 of the paper is computed here, over all remaining users.
3. Order the users by raw id (the notebook's ``groupby`` order), permute them with
   ``numpy.random.RandomState(seed).permutation``; the last ``2N`` become ``N`` validation
   then ``N`` test users, the rest train.
4. The item set is that of the training users' interactions; held-out interactions on
   other items are dropped.
5. Each held-out user's interactions (in raw-id order of users, file order within a user)
   are split 80/20 into fold-in (``*_tr``) and held-out (``*_te``) with
   ``RandomState(seed).choice(n, int(0.2 n), replace=False)``, one generator for the
   validation users and a fresh one for the test users; a user with fewer than 5 items
   keeps all of them in fold-in.

``split="authors-notebook"`` reproduces the LCER authors' notebook instead of step 3: its user
list comes from a ``groupby(...).size()`` frame whose index is a RangeIndex, so it permutes
the numbers 0..n−1 and uses them as raw user ids. Users whose raw id is not among those
numbers are dropped; a number that is no user's id holds no data (on ML 100K: 99 of the 100
test users have data, 1,410 training items, 13 test users shared with the reference split).

Internal ids: ``uid`` is the position in the permuted user order (train, then validation,
then test users); ``sid`` the order of first appearance in the training interactions, in
file order (the notebook's ``pd.unique(train_plays['movieId'])``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from lcer_core.checks import check_heldout
from lcer_core.errors import DataFormatError, EmptyDatasetError, InvalidParameterError

from .parse import GivenSplit
from .registry import DEFAULT_SEED

__all__ = [
    "SPLITS",
    "TEST_PROP",
    "MIN_FOLD_IN_SPLIT",
    "SplitResult",
    "filter_ratings",
    "table1_stats",
    "split_mult_vae",
    "from_given_split",
]

#: How users are assigned to train/validation/test: the reference protocol, or the authors'
#: notebook as it ran (raw user ids taken from a RangeIndex; see the module docstring).
SPLITS = ("reference", "authors-notebook")


def check_split(split: str) -> str:
    """``split`` if it names one of :data:`SPLITS`; else a one-line error."""
    if split not in SPLITS:
        raise InvalidParameterError(
            f"split must be one of {', '.join(SPLITS)}, got {split!r}", param="split"
        )
    return split


TEST_PROP = 0.2  # share of a held-out user's items held out for evaluation
MIN_FOLD_IN_SPLIT = 5  # held-out users with fewer items keep them all in fold-in

_ID = pl.Int64


@dataclass(frozen=True)
class SplitResult:
    """A prepared dataset in memory: the five parts, the users, the items, the statistics."""

    parts: dict[str, pl.DataFrame]  # uid, sid (Int64), sorted by (uid, sid)
    users: pl.DataFrame  # uid, raw_id, split
    items: pl.DataFrame  # sid, raw_id, title, genres, popularity
    stats: dict[str, Any]


def filter_ratings(
    ratings: pl.DataFrame, *, threshold: float | None, min_user_interactions: int
) -> pl.DataFrame:
    """Ratings above ``threshold`` (all if None), deduplicated, of users with enough of them; file order kept."""
    df = ratings
    if threshold is not None:
        df = df.filter(pl.col("rating") > threshold)
    df = df.unique(["user", "item"], keep="first", maintain_order=True)
    return df.filter(pl.len().over("user") >= min_user_interactions)


def table1_stats(n_users: int, n_items: int, n_interactions: int) -> dict[str, Any]:
    """Users, items, interactions and density in percent (full precision), as in Table 1."""
    density = 100.0 * n_interactions / (n_users * n_items) if n_users and n_items else 0.0
    return {
        "users": n_users,
        "items": n_items,
        "interactions": n_interactions,
        "density_pct": density,
    }


def _split_fold_in(
    held: pl.DataFrame, seed: int, test_prop: float
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """80/20 split of each user's rows (users in raw-id order, rows in file order)."""
    rows = held.with_row_index("_row")
    groups = rows.group_by("user", maintain_order=True).agg(pl.col("_row")).sort("user")
    is_te = np.zeros(held.height, dtype=bool)
    rng = np.random.RandomState(seed)
    for idx in groups["_row"].to_list():
        n = len(idx)
        if n >= MIN_FOLD_IN_SPLIT:
            pick = rng.choice(n, size=int(test_prop * n), replace=False).astype("int64")
            is_te[np.asarray(idx, dtype=np.int64)[pick]] = True
    mask = pl.Series("_te", is_te)
    return held.filter(~mask), held.filter(mask)


def _check_ids(df: pl.DataFrame) -> None:
    for col in ("user", "item"):
        if df[col].dtype not in (pl.Int64, pl.Int32, pl.UInt32, pl.UInt64, pl.String):
            raise DataFormatError(f"{col} ids must be integers or strings, got {df[col].dtype}")


def _filter_checked(
    name: str,
    ratings: pl.DataFrame,
    *,
    threshold: float | None,
    min_user_interactions: int,
    heldout_users: int,
    split: str,
) -> tuple[pl.DataFrame, int, dict[str, Any]]:
    """Check the options, filter ``ratings`` and check enough users are left; return the rows
    kept, their number of users and their Table 1 statistics."""
    check_split(split)
    check_heldout(heldout_users)
    _check_ids(ratings)
    kept = filter_ratings(ratings, threshold=threshold, min_user_interactions=min_user_interactions)
    if kept.height == 0:
        rule = f"ratings > {threshold:g}, " if threshold is not None else ""
        raise EmptyDatasetError(
            f"{name}: no user left after filtering ({rule}at least {min_user_interactions} "
            f"interactions per user; {ratings.height} rows read)"
        )
    n_users = kept["user"].n_unique()
    stats = {"dataset": name} | table1_stats(n_users, kept["item"].n_unique(), kept.height)
    if n_users <= 2 * heldout_users:
        raise EmptyDatasetError(
            f"{name}: {n_users} users left after filtering, too few to hold out {heldout_users} "
            f"validation and {heldout_users} test users and train on the rest (lower --heldout)"
        )
    return kept, n_users, stats


def _assign_users(
    name: str, kept: pl.DataFrame, n_users: int, heldout_users: int, seed: int, split: str
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Shuffle the users into train, validation and test and number them; return the users, the
    rows with each user's ``uid`` and ``split``, and the notebook split's extra statistics."""
    extra: dict[str, Any] = {}
    ordered = kept["user"].unique().sort()
    perm = np.random.RandomState(seed).permutation(n_users)
    n_train = n_users - 2 * heldout_users
    split_of = np.array(["train"] * n_train + ["val"] * heldout_users + ["test"] * heldout_users)
    if split == "authors-notebook":
        if not ordered.dtype.is_integer():
            raise DataFormatError(f"{name}: --split authors-notebook needs integer user ids")
        # the RangeIndex 0..n-1, permuted, read as raw ids; numbers that are nobody's id drop out
        ordered = pl.Series("user", np.arange(n_users), dtype=ordered.dtype)
        order = ordered.gather(perm)
        has = order.is_in(kept["user"].unique().implode()).to_numpy()
        users = pl.DataFrame({"user": order.filter(has), "split": split_of[has]})
        users = users.with_columns(uid=pl.int_range(pl.len(), dtype=pl.Int64))
        kept = kept.filter(pl.col("user").is_in(users["user"].implode()))
        extra["notebook_users_without_data"] = {
            part: int((~has & (split_of == part)).sum()) for part in ("train", "val", "test")
        }
    else:
        users = pl.DataFrame(
            {
                "user": ordered.gather(perm),
                "uid": np.arange(n_users, dtype=np.int64),
                "split": split_of,
            }
        )
    kept = kept.join(
        users.select("user", "uid", "split"), on="user", how="left", maintain_order="left"
    )
    return users, kept, extra


def _split_parts(
    kept: pl.DataFrame, seed: int, test_prop: float
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, int]:
    """Number the training items and split the held-out users' rows into fold-in and test parts;
    return the five parts as (uid, sid), the item numbering and the held-out rows dropped."""
    train = kept.filter(pl.col("split") == "train")
    sids = train.select(pl.col("item").unique(maintain_order=True)).with_columns(
        pl.int_range(pl.len(), dtype=_ID).alias("sid")
    )
    in_train = pl.col("item").is_in(sids["item"].implode())

    parts: dict[str, pl.DataFrame] = {"train": train}
    dropped = 0
    for held_part in ("val", "test"):
        all_held = kept.filter(pl.col("split") == held_part)
        held = all_held.filter(in_train)
        dropped += all_held.height - held.height
        parts[f"{held_part}_tr"], parts[f"{held_part}_te"] = _split_fold_in(held, seed, test_prop)

    parts = {
        k: df.join(sids, on="item", how="left")
        .select(pl.col("uid").cast(_ID), pl.col("sid").cast(_ID))
        .sort("uid", "sid")
        for k, df in parts.items()
    }
    return parts, sids, dropped


def _id_tables(
    users: pl.DataFrame,
    sids: pl.DataFrame,
    item_meta: pl.DataFrame,
    parts: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The users' and the items' tables: internal id, raw id, and the split or the metadata."""
    users_out = users.select(
        pl.col("uid").cast(_ID), pl.col("user").cast(pl.String).alias("raw_id"), "split"
    ).sort("uid")
    meta = item_meta.select("item", "title", "genres").unique("item", keep="first")
    items = (
        sids.join(meta, on="item", how="left")
        .select("sid", pl.col("item").cast(pl.String).alias("raw_id"), "title", "genres")
        .sort("sid")
    )
    return users_out, _with_popularity(items, parts)


def split_mult_vae(
    name: str,
    ratings: pl.DataFrame,
    item_meta: pl.DataFrame,
    *,
    threshold: float | None,
    min_user_interactions: int,
    heldout_users: int,
    seed: int = DEFAULT_SEED,
    test_prop: float = TEST_PROP,
    split: str = "reference",
) -> SplitResult:
    """Filter ``ratings`` (``user``, ``item``, ``rating``) and split them by the reference protocol
    (or, with ``split="authors-notebook"``, as the authors' notebook did)."""
    kept, n_users, stats = _filter_checked(
        name,
        ratings,
        threshold=threshold,
        min_user_interactions=min_user_interactions,
        heldout_users=heldout_users,
        split=split,
    )
    users, kept, extra = _assign_users(name, kept, n_users, heldout_users, seed, split)
    stats |= extra
    parts, sids, dropped = _split_parts(kept, seed, test_prop)
    users_out, items = _id_tables(users, sids, item_meta, parts)
    stats |= _split_stats(users_out, items, parts) | {
        "heldout_users": heldout_users,
        "dropped_heldout_interactions": dropped,
    }
    if split != "reference":
        stats["split"] = split
    return SplitResult(parts=parts, users=users_out, items=items, stats=stats)


def _with_popularity(items: pl.DataFrame, parts: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Add ``popularity``: the item's interactions in the prepared data (all five parts)."""
    counts = (
        pl.concat(list(parts.values())).group_by("sid").agg(pl.len().cast(_ID).alias("popularity"))
    )
    return (
        items.join(counts, on="sid", how="left")
        .with_columns(pl.col("popularity").fill_null(0))
        .sort("sid")
    )


def _split_stats(
    users: pl.DataFrame, items: pl.DataFrame, parts: dict[str, pl.DataFrame]
) -> dict[str, Any]:
    by_split = dict(users.group_by("split").len().iter_rows())
    out: dict[str, Any] = {f"{s}_users": int(by_split.get(s, 0)) for s in ("train", "val", "test")}
    out["train_items"] = items.height
    out |= {f"{k}_interactions": df.height for k, df in parts.items()}
    return out


def from_given_split(name: str, given: GivenSplit) -> SplitResult:
    """A dataset that arrives already split (Alishop): taken as it is, ids kept."""
    parts = {
        k: df.select(pl.col("uid").cast(_ID), pl.col("sid").cast(_ID)).sort("uid", "sid")
        for k, df in given.parts.items()
    }
    of_split = {
        "train": parts["train"]["uid"],
        "val": pl.concat([parts["val_tr"]["uid"], parts["val_te"]["uid"]]),
        "test": pl.concat([parts["test_tr"]["uid"], parts["test_te"]["uid"]]),
    }
    frames = [
        s.unique().to_frame("uid").with_columns(pl.lit(split).alias("split"))
        for split, s in of_split.items()
    ]
    users = pl.concat(frames).sort("uid")
    twice = users.filter(pl.col("uid").is_duplicated())
    if twice.height:
        uid = twice["uid"][0]
        where = " and ".join(twice.filter(pl.col("uid") == uid)["split"].to_list())
        raise DataFormatError(f"{name}: user {uid} appears in both the {where} files")
    if users.height == 0:
        raise EmptyDatasetError(f"{name}: the split files hold no user")
    users = users.select("uid", pl.col("uid").cast(pl.String).alias("raw_id"), "split")
    items = given.items.select(
        "sid", "raw_id", pl.lit(None, dtype=pl.String).alias("title"), "genres"
    )
    items = _with_popularity(items, parts)
    total = sum(df.height for df in parts.values())
    stats = {"dataset": name} | table1_stats(users.height, items.height, total)
    stats |= _split_stats(users, items, parts) | {"dropped_heldout_interactions": 0}
    stats["heldout_users"] = stats["test_users"]
    return SplitResult(parts=parts, users=users, items=items, stats=stats)
