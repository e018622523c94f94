"""The paper's metrics on hand-computed cases, and their properties."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_recommenders import LinearRecommender

from lcer_core.explainers.base import Explanations
from lcer_core.metrics import PairOutcomes, evaluate_pairs, f_ns, strict_summary, summarize
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


# ------------------------------------------------------------------ strict, over all pairs


def _outcomes(found, sufficient, necessary, length) -> PairOutcomes:
    return PairOutcomes(
        found=torch.tensor(found),
        length=torch.tensor(length),
        sufficient=torch.tensor(sufficient),
        necessary=torch.tensor(necessary),
        rank_after=torch.zeros(len(found), dtype=torch.long),
    )


def test_a_pair_without_a_set_lowers_strict_ps_and_pn():
    # Four handmade pairs: three sets (both tests pass, necessary only, neither), one pair
    # without a set. The paper's PS/PN divide by the 3 sets; the strict ones by all 4 pairs.
    out = _outcomes(
        found=[True, True, True, False],
        sufficient=[True, False, False, False],
        necessary=[True, True, False, False],
        length=[1, 3, 2, 0],
    )
    paper, strict = summarize(out), strict_summary(out)
    assert math.isclose(paper["ps_pct"], 100 / 3) and math.isclose(paper["pn_pct"], 200 / 3)
    assert strict["strict_ps_pct"] == 25.0 and strict["strict_pn_pct"] == 50.0
    assert strict["strict_ps_pct"] < paper["ps_pct"] and strict["strict_pn_pct"] < paper["pn_pct"]
    assert math.isclose(strict["strict_fns_pct"], f_ns(25.0, 50.0))
    # verified validity: the sets that really drop the item out of the top-K (the PN test)
    assert strict["strict_val_pct"] == strict["strict_pn_pct"] == 50.0
    assert paper["val_pct"] == 75.0  # the method's own acceptance
    assert strict["strict_len"] == 2.0  # over the two verified sets (1 and 3), not all three
    # without that pair, strict = paper: the strict metrics only add the pairs without a set
    three = _outcomes([True] * 3, [True, False, False], [True, True, False], [1, 3, 2])
    s3, p3 = strict_summary(three), summarize(three)
    assert s3["strict_ps_pct"] == p3["ps_pct"] and s3["strict_pn_pct"] == p3["pn_pct"]


def test_a_set_that_fails_a_test_is_no_verified_set():
    # a non-empty set flagged sufficient/necessary but not found cannot count (found gates both)
    out = _outcomes([False, True], [True, True], [True, True], [0, 2])
    strict = strict_summary(out)
    assert strict["strict_ps_pct"] == strict["strict_pn_pct"] == 50.0
    assert strict["strict_len"] == 2.0
    nothing = strict_summary(_outcomes([False] * 3, [False] * 3, [False] * 3, [0] * 3))
    assert nothing["strict_pn_pct"] == 0.0 and nothing["strict_fns_pct"] == 0.0
    assert math.isnan(nothing["strict_len"])


@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 9)), min_size=1, max_size=30)
)
def test_strict_equals_the_paper_when_every_pair_has_a_set(rows):
    suff = [s for s, _, _ in rows]
    nec = [n for _, n, _ in rows]
    out = _outcomes([True] * len(rows), suff, nec, [n for _, _, n in rows])
    paper, strict = summarize(out), strict_summary(out)
    for key in ("ps_pct", "pn_pct", "fns_pct"):
        assert math.isclose(strict[f"strict_{key}"], paper[key], abs_tol=1e-9), key
    assert strict["strict_val_pct"] == paper["pn_pct"]
