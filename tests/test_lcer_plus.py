"""lcer-plus on hand-made recommenders where each step's answer is worked out by hand."""

from __future__ import annotations

import pytest
import torch
from tiny_recommenders import CountingRecommender, LinearRecommender, random_linear

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import LCER, LCERConfig, LCERPlus, LCERPlusConfig, get_explainer
from lcer_core.explainers.lcer_plus import _choose
from lcer_core.explainers.selector import Selector
from lcer_core.metrics import evaluate_pairs
from lcer_core.pairs import build_pairs, histories_from_lists

# Items 0-3 are the user's (biases -10: they never enter a list), 4 is recommended (K = 1),
# 5 is the runner-up, 6 is filler.


def _runner_up_falls_too() -> LinearRecommender:
    """Removing item 0 lowers the target *and* the runner-up: it passes the threshold test
    (1.0 < 1.5) but the target keeps rank 1 (1.0 > 0.5). Removing item 1 alone, or {0, 1},
    pushes the target out of the top-1. By hand: the minimal top-K set is {1}."""
    w = torch.zeros(7, 7)
    w[0, 4], w[1, 4] = 1.0, 1.0  # target: 2.0
    w[0, 5] = 1.0  # runner-up: 0.5 + 1.0 = 1.5 (the threshold g_{K+1})
    b = torch.tensor([-10.0, -10.0, -10.0, -10.0, 0.0, 0.5, -5.0])
    return LinearRecommender(w, b)


def _three_small_causes() -> LinearRecommender:
    """Target 3.0 (items 0, 1, 2 give 1.0 each), runner-up constant 2.5. Removing any one of
    0, 1, 2 flips it (2.0 < 2.5), but only all three alone keep it first (3.0 >= 2.5): the
    one sufficient set is {0, 1, 2}."""
    w = torch.zeros(7, 7)
    w[0, 4] = w[1, 4] = w[2, 4] = 1.0
    b = torch.tensor([-10.0, -10.0, -10.0, -10.0, 0.0, 2.5, -5.0])
    return LinearRecommender(w, b)


def _pairs(rec):
    return build_pairs(rec, histories_from_lists([0], [[0, 1, 2, 3]]), 1)


def _sets(*sets: list[int]) -> torch.Tensor:
    """[1, C, 4] candidate masks over the history [0, 1, 2, 3]."""
    out = torch.zeros(1, len(sets), 4, dtype=torch.bool)
    for c, s in enumerate(sets):
        out[0, c, s] = True
    return out


def _select(rec, sets, cfg, importance=None):
    pairs = _pairs(rec)
    scores = rec.scores_of_sets(
        pairs.items.expand(sets.shape[1], -1), (pairs.mask & ~sets[0]).float(), pairs.targets[:, None].expand(sets.shape[1], 1)
    )[:, 0][None]  # fmt: skip
    imp = torch.full((1, 4), 0.5) if importance is None else torch.tensor([importance])
    calls = torch.zeros(1, dtype=torch.long)
    out = _choose(Selector(rec, pairs, cfg, calls), cfg, sets, scores, imp)
    return pairs.items[0][out.removed[0]].tolist(), out, pairs


def _plain(**kw) -> LCERPlusConfig:
    base = dict(candidates=1, prefix=False, prune=False, sufficiency=0.0, fallback=False)
    return LCERPlusConfig(**{**base, **kw})


def test_topk_test_differs_from_the_threshold_where_it_should():
    rec = _runner_up_falls_too()
    pairs = _pairs(rec)
    assert pairs.targets.tolist() == [4] and pytest.approx(pairs.thresholds.item()) == 1.5
    pool = _sets([0], [0, 1])
    # the threshold test takes the shorter {0}; the top-K test refuses it and takes {0, 1}
    assert _select(rec, pool, _plain(select="threshold"))[0] == [0]
    chosen, _, pairs = _select(rec, pool, _plain(select="topk"))
    assert chosen == [0, 1]
    # {0} alone: no set under the top-K test; with the fallback, LCER's own answer {0}
    assert _select(rec, _sets([0]), _plain(select="topk"))[0] == []
    assert _select(rec, _sets([0]), _plain(select="topk", fallback=True))[0] == [0]


def test_pruning_gives_the_minimal_set():
    rec = _runner_up_falls_too()
    # from {0, 1, 2, 3}: putting back 0, 2 or 3 keeps the target out; putting back 1 does not
    chosen, out, pairs = _select(rec, _sets([0, 1, 2, 3]), _plain(prune=True))
    assert chosen == [1]
    assert evaluate_pairs(rec, pairs, out).necessary.tolist() == [True]
    # the test of the chosen set, then rounds of 4, 3 and 2 single put-backs ({1} is left)
    assert out.forward_calls.tolist() == [1 + 4 + 3 + 2]


