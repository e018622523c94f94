"""No stage holds a dense users × items matrix beyond one batch (issue 17, item 4).

Training and evaluation read sparse rows and densify one batch; the top-K is built in
chunks of users. Each is checked to give exactly what the dense path gives, with chunks
made small enough here that the chunking really happens.
"""

from __future__ import annotations

import pytest
import torch
from tiny_recommenders import random_linear

from lcer_core import pairs as pairs_mod
from lcer_core.pairs import build_pairs, histories_from_lists
from lcer_core.recommender import training
from lcer_core.recommender.multvae import MultVAEConfig
from lcer_core.recommender.training import InteractionRows, evaluate_ranking, fit_multvae


def _random_binary(n_users: int, n_items: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n_users, n_items, generator=gen) < 0.15).float()
    x[3] = 0.0  # a user without interactions in this part
    return x


def _sparse(x: torch.Tensor) -> InteractionRows:
    rows, cols = x.nonzero(as_tuple=True)
    perm = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(1))
    return InteractionRows.from_pairs(rows[perm], cols[perm], x.shape[0], x.shape[1])


def test_sparse_rows_give_the_dense_rows() -> None:
    x = _random_binary(50, 37, seed=0)
    rows = _sparse(x)
    assert rows.shape == (50, 37) and len(rows) == 50
    assert torch.equal(rows[0:50], x)
    assert torch.equal(rows[10:13], x[10:13])
    index = torch.tensor([7, 3, 3, 49, 0])
    assert torch.equal(rows[index], x[index])
    assert rows[torch.tensor([], dtype=torch.long)].shape == (0, 37)


def test_training_on_sparse_rows_is_training_on_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _random_binary(90, 40, seed=2)
    cfg = MultVAEConfig(hidden=16, latent=4, epochs=3, batch_size=25)

    def run(train, vtr, vte):
        gen = fit_multvae(train, vtr, vte, config=cfg, seed=3)
        reports = []
        while True:
            try:
                reports.append(next(gen))
            except StopIteration as stop:
                return reports, stop.value

    dense_reports, dense_model = run(x[:70], x[70:80], x[80:90])
    # Evaluation in batches of 3 users (not the whole validation set at once).
    monkeypatch.setattr(training, "DENSE_BATCH_CELLS", 3 * 40)
    sparse_reports, sparse_model = run(_sparse(x[:70]), _sparse(x[70:80]), _sparse(x[80:90]))
    assert [(r.loss, r.val_ndcg100) for r in dense_reports] == [
        (r.loss, r.val_ndcg100) for r in sparse_reports
    ]
    for a, b in zip(
        dense_model.state_dict().values(), sparse_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert evaluate_ranking(sparse_model, _sparse(x[80:90]), _sparse(x[70:80])) == (
        evaluate_ranking(dense_model, x[80:90], x[70:80])
    )


def test_top_k_in_chunks_of_users(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = random_linear(30, seed=4)
    gen = torch.Generator().manual_seed(5)
    lists = [torch.randperm(30, generator=gen)[: 2 + u % 7].tolist() for u in range(23)]
    hist = histories_from_lists(list(range(23)), lists)
    whole = build_pairs(rec, hist, 4)
    seen: list[int] = []
    scores_of_sets = type(rec).scores_of_sets

    def spy(self, items, weights, targets=None):
        seen.append(items.shape[0])
        return scores_of_sets(self, items, weights, targets)

    monkeypatch.setattr(pairs_mod, "DENSE_BATCH_CELLS", 5 * 30)  # five users per chunk
    monkeypatch.setattr(type(rec), "scores_of_sets", spy)
    chunked = build_pairs(rec, hist, 4)
    assert seen == [5, 5, 5, 5, 3]
    for name in ("users", "targets", "ranks", "items", "mask", "thresholds", "replacements"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
