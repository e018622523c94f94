"""LCER on hand-made recommenders whose right counterfactual is known."""

from __future__ import annotations

import pytest
import torch
from tiny_recommenders import CountingRecommender, LinearRecommender, random_linear

from lcer_core.early_stop import record_run
from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import LCER, LCERConfig, get_explainer, lcer_reference_loop
from lcer_core.metrics import evaluate_pairs, summarize
from lcer_core.pairs import build_pairs, histories_from_lists
from lcer_core.recommender.recording import RecordingRecommender


def _one_cause() -> LinearRecommender:
    # Items 0-3 are the user's; item 4 is recommended mostly because of item 0 (weight 2.0);
    # item 5 has a constant score of 1.0 and is the (K+1)-th item for K = 1.
    w = torch.zeros(6, 6)
    w[0, 4], w[1, 4], w[2, 4], w[3, 4] = 2.0, 0.1, 0.1, 0.1
    b = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    return LinearRecommender(w, b)


def _two_causes() -> LinearRecommender:
    # Item 4 needs both item 0 and item 1 removed to fall under item 5's score.
    w = torch.zeros(6, 6)
    w[0, 4], w[1, 4], w[2, 4], w[3, 4] = 0.8, 0.8, 0.2, 0.2
    b = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    return LinearRecommender(w, b)


def _pairs(rec, k=1):
    return build_pairs(rec, histories_from_lists([0], [[0, 1, 2, 3]]), k)


def test_finds_the_single_cause_and_metrics_count_it():
    rec = _one_cause()
    pairs = _pairs(rec)
    assert pairs.targets.tolist() == [4] and pytest.approx(pairs.thresholds.item()) == 1.0
    expl = LCER(LCERConfig(alpha=0.1, lam=0.01, steps=3000)).explain(rec, pairs, seed=3)
    assert pairs.items[0][expl.removed[0]].tolist() == [0]
    out = evaluate_pairs(rec, pairs, expl)
    # Without item 0: item 4 scores 0.3 < 1.0, so item 5 takes rank 1: necessary.
    # With only item 0: item 4 scores 2.0 > 1.0, rank 1: sufficient.
    assert out.necessary.tolist() == [True] and out.sufficient.tolist() == [True]
    assert out.rank_after.tolist() == [2]
    m = summarize(out)
    assert m == {
        "n_pairs": 1,
        "val_pct": 100.0,
        "len": 1.0,
        "ps_pct": 100.0,
        "pn_pct": 100.0,
        "fns_pct": 100.0,
    }
    # The cause is the most important item.
    assert int(torch.argmax(torch.nan_to_num(expl.importance[0], nan=-1))) == 0


def test_finds_a_two_item_cause():
    rec = _two_causes()
    expl = LCER(LCERConfig(alpha=0.1, lam=0.01, steps=600)).explain(rec, _pairs(rec), seed=0)
    assert sorted(_pairs(rec).items[0][expl.removed[0]].tolist()) == [0, 1]


def test_no_ce_when_nothing_can_flip_the_item():
    w = torch.zeros(6, 6)
    b = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0, 1.0])  # item 4 wins on its bias alone
    rec = LinearRecommender(w, b)
    expl = LCER(LCERConfig(steps=200)).explain(rec, _pairs(rec), seed=0)
    assert not expl.found.any()
    m = summarize(evaluate_pairs(rec, _pairs(rec), expl))
    assert m["val_pct"] == 0.0 and m["len"] != m["len"]  # NaN: no CE to measure


def test_another_seed_gives_another_answer():
    # same seed, same answer and batch independence: the shared contract (test_contracts.py)
    rec = random_linear(40, seed=2, bias_scale=0.5)
    lists = [list(range(u, u + 8 + u % 5)) for u in range(6)]
    pairs = build_pairs(rec, histories_from_lists(list(range(6)), lists), 3)
    cfg = LCERConfig(alpha=0.05, lam=0.02, steps=150)
    a = LCER(cfg).explain(rec, pairs, seed=7)
    c = LCER(cfg).explain(rec, pairs, seed=8)
    assert not torch.equal(a.importance.nan_to_num(), c.importance.nan_to_num())


def test_reference_loop_agrees_with_the_batched_engine():
    rec = random_linear(30, seed=4, bias_scale=0.5)
    lists = [list(range(u, u + 6)) for u in range(4)]
    pairs = build_pairs(rec, histories_from_lists(list(range(4)), lists), 2)
    cfg = LCERConfig(alpha=0.05, lam=0.02, steps=120)
    fast = LCER(cfg).explain(rec, pairs, seed=1)
    slow = lcer_reference_loop(rec, pairs, cfg, seed=1)
    assert torch.equal(fast.removed, slow.removed)


def test_early_stop_keeps_the_answer_on_easy_pairs():
    rec = _one_cause()
    pairs = _pairs(rec)
    expl = LCER(LCERConfig(steps=3000, patience=100)).explain(rec, pairs, seed=3)
    assert pairs.items[0][expl.removed[0]].tolist() == [0]


