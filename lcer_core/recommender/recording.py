"""A recommender wrapper that records what LCER's set scorers are asked, step by step.

For analysis (the early-stop replay, :mod:`lcer_core.early_stop`) and for tests: wrap any
recommender, explain with it, and read back, per call of ``score_removed`` (one per LCER
step), the removed flags it was given (``[N]``, flat over the pairs' interacted items) and the
scores it returned (``[P]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcer_core.recommender.base import Recommender, SetScorer

__all__ = ["RecordingRecommender"]


class RecordingRecommender(Recommender):
    """Delegates to ``inner``; every set scorer it hands out appends to ``removed`` and
    ``scored`` on each ``score_removed`` call."""

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.n_items = inner.n_items
        self.removed: list[Tensor] = []
        self.scored: list[Tensor] = []

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def scores(self, x: Tensor) -> Tensor:
        return self.inner.scores(x)

    def set_scorer_vjp(self, items: Tensor, mask: Tensor, targets: Tensor) -> SetScorer:
        return _RecordingScorer(self.inner.set_scorer_vjp(items, mask, targets), self)


class _RecordingScorer(SetScorer):
    def __init__(self, inner: SetScorer, log: RecordingRecommender) -> None:
        self.inner, self.log = inner, log

    def __call__(self, flat_weights: Tensor) -> Tensor:
        return self.inner(flat_weights)

    def vjp(self, upstream: Tensor) -> Tensor:
        return self.inner.vjp(upstream)

    def score_removed(self, removed: Tensor) -> Tensor:
        out = self.inner.score_removed(removed)
        self.log.removed.append(removed.clone())
        self.log.scored.append(out.clone())
        return out
