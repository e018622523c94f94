"""A recommender wrapper that counts, at the recommender seam, what a method asks of the model.

Four counts, the same for every explainer (the cost columns of the strict comparison):
``rows`` (inputs scored, whatever was read of them: the older ``calls_per_pair``),
``catalogue_rows`` (whole-catalogue scorings: one row of M scores is 1), ``target_scores``
(single-item scorings: one score read for one item, without the rest of the row) and
``grad_rows`` (gradient steps: one vector-Jacobian product for one pair is 1).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from lcer_core.recommender.base import Recommender, SetScorer

__all__ = ["CountingRecommender"]


class CountingRecommender(Recommender):
    """Delegates every call to ``inner`` and counts it (see the module docstring).

    One row is one recommender input: a user's history with some items removed, scored once
    (LCER's step scores one input per pair). A call that returns whole rows of M scores adds
    to ``catalogue_rows``; one that returns the scores of given targets (``[P, T]``) adds
    P × T to ``target_scores``; a set scorer's ``vjp`` adds one gradient step per pair to
    ``grad_rows``. The answers are those of ``inner``, unchanged.
    """

    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.n_items = inner.n_items
        self.rows = 0
        self.catalogue_rows = 0
        self.target_scores = 0
        self.grad_rows = 0

    @property
    def device(self):  # noqa: ANN201 - the inner recommender's device
        return self.inner.device

    def scores(self, x: Tensor) -> Tensor:
        self.rows += int(x.shape[0])
        self.catalogue_rows += int(x.shape[0])
        return self.inner.scores(x)

    def scores_of_sets(
        self, items: Tensor, weights: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        self.rows += int(items.shape[0])
        if targets is None:
            self.catalogue_rows += int(items.shape[0])
        else:
            self.target_scores += int(targets.numel())
        return self.inner.scores_of_sets(items, weights, targets)

    def set_scorer(
        self, items: Tensor, mask: Tensor, targets: Tensor
    ) -> Callable[[Tensor], Tensor]:
        inner, n = self.inner.set_scorer(items, mask, targets), int(items.shape[0])
        read = int(targets.numel())

        def score(flat_weights: Tensor) -> Tensor:
            self.rows += n
            self.target_scores += read
            return inner(flat_weights)

        return score

    def set_scorer_vjp(self, items: Tensor, mask: Tensor, targets: Tensor) -> SetScorer:
        return _CountingScorer(
            self.inner.set_scorer_vjp(items, mask, targets), self, items.shape[0]
        )


class _CountingScorer(SetScorer):
    """A :class:`SetScorer` that counts one input and one target score per pair at each
    scoring call, and one gradient step per pair at each ``vjp``."""

    def __init__(self, inner: SetScorer, owner: CountingRecommender, n_pairs: int) -> None:
        self.inner, self.owner, self.n = inner, owner, int(n_pairs)

    def _scored(self) -> None:
        self.owner.rows += self.n
        self.owner.target_scores += self.n

    def __call__(self, flat_weights: Tensor) -> Tensor:
        self._scored()
        return self.inner(flat_weights)

    def score_removed(self, removed: Tensor) -> Tensor:
        self._scored()
        return self.inner.score_removed(removed)

    def vjp(self, upstream: Tensor) -> Tensor:
        self.owner.grad_rows += self.n
        return self.inner.vjp(upstream)
