"""The recommender seam: anything that maps interaction vectors to item scores, differentiably."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Recommender",
    "SetScorer",
    "AutogradSetScorer",
    "dense_from_sets",
    "history_mask",
    "topk_excluding",
    "rank_of",
]


def dense_from_sets(items: Tensor, weights: Tensor, n_items: int) -> Tensor:
    """Scatter padded item lists into dense vectors: ``x[p, items[p, l]] += weights[p, l]``.

    Padding entries must carry weight 0. Differentiable in ``weights``.
    """
    x = torch.zeros(items.shape[0], n_items, dtype=weights.dtype, device=weights.device)
    return x.scatter_add(1, items, weights)


def history_mask(items: Tensor, mask: Tensor, n_items: int) -> Tensor:
    """Dense ``[B, M]`` bool mask of the items in each padded history (``items[b, l]`` where ``mask[b, l]``).

    Padding entries (index 0, mask False) go to a sentinel column that is cut off: a scatter of
    the mask itself would let a padding ``False`` overwrite a real item 0 (scatter keeps one of
    several writes to the same index, not their OR).
    """
    out = torch.zeros(items.shape[0], n_items + 1, dtype=torch.bool, device=items.device)
    return out.scatter_(1, items.masked_fill(~mask, n_items), True)[:, :n_items]


class SetScorer(ABC):
    """Scores one target per pair for flat item weights, and the gradient of the last call.

    ``scorer(w)`` takes the weights ``w: [N]`` of the entries ``items[mask]`` (row-major) and
    returns ``[P]`` scores; ``scorer.vjp(up)`` then returns ``d(sum(up * scores)) / dw: [N]``.
    The explainers' inner loop runs on this pair of calls, so a recommender can give a fused,
    hand-written backward pass instead of autograd's.
    """

    @abstractmethod
    def __call__(self, flat_weights: Tensor) -> Tensor: ...

    @abstractmethod
    def vjp(self, upstream: Tensor) -> Tensor: ...

    def score_removed(self, removed: Tensor) -> Tensor:
        """Scores once the entries flagged in ``removed: [N] bool`` are taken out (weights 1 - removed).

        The same as ``scorer(1 - removed)``; binary inputs let a recommender work on the
        removed entries only (LCER's forward values are hard 0/1 indicators).
        """
        return self(1.0 - removed.float())


class AutogradSetScorer(SetScorer):
    """The generic :class:`SetScorer`: any differentiable ``score(w) -> [P, 1]`` through autograd."""

    def __init__(self, score: Callable[[Tensor], Tensor]) -> None:
        self._score = score
        self._w: Tensor | None = None
        self._out: Tensor | None = None

    def __call__(self, flat_weights: Tensor) -> Tensor:
        with torch.enable_grad():
            self._w = flat_weights.detach().requires_grad_(True)
            self._out = self._score(self._w)[:, 0]
        return self._out.detach()

    def vjp(self, upstream: Tensor) -> Tensor:
        assert self._w is not None and self._out is not None, "call the scorer first"
        (grad,) = torch.autograd.grad(self._out, self._w, upstream)
        return grad


class Recommender(ABC):
    """Maps a batch of interaction vectors ``x: [B, M]`` to item scores ``[B, M]``.

    LCER needs gradients through :meth:`scores`; the other explainers only call it.
    Subclasses may override :meth:`scores_of_sets` with a faster path for inputs
    given as (padded) lists of interacted items, which is what the explainers use.
    """

    n_items: int

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the model's tensors live."""

    @abstractmethod
    def scores(self, x: Tensor) -> Tensor:
        """Scores ``[B, M]`` for interaction vectors ``[B, M]``; deterministic (no dropout, no sampling)."""

    def scores_of_sets(
        self, items: Tensor, weights: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        """Scores for inputs ``x[p, items[p, l]] = weights[p, l]`` (weights 0 at padding).

        Returns ``[P, M]``, or ``[P, T]`` gathered at ``targets: [P, T]`` when given.
        """
        s = self.scores(dense_from_sets(items, weights, self.n_items))
        return s if targets is None else s.gather(1, targets)

    def set_scorer(
        self, items: Tensor, mask: Tensor, targets: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """A function ``flat_weights [N] -> scores [P, T]`` for fixed ``items``/``mask``/``targets``.

        ``flat_weights`` are the weights of the valid entries ``items[mask]`` in row-major
        order. Called once per batch by iterative explainers: override to precompute what
        does not change between calls (Mult-VAE uses an embedding bag over ``items[mask]``).
        """

        def score(flat_weights: Tensor) -> Tensor:
            weights = torch.zeros(mask.shape, dtype=flat_weights.dtype, device=flat_weights.device)
            weights = weights.masked_scatter(mask, flat_weights)
            return self.scores_of_sets(items, weights, targets)

        return score

    def set_scorer_vjp(self, items: Tensor, mask: Tensor, targets: Tensor) -> SetScorer:
        """A :class:`SetScorer` for one target per pair (``targets: [P]``); autograd by default."""
        return AutogradSetScorer(self.set_scorer(items, mask, targets[:, None]))


def topk_excluding(scores: Tensor, exclude: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` item indices and scores per row, never recommending items where ``exclude`` is set.

    ``exclude`` is a ``[B, M]`` mask (bool or 0/1). Ties break towards the lower item index
    (``torch.topk`` on CPU and CUDA both do so for a stable input), so the list is reproducible.
    """
    masked = scores.masked_fill(exclude.bool(), float("-inf"))
    vals, idx = torch.topk(masked, k, dim=1, sorted=True)
    return idx, vals


def rank_of(scores: Tensor, exclude: Tensor, items: Tensor) -> Tensor:
    """1-based rank of ``items: [B]`` in each row's ranking of non-excluded items.

    An excluded item gets rank 0 (it cannot be recommended). Ties count in the item's favour.
    """
    masked = scores.masked_fill(exclude.bool(), float("-inf"))
    own = masked.gather(1, items[:, None])
    rank = (masked > own).sum(1) + 1
    return torch.where(torch.isinf(own[:, 0]) & (own[:, 0] < 0), torch.zeros_like(rank), rank)
