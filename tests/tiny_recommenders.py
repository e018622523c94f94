"""Hand-made recommenders whose scores can be worked out on paper, for the explainer tests
(the linear ones live in :mod:`lcer_core.testing.recommenders`, for plugins' tests too).

``LinearRecommender`` scores ``x @ W + b``: removing interacted item j lowers the score of
item c by exactly ``W[j, c]``. ``CountingRecommender`` wraps any recommender and counts
the inputs it scores, to check query budgets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcer_core.recommender.base import Recommender
from lcer_core.testing.recommenders import LinearRecommender, random_linear

__all__ = ["CountingRecommender", "LinearRecommender", "random_linear"]


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
