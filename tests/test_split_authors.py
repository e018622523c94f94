"""The authors' notebook split: shuffled numbers 0..n-1 read as raw user ids."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lcer_core.datasets.preprocess import split_mult_vae
from lcer_core.errors import DataFormatError, InvalidParameterError


def _ratings(user_ids: list) -> pl.DataFrame:
    rows = [(u, i, 5.0) for n, u in enumerate(user_ids) for i in range(n % 3, n % 3 + 6)]
    return pl.DataFrame(rows, schema=["user", "item", "rating"], orient="row")


def _split(ratings: pl.DataFrame, split: str):
    meta = pl.DataFrame({"item": list(range(10)), "title": ["t"] * 10, "genres": [""] * 10})
    return split_mult_vae(
        "toy", ratings, meta, threshold=3.5, min_user_interactions=5, heldout_users=2,
        seed=7, split=split,
    )  # fmt: skip


def test_notebook_split_reads_the_shuffled_range_as_raw_ids():
    # raw ids 1..12: the notebook shuffles 0..11, so id 0 (nobody) takes a place and id 12
    # (a real user) is never picked
    ratings = _ratings(list(range(1, 13)))
    ours = _split(ratings, "reference")
    theirs = _split(ratings, "authors-notebook")
    assert ours.users.height == 12 and "split" not in ours.stats
    order = np.random.RandomState(7).permutation(12)  # the numbers, in the notebook's order
    expect = {"train": order[:8], "val": order[8:10], "test": order[10:12]}
    for part, numbers in expect.items():
        got = theirs.users.filter(pl.col("split") == part)["raw_id"].to_list()
        assert got == [str(n) for n in numbers if n != 0]
    assert "12" not in theirs.users["raw_id"].to_list()
    missing = theirs.stats["notebook_users_without_data"]
    assert sum(missing.values()) == 1 and theirs.stats["split"] == "authors-notebook"
    assert theirs.users["uid"].to_list() == list(range(theirs.users.height))


def test_notebook_split_needs_integer_ids_and_a_known_name():
    with pytest.raises(DataFormatError):
        _split(_ratings([f"u{i}" for i in range(12)]), "authors-notebook")
    with pytest.raises(InvalidParameterError):
        _split(_ratings(list(range(12))), "magic")
