"""A recommender wrapper that counts the inputs scored: the "forward calls" of a method."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from lcer_core.recommender.base import Recommender, SetScorer

__all__ = ["CountingRecommender"]


class CountingRecommender(Recommender):
    """Delegates every call to ``inner`` and adds the number of inputs (rows) scored to ``rows``.

    One row is one recommender input: a user's history with some items removed, scored once
    (LCER's step scores one input per pair). The answers are those of ``inner``, unchanged.
    """

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.n_items = inner.n_items
        self.rows = 0

    @property
    def device(self):  # noqa: ANN201 - the inner recommender's device
        return self.inner.device

    def scores(self, x: Tensor) -> Tensor:
        self.rows += int(x.shape[0])
        return self.inner.scores(x)

    def scores_of_sets(
        self, items: Tensor, weights: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        self.rows += int(items.shape[0])
        return self.inner.scores_of_sets(items, weights, targets)

    def set_scorer(
        self, items: Tensor, mask: Tensor, targets: Tensor
    ) -> Callable[[Tensor], Tensor]:
        inner, n = self.inner.set_scorer(items, mask, targets), int(items.shape[0])

        def score(flat_weights: Tensor) -> Tensor:
            self.rows += n
            return inner(flat_weights)

        return score

    def set_scorer_vjp(self, items: Tensor, mask: Tensor, targets: Tensor) -> SetScorer:
        return _CountingScorer(
            self.inner.set_scorer_vjp(items, mask, targets), self, items.shape[0]
        )


class _CountingScorer(SetScorer):
    """A :class:`SetScorer` that counts one input per pair at each scoring call."""

    def __init__(self, inner: SetScorer, owner: CountingRecommender, n_pairs: int) -> None:
        self.inner, self.owner, self.n = inner, owner, int(n_pairs)

    def __call__(self, flat_weights: Tensor) -> Tensor:
        self.owner.rows += self.n
        return self.inner(flat_weights)

    def score_removed(self, removed: Tensor) -> Tensor:
        self.owner.rows += self.n
        return self.inner.score_removed(removed)

    def vjp(self, upstream: Tensor) -> Tensor:
        return self.inner.vjp(upstream)
