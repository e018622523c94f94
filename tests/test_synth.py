"""``lcer synth SHAPE``: shape-true synthetic files through the real ``lcer prepare --from``.

Each shape's file, prepared by the same command a user types, gives the paper's Table 1
row of that dataset (users, items, interactions) within 1 % (the generator builds it
exactly); the raw file carries what the filters drop; the tails are heavy; the same seed
gives the same bytes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dataset_fixtures import files_under, run_cli

from lcer_core.datasets.registry import BUILTIN
from lcer_core.datasets.synth import SHAPES, degree_stats, synthesize


@lru_cache
def _synth(shape: str, seed: int) -> pl.DataFrame:
    return synthesize(shape, seed=seed)


PREPARE = ["--user-col", "user", "--item-col", "item", "--rating-col", "rating"]


@pytest.mark.parametrize("shape", ["ml-1m", "alishop", "epinions"])
def test_shape_through_real_prepare(
    shape: str, lcer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{shape}.parquet"
    code, _, err = run_cli(["synth", shape, "--out", str(out), "--seed", "3"], capsys)
    assert code == 0, err
    raw = pl.read_parquet(out)
    assert raw.columns == ["user", "item", "rating"]
    spec = SHAPES[shape]
    assert raw["user"].n_unique() == spec.raw_users  # the raw file is the real file's size
    assert raw["item"].n_unique() == spec.raw_items
    assert raw.height == spec.raw_rows
    assert raw.select(pl.struct("user", "item").is_duplicated().any()).item() is False

    code, _, err = run_cli(["prepare", f"syn-{shape}", "--from", str(out), *PREPARE], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["stats", f"syn-{shape}", "--json"], capsys)
    assert code == 0, err
    got = json.loads(stdout)
    paper = BUILTIN[shape].table1
    assert paper is not None
    for key in ("users", "items", "interactions"):
        assert abs(got[key] - getattr(paper, key)) <= 0.01 * getattr(paper, key), key
    assert abs(got["density_pct"] - paper.density_pct) <= 0.01 * paper.density_pct + 5e-4


def test_what_the_filters_drop_is_real() -> None:
    """ML 1M's raw file has the real file's rating mix, users and items that the filters drop."""
    raw = _synth("ml-1m", 0)
    counts = dict(raw.group_by("rating").len().iter_rows())
    assert set(counts) == {1.0, 2.0, 3.0, 4.0, 5.0}
    low = sum(counts[r] for r in (1.0, 2.0, 3.0)) / raw.height
    assert 0.40 < low < 0.45  # ML 1M: 424,928 of 1,000,209 ratings are 3 or less
    kept = degree_stats(raw)
    assert raw["user"].n_unique() - kept["users"] == 6  # users with fewer than 5 positives
    assert raw["item"].n_unique() - kept["items"] == 3706 - 3502


@pytest.mark.parametrize("shape", ["ml-1m", "alishop", "epinions"])
def test_heavy_tails(shape: str) -> None:
    """Activity and popularity are heavy-tailed: a high Gini, a head far above the median."""
    s = degree_stats(_synth(shape, 0))
    assert s["user_gini"] > 0.3 and s["item_gini"] > 0.5
    assert s["user_max"] > 10 * s["user_median"]
    assert s["item_max"] > 30 * s["item_median"]
    if shape == "epinions":  # about four interactions per item: many are seen once
        assert s["item_once_pct"] > 25


def test_same_seed_same_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [tmp_path / f"{n}.parquet" for n in ("a", "b")]
    for path in paths:
        assert run_cli(["synth", "alishop", "--out", str(path), "--seed", "7"], capsys)[0] == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, c = pl.read_parquet(paths[0]), _synth("alishop", 0)
    assert not a.equals(c)
    # Different seeds, same Table 1 row after filtering.
    assert {k: degree_stats(a)[k] for k in ("users", "items", "interactions")} == {
        k: degree_stats(c)[k] for k in ("users", "items", "interactions")
    }


def test_csv_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "alishop.csv"
    assert run_cli(["synth", "alishop", "--out", str(out)], capsys)[0] == 0
    frame = pl.read_csv(out)
    assert frame.columns == ["user", "item", "rating"]
    assert np.all(frame["rating"].to_numpy() > 3.5)  # implicit feedback: every row is kept


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synth", "netflix", "--out", "{d}/x.parquet"], "unknown shape 'netflix'; known shapes"),
        (["synth", "ml-1m", "--out", "{d}/x.txt"], "--out must end in .parquet or .csv"),
        (["synth", "ml-1m", "--out", "{d}/no/such/x.parquet"], "cannot write"),
        (["synth", "ml-1m", "--out", "{d}/x.parquet", "--seed", "-4"], "--seed must be"),
    ],
)
def test_bad_input_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([a.format(d=tmp_path) for a in argv], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert files_under(tmp_path) == []  # nothing written, no temporary file left
