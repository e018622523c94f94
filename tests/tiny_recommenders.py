"""Hand-made recommenders whose scores can be worked out on paper, for the explainer tests.

``LinearRecommender`` scores ``x @ W + b``: removing interacted item j lowers the score of
item c by exactly ``W[j, c]``. ``CountingRecommender`` wraps any recommender and counts
the inputs it scores, to check query budgets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcer_core.recommender.base import Recommender

__all__ = ["CountingRecommender", "LinearRecommender", "random_linear"]


class LinearRecommender(Recommender):
    """Scores ``x @ W + b`` with a hand-set ``W: [M, M]`` and ``b: [M]``; differentiable in x."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight must be square [M, M], got {tuple(weight.shape)}")
        self.weight = weight
        self.bias = (
            torch.zeros(weight.shape[0])
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


class CountingRecommender(Recommender):
    """Delegates to ``inner`` and counts calls and scored inputs (rows)."""

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.n_items = inner.n_items
        self.calls = 0
        self.rows = 0

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def scores(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.inner.scores(x)


def random_linear(n_items: int, seed: int = 0, bias_scale: float = 1.0) -> LinearRecommender:
    """A linear recommender with Gaussian weights and biases, reproducible from ``seed``.

    A larger ``bias_scale`` makes recommendations harder to flip by removing items.
    """
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_items, n_items, generator=gen)
    bias = torch.randn(n_items, generator=gen) * bias_scale
    return LinearRecommender(weight, bias)
