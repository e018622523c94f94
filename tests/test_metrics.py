"""The paper's metrics on hand-computed cases, and their properties."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_recommenders import LinearRecommender

from lcer_core.explainers.base import Explanations
from lcer_core.metrics import PairOutcomes, evaluate_pairs, f_ns, summarize
from lcer_core.pairs import build_pairs, histories_from_lists


def test_table_of_hand_computed_outcomes():
    found = torch.tensor([True, True, True, False])
    out = PairOutcomes(
        found=found,
        length=torch.tensor([1, 2, 3, 0]),
        sufficient=torch.tensor([True, False, False, False]),
        necessary=torch.tensor([True, True, False, False]),
        rank_after=torch.tensor([6, 7, 2, 0]),
    )
    m = summarize(out)
    assert m["n_pairs"] == 4 and m["val_pct"] == 75.0 and m["len"] == 2.0
    assert math.isclose(m["ps_pct"], 100 / 3) and math.isclose(m["pn_pct"], 200 / 3)
    assert math.isclose(m["fns_pct"], 2 * (100 / 3) * (200 / 3) / 100)
    assert summarize(out, reports_validity=False)["val_pct"] is None


def test_nothing_found_is_undefined_not_zero():
    out = PairOutcomes(
        *(torch.zeros(3, dtype=torch.bool) for _ in range(2)),
        torch.zeros(3, dtype=torch.bool),
        torch.zeros(3, dtype=torch.bool),
        torch.zeros(3, dtype=torch.long),
    )
    m = summarize(out)
    assert m["val_pct"] == 0.0 and math.isnan(m["len"]) and math.isnan(m["fns_pct"])


def test_ps_and_pn_by_re_ranking():
    # Items 0, 1 are the user's. Item 2 depends on item 0 only; item 3 is a constant 0.5.
    w = torch.zeros(5, 5)
    w[0, 2] = 1.0
    w[1, 4] = 0.2
    b = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.1])
    rec = LinearRecommender(w, b)
    pairs = build_pairs(rec, histories_from_lists([0], [[0, 1]]), 1)
    assert pairs.targets.tolist() == [2]
    # CE {0}: without it item 2 scores 0 < 0.5 (necessary); with only {0} item 2 scores 1 (sufficient).
    good = Explanations(torch.tensor([[True, False]]), torch.full((1, 2), float("nan")))
    out = evaluate_pairs(rec, pairs, good)
    assert out.necessary.tolist() == [True] and out.sufficient.tolist() == [True]
    # CE {1}: removing it leaves item 2 on top (not necessary); only {1} gives item 2 a 0 (not sufficient).
    bad = Explanations(torch.tensor([[False, True]]), torch.full((1, 2), float("nan")))
    out = evaluate_pairs(rec, pairs, bad)
    assert out.necessary.tolist() == [False] and out.sufficient.tolist() == [False]
    assert out.rank_after.tolist() == [1]


@given(st.floats(0, 100), st.floats(0, 100))
def test_f_ns_is_a_harmonic_mean(p, n):
    v = f_ns(p, n)
    assert min(p, n) - 1e-9 <= v <= max(p, n) + 1e-9
    assert math.isclose(v, f_ns(n, p))


@given(
    st.lists(
        st.tuples(st.booleans(), st.booleans(), st.booleans(), st.integers(1, 9)),
        min_size=1,
        max_size=40,
    )
)
def test_summary_bounds(rows):
    found = torch.tensor([r[0] for r in rows])
    out = PairOutcomes(
        found,
        torch.tensor([r[3] if r[0] else 0 for r in rows]),
        torch.tensor([r[1] for r in rows]) & found,
        torch.tensor([r[2] for r in rows]) & found,
        torch.zeros(len(rows), dtype=torch.long),
    )
    m = summarize(out)
    assert 0 <= m["val_pct"] <= 100
    if found.any():
        assert 0 <= m["ps_pct"] <= 100 and 0 <= m["pn_pct"] <= 100 and 1 <= m["len"] <= 9
