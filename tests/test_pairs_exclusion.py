"""The recommendation step never recommends an item the user already has (issue: item 0).

Random histories (item 0 and the last item included, every length in one chunk) against a
dense reference ranking, for each recommender kind and several chunk sizes; then the stored
pairs of a real ML 100K run, through SQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcer_core.datasets.prepared import load_prepared
from lcer_core.pairs import build_pairs, histories_from_lists
from lcer_core.recommender.base import history_mask
from lcer_core.recommender.counting import CountingRecommender
from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender
from lcer_core.testing import recommender as rc
from lcer_core.testing.recommenders import random_linear

N_ITEMS = 24


def _tiny_multvae(n_items: int = N_ITEMS) -> MultVAERecommender:
    torch.manual_seed(0)
    return MultVAERecommender(MultVAE(n_items, MultVAEConfig(hidden=16, latent=8)), "cpu")


RECOMMENDERS = {
    "linear": lambda: random_linear(N_ITEMS, seed=3),
    "multvae": _tiny_multvae,
    "counting(multvae)": lambda: CountingRecommender(_tiny_multvae()),
}

_history = st.sets(st.integers(0, N_ITEMS - 1), min_size=1, max_size=N_ITEMS - 5)


def test_padding_never_unmasks_item_0() -> None:
    """The minimal case: item 0 in a history shorter than the widest of its batch."""
    h = histories_from_lists([0, 1], [[0, 3, 9], [1, 2, 4, 5, 6]])
    owned = history_mask(h.items, h.mask, 10)
    assert owned[0].nonzero().flatten().tolist() == [0, 3, 9]
    assert owned[1].nonzero().flatten().tolist() == [1, 2, 4, 5, 6]


@pytest.mark.parametrize("name", list(RECOMMENDERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lists=st.lists(_history, min_size=1, max_size=12),
    k=st.integers(1, 4),
    chunk=st.sampled_from([None, 1, 2, 5]),
)
def test_no_recommended_item_is_in_the_history(name, lists, k, chunk) -> None:
    rec = RECOMMENDERS[name]()
    lists = [sorted(x) for x in lists]
    rc.check_recommendations(rec, histories_from_lists(list(range(len(lists))), lists), k, chunk)


def test_edge_histories_through_every_chunk_size() -> None:
    rec = random_linear(N_ITEMS, seed=5)
    edges = rc.edge_histories(N_ITEMS, seed=1)
    for chunk in (None, 1, 3, len(edges)):
        rc.check_recommendations(rec, edges, k=4, chunk=chunk)
    pairs = build_pairs(rec, edges, 4)
    assert int(pairs.targets.min()) >= 0 and int(pairs.targets.max()) < N_ITEMS


@pytest.mark.slow
def test_no_stored_pair_targets_an_item_of_its_users_fold_in(
    trained_home: Path, tmp_path: Path, http_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test user of ML 100K, K = 5 and 10 (1,500 pairs), through `lcer run` and DuckDB."""
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LCER_", "MLFLOW_"))}
    env |= {"LCER_HOME": str(home), "LCER_MIRROR": http_mirror}
    lcer = str(Path(sys.executable).parent / "lcer")
    argv = [lcer, "run", "ml-100k", "--methods", "fia", "--k", "5,10", "--epochs", "10"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("LCER_HOME", str(home))
    data = load_prepared("ml-100k")
    fold_in = pl.DataFrame(
        [(u, s) for u in data.users_of("test") for s in data.history(u)],
        schema={"uid": pl.Int64, "sid": pl.Int64},
        orient="row",
    )
    con = duckdb.connect(str(home / "results" / "lcer.duckdb"), read_only=True)
    con.register("fold_in", fold_in.to_arrow())
    (pairs,) = con.execute("select count(*) from recommendations").fetchone()
    (in_history,) = con.execute(
        "select count(*) from recommendations r join fold_in f using (uid, sid)"
    ).fetchone()
    (item0_users,) = con.execute("select count(distinct uid) from fold_in where sid = 0").fetchone()
    con.close()
    assert pairs == 15 * len(data.users_of("test")) == 1500
    assert item0_users > 0  # the case that went wrong is present
    assert in_history == 0