@pytest.mark.parametrize("min_delta", [0.0, 0.01])
def test_early_stop_does_not_depend_on_batching_and_saves_steps(min_delta):
    # Pairs finish at different steps; the live ones are compacted several times. Each pair's
    # answer (set and importance) must be what it gets when explained alone.
    rec = random_linear(40, seed=2, bias_scale=0.5)
    lists = [list(range(u, u + 6 + 3 * (u % 4))) for u in range(10)]
    pairs = build_pairs(rec, histories_from_lists(list(range(10)), lists), 3)
    cfg = LCERConfig(alpha=0.05, lam=0.02, steps=600, patience=40, min_delta=min_delta)
    calls = []
    counting = CountingRecommender(rec)
    a = LCER(cfg).explain(counting, pairs, seed=5, progress=lambda d, t: calls.append(d))
    assert counting.rows < 0.8 * len(pairs) * 600  # finished pairs are no longer scored
    for i in range(len(pairs)):
        one = LCER(cfg).explain(rec, pairs.select(slice(i, i + 1)), seed=5)
        n = int(pairs.mask[i].sum())
        assert torch.equal(one.removed[0, :n], a.removed[i, :n])
        assert torch.allclose(one.importance[0, :n], a.importance[i, :n], atol=1e-6)
    full = LCER(LCERConfig(alpha=0.05, lam=0.02, steps=600)).explain(rec, pairs, seed=5)
    assert full.steps is not None and bool((full.steps == 600).all())
    assert a.steps is not None and int(a.steps.sum()) < 0.8 * len(pairs) * 600
    assert a.found.sum() >= full.found.sum() - 3  # the answers stay about as good
    assert calls[-1] == len(pairs) * 600  # progress completes even when stopping early


def _stopped_by_the_rule(rec, pairs, cfg: LCERConfig, seed: int) -> tuple[torch.Tensor, list]:
    """The removed sets and step counts early stop must give, worked out from a run without it:
    each pair's losses step by step, its stop step by the documented rule, its best set before."""
    recorder = RecordingRecommender(rec)
    LCER(LCERConfig(alpha=cfg.alpha, lam=cfg.lam, steps=cfg.steps)).explain(
        recorder, pairs, seed=seed
    )
    scores, removed = torch.stack(recorder.scored), torch.stack(recorder.removed)  # [T, P], [T, N]
    mask = pairs.mask
    pair_of = torch.repeat_interleave(torch.arange(len(pairs)), mask.sum(1))
    lengths = torch.zeros_like(scores).index_add_(1, pair_of, removed.float())
    losses = (cfg.alpha + scores - pairs.thresholds).clamp_min(0) + cfg.lam * lengths
    expected, stops = torch.zeros_like(mask), []
    for p in range(len(pairs)):
        ref, since, stop = float("inf"), 0, cfg.steps
        for t, loss in enumerate(losses[:, p].tolist()):
            if loss < ref - cfg.min_delta:
                ref, since = loss, 0
            else:
                since += 1
            if since >= cfg.patience:
                stop = t + 1
                break
        stops.append(stop)
        best = int(losses[:stop, p].argmin())
        if scores[best, p] < pairs.thresholds[p]:
            expected[p, : int(mask[p].sum())] = removed[best][pair_of == p]
    return expected, stops


@pytest.mark.parametrize(("patience", "min_delta"), [(15, 0.0), (25, 0.01), (40, 0.05)])
def test_early_stop_follows_its_rule_exactly(patience, min_delta):
    # A pair stops for good once `patience` steps pass without its loss dropping by more than
    # `min_delta`; its answer is the best state before that. Finished pairs wait a few steps
    # for compaction: they must neither move nor come back to life meanwhile.
    rec = random_linear(30, seed=4, bias_scale=0.5)
    lists = sorted(([*range(u, u + 4 + 2 * (u % 5))] for u in range(12)), key=len)
    pairs = build_pairs(rec, histories_from_lists(list(range(12)), lists), 3)
    assert bool((pairs.lengths[1:] >= pairs.lengths[:-1]).all())  # LCER's own order
    cfg = LCERConfig(alpha=0.05, lam=0.02, steps=400, patience=patience, min_delta=min_delta)
    got = LCER(cfg).explain(rec, pairs, seed=7)
    removed, stops = _stopped_by_the_rule(rec, pairs, cfg, seed=7)
    assert torch.equal(got.removed, removed)
    assert got.steps is not None and got.steps.tolist() == stops
    assert min(stops) < max(stops) < cfg.steps  # pairs stopped, at different steps
    # The replay tool reads the rule the same way, from one recorded run.
    run = record_run(rec, pairs, cfg, seed=7)
    replayed = run.explanations(run.stop_steps(cfg.patience, cfg.min_delta))
    assert torch.equal(replayed.removed, removed) and replayed.steps.tolist() == stops
    full = LCER(LCERConfig(alpha=0.05, lam=0.02, steps=400)).explain(rec, pairs, seed=7)
    assert torch.equal(run.explanations().removed, full.removed)
    oracle = run.explanations(run.oracle_steps())  # the last improvement keeps every answer
    assert torch.equal(oracle.removed, full.removed) and bool((run.oracle_steps() <= 400).all())


@pytest.mark.parametrize(
    "params",
    [
        {"alpha": -0.1},
        {"lam": -1.0},
        {"steps": 0},
        {"alpha": float("nan")},
        {"steps": 10**9},
        {"patience": -1},
        {"min_delta": -0.5},
    ],
)
def test_invalid_hyperparameters_are_refused(params):
    with pytest.raises(InvalidParameterError):
        get_explainer("lcer", **params)


def test_k_must_leave_room():
    rec = random_linear(6, seed=0)
    with pytest.raises(InvalidParameterError):
        build_pairs(rec, histories_from_lists([0], [[0, 1, 2, 3]]), 2)


def test_removing_every_item_keeps_the_optimisation_finite():
    # A one-item history is emptied by half of the samples: the L2 normalisation of an empty
    # input must not turn the gradient into NaN (it did once, silently).
    from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender

    torch.manual_seed(0)
    rec = MultVAERecommender(MultVAE(30, MultVAEConfig(hidden=16, latent=8)), "cpu")
    pairs = build_pairs(rec, histories_from_lists([0, 1], [[3], [4, 5]]), 3)
    expl = LCER(LCERConfig(steps=80)).explain(rec, pairs, seed=0)
    assert torch.isfinite(expl.importance[pairs.mask]).all()