def test_importance_prefix_is_the_shortest_passing_prefix():
    rec = _runner_up_falls_too()
    # importance order 0, 2, 3, 1: the prefixes {0}, {0,2}, {0,2,3} keep the target first;
    # {0,2,3,1} is the first that passes; pruned, it is {1}
    empty = _sets([])
    chosen, _, _ = _select(rec, empty, _plain(prefix=True), [0.9, 0.1, 0.8, 0.2])
    assert chosen == [0, 1, 2, 3]
    chosen, _, _ = _select(rec, empty, _plain(prefix=True, prune=True), [0.9, 0.1, 0.8, 0.2])
    assert chosen == [1]
    # order 1, 0, ...: the prefix {1} passes at once
    assert _select(rec, empty, _plain(prefix=True), [0.1, 0.9, 0.2, 0.3])[0] == [1]


def test_sufficiency_aware_choice_and_pruning_keep_a_sufficient_set():
    rec = _three_small_causes()
    pool = _sets([0], [0, 1, 2])
    # both pass; without the bonus the shorter {0}; {0,1,2} is sufficient and counts 3 shorter
    assert _select(rec, pool, _plain(candidates=2))[0] == [0]
    assert _select(rec, pool, _plain(candidates=2, sufficiency=3.0))[0] == [0, 1, 2]
    # pruning a sufficient set keeps it sufficient ({1, 2} alone: 2.0 < 2.5) ...
    chosen, out, pairs = _select(rec, pool, _plain(candidates=2, sufficiency=3.0, prune=True))
    assert chosen == [0, 1, 2]
    assert evaluate_pairs(rec, pairs, out).sufficient.tolist() == [True]
    # ... and without the bonus pruning goes down to one item
    assert len(_select(rec, _sets([0, 1, 2]), _plain(prune=True))[0]) == 1


def test_with_every_step_off_it_is_lcer():
    rec = random_linear(12, seed=4, bias_scale=0.3)
    hist = histories_from_lists([0, 1, 2], [[0, 1, 2, 3, 4], [2, 5, 6], [1, 3, 7, 8]])
    pairs = build_pairs(rec, hist, 2)
    cfg = dict(alpha=0.1, lam=0.01, steps=200)
    ref = LCER(LCERConfig(**cfg)).explain(rec, pairs, seed=5)
    plus = LCERPlus(_plain(select="threshold", **cfg)).explain(rec, pairs, seed=5)
    assert torch.equal(ref.removed, plus.removed)
    assert torch.allclose(ref.importance, plus.importance, equal_nan=True)


def test_end_to_end_counts_calls_and_does_not_depend_on_batching():
    counting = CountingRecommender(_runner_up_falls_too())
    pairs = _pairs(counting)
    out = LCERPlus(LCERPlusConfig(steps=300)).explain(counting, pairs, seed=1)
    assert pairs.items[0][out.removed[0]].tolist() == [1]
    assert evaluate_pairs(counting.inner, pairs, out).necessary.tolist() == [True]
    # every input the recommender scored after building the pairs is counted
    assert int(out.forward_calls.sum()) == counting.rows - 1
    rec = random_linear(12, seed=4, bias_scale=0.3)
    hist = histories_from_lists([0, 1, 2], [[0, 1, 2, 3, 4], [2, 5, 6], [1, 3, 7, 8]])
    pairs = build_pairs(rec, hist, 2)
    whole = LCERPlus(LCERPlusConfig(steps=200, restarts=2)).explain(rec, pairs, seed=2)
    parts = LCERPlus(LCERPlusConfig(steps=200, restarts=2, max_pairs=2)).explain(rec, pairs, seed=2)
    assert torch.equal(whole.removed, parts.removed)
    assert whole.found.all()


def test_registered_with_lcer_params_and_bad_values_refused():
    ex = get_explainer("lcer-plus", alpha=0.2, lam=0.02, steps=10)
    assert ex.dump_config()["method"] == "lcer-plus" and ex.dump_config()["lam"] == 0.02
    for bad in (
        {"select": "magic"},
        {"candidates": 0},
        {"restarts": 0},
        {"sufficiency": -1.0},
        {"patience": 10},
    ):
        with pytest.raises(InvalidParameterError):
            LCERPlusConfig(**bad)


def test_its_whole_configuration_travels_with_the_run():
    from lcer_core.runs import run_spec

    common = dict(dataset="ml-100k", k=5, steps=50, seed=1, n_users=3, model_key="m1")
    spec = run_spec(method="lcer-plus", alpha=0.1, lam=0.04, **common)
    config = spec.explainer_config()
    assert config["method"] == "lcer-plus" and config["lam"] == 0.04 and config["steps"] == 50
    assert config["select"] == "topk" and config["sufficiency"] == 8.0 and config["prune"]
    other = run_spec(method="lcer-plus", alpha=0.1, lam=0.05, **common)
    assert other.run_id != spec.run_id  # λ is part of the run's key, as for lcer
    common.pop("steps")
    assert run_spec(method="kaffes-topk", **common).alpha is None  # a baseline has no α
    with pytest.raises(InvalidParameterError, match="no option"):
        run_spec(method="kaffes-topk", alpha=0.1, **common)  # refused, not dropped
