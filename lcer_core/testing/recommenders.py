"""Small recommenders whose scores can be worked out on paper, and a small case to explain.

``LinearRecommender`` scores ``x @ W + b``: removing interacted item j lowers the score of
item c by exactly ``W[j, c]``. ``small_case`` gives the users and pairs the
contract suites explain by default; ``fit_tiny`` trains any registered recommender kind on
tiny random interactions, so a suite can run over every kind.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcer_core.pairs import Histories, PairBatch, build_pairs, histories_from_lists
from lcer_core.recommender.base import Recommender

__all__ = [
    "fit_tiny",
    "LinearRecommender",
    "random_linear",
    "small_histories",
    "small_case",
]


class LinearRecommender(Recommender):
    """Scores ``x @ W + b`` with a hand-set ``W: [M, M]`` and ``b: [M]``; differentiable in x."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight must be square [M, M], got {tuple(weight.shape)}")
        self.weight = weight
        self.bias = (
            torch.zeros(weight.shape[0], device=weight.device)
            if bias is None
            else torch.as_tensor(bias, dtype=torch.float32).to(weight.device)
        )
        self.n_items = int(weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def scores(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias

    def to(self, device: torch.device | str) -> LinearRecommender:
        """A copy on ``device``."""
        return LinearRecommender(self.weight.to(device), self.bias.to(device))


def random_linear(n_items: int, seed: int = 0, bias_scale: float = 1.0) -> LinearRecommender:
    """A linear recommender with Gaussian weights and biases, reproducible from ``seed``.

    A larger ``bias_scale`` makes recommendations harder to flip by removing items.
    """
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_items, n_items, generator=gen)
    bias = torch.randn(n_items, generator=gen) * bias_scale
    return LinearRecommender(weight, bias)


def small_histories(n_items: int = 30, n_users: int = 8, seed: int = 0) -> Histories:
    """``n_users`` histories of 2 to 10 items, the fourth one empty and the fifth a single item."""
    gen = torch.Generator().manual_seed(seed)
    lists = [torch.randperm(n_items, generator=gen)[: 2 + u % 9].tolist() for u in range(n_users)]
    if n_users > 4:
        lists[3], lists[4] = [], lists[4][:1]
    return histories_from_lists(list(range(n_users)), lists)


def small_case(
    n_items: int = 30, n_users: int = 8, k: int = 3, seed: int = 0
) -> tuple[LinearRecommender, PairBatch]:
    """A random linear recommender and the top-``k`` pairs of :func:`small_histories`."""
    rec = random_linear(n_items, seed=seed, bias_scale=0.5)
    return rec, build_pairs(rec, small_histories(n_items, n_users, seed), k)


def fit_tiny(
    kind: str, n_items: int = 40, seed: int = 0, device: torch.device | str = "cpu"
) -> Recommender:
    """Recommender kind ``kind`` (a registry name) trained for 2 epochs (where it has epochs) on
    60 random users of density 0.2, validated on 20 more: a tiny instance of any kind."""
    from lcer_core.recommender import get_recommender

    cls = get_recommender(kind)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(80, n_items, generator=gen) < 0.2).float()
    fit = cls.fit(x[:60], x[60:], x[60:], config=cls.config(2), seed=seed, device="cpu")
    while True:
        try:
            next(fit)
        except StopIteration as done:
            return cls.recommender(done.value, device)
