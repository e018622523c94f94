"""Tuning on validation users: the choice reads no test user, and bad grids are one line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dataset_fixtures import run_cli

from lcer_core.datasets.prepared import PreparedDataset, load_prepared
from lcer_core.errors import InvalidParameterError
from lcer_core.models import load_model
from lcer_core.tuning import tune, validation_pairs

GRID = {"lam": [0.01, 0.5], "alpha": [0.1, 1.0]}


def _without_test_users(data: PreparedDataset) -> PreparedDataset:
    """``data`` with every test user's interactions removed (and the users themselves)."""
    test = set(data.users_of("test"))
    parts = {
        name: part.filter(~pl.col("uid").is_in(list(test)))
        for name, part in data._parts.items()  # noqa: SLF001
    }
    return PreparedDataset(
        data.name,
        data.folder,
        data.meta,
        data.users.filter(~pl.col("uid").is_in(list(test))),
        data.items,
        parts,
    )


@pytest.mark.slow
def test_tuning_reads_no_test_user(in_trained_home: Path) -> None:
    data = load_prepared("ml-100k")
    model = load_model("ml-100k")
    kwargs = {"k": 5, "grid": GRID, "fixed": {"steps": 60}, "n_users": 8, "device": "cpu"}
    full = tune(data, model, "lcer", **kwargs)
    blind = tune(_without_test_users(data), model, "lcer", **kwargs)
    timing = ["s_per_pair"]
    assert full.drop(timing).equals(blind.drop(timing))
    assert full.height == 4 and full["chosen"].sum() == 1
    chosen = full.filter("chosen").row(0, named=True)
    assert chosen["strict_fns_pct"] == full["strict_fns_pct"].max()
    with pytest.raises(InvalidParameterError, match="not a validation user"):
        validation_pairs(model, data, data.users_of("test")[:1], 5, "cpu")


@pytest.mark.slow
def test_lcer_tune_prints_the_choice(
    in_trained_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "ml-100k", "--method", "lcer", "--grid", "lam=0.01,0.5", "--set", "steps=40"]
    code, out, err = run_cli([*argv, "--users", "5", "--json", "--no-train"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["split"] == "val" and payload["chosen"]["lam"] in (0.01, 0.5)
    assert [r["lam"] for r in payload["rows"]] == [0.01, 0.5]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--grid", "nope=1,2"], "method 'lcer' has no option 'nope' to tune"),
        (["--grid", "lam=0.1,x"], "--grid lam: 'x' is not a valid float"),
        (["--grid", "lam"], "--grid takes name=value"),
        (["--grid", "steps=0"], "steps"),
        ([], "--grid: give at least one option"),
    ],
)
def test_bad_grids_are_one_line(
    lcer_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    code, out, err = run_cli(["tune", "ml-100k", "--method", "lcer", *argv], capsys)
    assert code == 2 and line in err and len(err.strip().splitlines()) == 1, err
    assert not any(lcer_home.iterdir())
