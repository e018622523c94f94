"""Hand-made recommenders whose scores can be worked out on paper, for the explainer tests
(the linear ones live in :mod:`lcer_core.testing.recommenders`, for plugins' tests too).

``LinearRecommender`` scores ``x @ W + b``: removing interacted item j lowers the score of
item c by exactly ``W[j, c]``. ``CountingRecommender`` wraps any recommender and counts
the inputs it scores, to check query budgets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcer_core.amortised_store import remember
from lcer_core.explainers.amortised import AmortisedConfig, AmortisedTraining, fit_network
from lcer_core.keys import content_key
from lcer_core.pairs import Histories, build_pairs
from lcer_core.recommender.base import Recommender
from lcer_core.testing.recommenders import LinearRecommender, random_linear, small_histories

__all__ = ["CountingRecommender", "LinearRecommender", "random_linear", "tiny_amortised"]


def tiny_amortised(rec: Recommender, label: str, k: int = 3) -> AmortisedConfig:
    """A tiny amortised network for ``rec``, trained (in memory) on 24 histories of users
    100.. that the tests never explain: never on the pairs it explains."""
    h = small_histories(rec.n_items, 24, seed=11)
    pairs = build_pairs(rec, Histories(h.users + 100, h.items, h.mask), k)
    training = AmortisedTraining(epochs=3, batch=24, dim=4, hidden=8)
    net, _ = fit_network(rec, pairs, training)
    key = content_key({"tiny-amortised": label})
    remember(key, net, training)
    return AmortisedConfig(network=key)


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
