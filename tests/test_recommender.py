"""Mult-VAE behind the Recommender seam: the same recommender tests for every recommender."""

from __future__ import annotations

import pytest
import torch
from tiny_recommenders import random_linear

from lcer_core.pairs import build_pairs, histories_from_lists
from lcer_core.recommender import topk_excluding
from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender
from lcer_core.recommender.training import fit_multvae, ndcg_at, recall_at


def _multvae(n_items: int = 30, seed: int = 0) -> MultVAERecommender:
    torch.manual_seed(seed)
    return MultVAERecommender(MultVAE(n_items, MultVAEConfig(hidden=16, latent=8)), "cpu")


RECOMMENDERS = {"multvae": _multvae, "linear": lambda: random_linear(30, seed=3)}


@pytest.fixture(params=sorted(RECOMMENDERS))
def rec(request):
    return RECOMMENDERS[request.param]()


def _sets():
    hist = histories_from_lists([0, 1, 2], [[0, 3, 5], [1], [2, 4, 6, 8, 10]])
    return hist.items, hist.mask


def test_set_paths_agree_with_dense_scores(rec):
    items, mask = _sets()
    x = torch.zeros(3, rec.n_items).scatter_add(1, items, mask.float())
    dense = rec.scores(x)
    assert torch.allclose(rec.scores_of_sets(items, mask.float()), dense, atol=1e-5)
    targets = torch.tensor([[7, 9], [2, 3], [0, 1]])
    assert torch.allclose(
        rec.scores_of_sets(items, mask.float(), targets), dense.gather(1, targets), atol=1e-5
    )
    scorer = rec.set_scorer(items, mask, targets)
    assert torch.allclose(scorer(torch.ones(int(mask.sum()))), dense.gather(1, targets), atol=1e-5)


def test_scores_are_deterministic_and_differentiable(rec):
    items, mask = _sets()
    x = torch.zeros(3, rec.n_items).scatter_add(1, items, mask.float()).requires_grad_(True)
    s1, s2 = rec.scores(x), rec.scores(x)
    assert torch.equal(s1, s2)
    s1[:, 7].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_top_k_excludes_own_items_and_threshold_is_k_plus_first(rec):
    hist = histories_from_lists([0, 1], [[0, 3, 5], [1, 2]])
    pairs = build_pairs(rec, hist, 4)
    assert len(pairs) == 8
    for row in range(8):
        own = set(pairs.items[row][pairs.mask[row]].tolist())
        assert int(pairs.targets[row]) not in own
    x = torch.zeros(2, rec.n_items).scatter_add(1, hist.items, hist.mask.float())
    top, vals = topk_excluding(rec.scores(x), x > 0, 5)
    assert pairs.targets.view(2, 4).tolist() == top[:, :4].tolist()
    assert torch.allclose(pairs.thresholds.view(2, 4)[:, 0], vals[:, 4])


def test_ranking_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7]])
    held = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    # top-2 = items 0, 1; one hit at position 2: DCG = 1/log2(3); IDCG = 1 + 1/log2(3).
    dcg = 1 / torch.log2(torch.tensor(3.0))
    assert ndcg_at(scores, held, 2).item() == pytest.approx(float(dcg / (1 + dcg)))
    assert recall_at(scores, held, 2).item() == pytest.approx(0.5)


def test_training_is_reproducible_and_learns():
    gen = torch.Generator().manual_seed(0)
    # Two clusters of users who like two disjoint halves of the catalogue.
    x = torch.zeros(120, 20)
    for u in range(120):
        half = torch.arange(10) + (10 if u % 2 else 0)
        x[u, half[torch.randperm(10, generator=gen)[:6]]] = 1.0
    cfg = MultVAEConfig(hidden=32, latent=8, epochs=30, batch_size=40)

    def run():
        g = fit_multvae(x[:100], x[100:110], x[110:120], config=cfg, seed=5)
        reports = []
        while True:
            try:
                reports.append(next(g))
            except StopIteration as stop:
                return reports, stop.value

    r1, m1 = run()
    r2, m2 = run()
    assert [r.loss for r in r1] == [r.loss for r in r2]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert r1[-1].val_ndcg100 > 0.5  # the clusters are learnt
    assert r1[0].loss > r1[-1].loss


def test_fused_gradient_equals_autograd(rec):
    from lcer_core.recommender.base import AutogradSetScorer

    items, mask = _sets()
    targets = torch.tensor([7, 2, 1])
    fused = rec.set_scorer_vjp(items, mask, targets)
    generic = AutogradSetScorer(rec.set_scorer(items, mask, targets[:, None]))
    for w in (
        torch.rand(int(mask.sum())),
        (torch.rand(int(mask.sum())) > 0.5).float(),
        torch.zeros(int(mask.sum())),
    ):
        up = torch.tensor([1.0, 0.0, 2.0])
        assert torch.allclose(fused(w), generic(w), atol=1e-5)
        assert torch.allclose(fused.vjp(up), generic.vjp(up), atol=1e-5)


def test_fused_scorer_on_removed_entries_equals_autograd(rec):
    # LCER's path: 0/1 inputs given as the removed entries, backward only where upstream != 0
    from lcer_core.recommender.base import AutogradSetScorer

    items, mask = _sets()
    targets = torch.tensor([7, 2, 1])
    fused = rec.set_scorer_vjp(items, mask, targets)
    generic = AutogradSetScorer(rec.set_scorer(items, mask, targets[:, None]))
    n = int(mask.sum())
    gen = torch.Generator().manual_seed(0)
    nothing_kept = torch.zeros(n, dtype=torch.bool)
    nothing_kept[: int(mask[0].sum())] = True  # every item of the first pair removed
    for removed in (
        torch.rand(n, generator=gen) > 0.5,
        torch.zeros(n, dtype=torch.bool),
        nothing_kept,
    ):
        w = (~removed).float()
        for up in (torch.tensor([1.0, 0.0, 2.0]), torch.zeros(3), torch.ones(3)):
            assert torch.allclose(fused.score_removed(removed), generic(w), atol=1e-5)
            grad = fused.vjp(up)
            assert torch.isfinite(grad).all()
            assert torch.allclose(grad, generic.vjp(up), atol=1e-5)


def test_fused_scorer_with_uneven_runs_of_shared_histories(rec):
    # Runs of 2, 1 and 3 pairs sharing a history: the irregular (scatter) path of the fused scorer.
    hist = histories_from_lists(list(range(6)), [[0, 3], [0, 3], [1, 2, 4], [5], [5], [5]])
    targets = torch.tensor([7, 8, 9, 10, 11, 12])
    fused = rec.set_scorer_vjp(hist.items, hist.mask, targets)
    x = torch.zeros(6, rec.n_items).scatter_add(1, hist.items, hist.mask.float())
    w = torch.rand(int(hist.mask.sum()))
    dense_x = torch.zeros(6, hist.items.shape[1]).masked_scatter(hist.mask, w)
    want = rec.scores_of_sets(hist.items, dense_x, targets[:, None])[:, 0]
    assert torch.allclose(fused(w), want, atol=1e-5)
    assert torch.allclose(
        fused(torch.ones(int(hist.mask.sum()))),
        rec.scores(x).gather(1, targets[:, None])[:, 0],
        atol=1e-5,
    )
