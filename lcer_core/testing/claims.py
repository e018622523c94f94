"""What a method claims of a set it returns, as checks over a whole batch.

A claim is a function ``claim(recommender, pairs, explanations) -> [P] bool``: for each pair,
whether its set, taken out of the user's history, does what the method promises. The
contract asserts it on the pairs with a set. Methods whose output is not a counterfactual by
construction (FIA: ``reports_validity = False``) make no claim.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lcer_core.explanations import Explanations
from lcer_core.metrics import evaluate_pairs
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["Claim", "below_threshold", "below_replacement", "out_of_top_k", "any_of"]

Claim = Callable[[Recommender, PairBatch, Explanations], Tensor]


def _scores_without(recommender: Recommender, pairs: PairBatch, removed: Tensor) -> Tensor:
    keep = (pairs.mask & ~removed).float()
    targets = torch.stack([pairs.targets, pairs.replacements], 1)
    return recommender.scores_of_sets(pairs.items, keep, targets)


@torch.no_grad()
def below_threshold(recommender: Recommender, pairs: PairBatch, out: Explanations) -> Tensor:
    """The item's score without the set falls under g_{K+1}(x_f) (LCER's test, eq. 9)."""
    pairs = pairs.to(recommender.device)
    s = _scores_without(recommender, pairs, out.removed.to(recommender.device))
    return s[:, 0] < pairs.thresholds


@torch.no_grad()
def below_replacement(recommender: Recommender, pairs: PairBatch, out: Explanations) -> Tensor:
    """Without the set, the (K+1)-th item of the original list overtakes the item (Accent's gap)."""
    pairs = pairs.to(recommender.device)
    s = _scores_without(recommender, pairs, out.removed.to(recommender.device))
    return s[:, 0] < s[:, 1]


def out_of_top_k(recommender: Recommender, pairs: PairBatch, out: Explanations) -> Tensor:
    """Without the set, the item leaves the re-ranked top-K (the metrics' necessity)."""
    return evaluate_pairs(recommender, pairs, out).necessary


def any_of(*claims: Claim) -> Claim:
    """A claim that holds where any of ``claims`` holds (e.g. a test with a fallback)."""

    def claim(recommender: Recommender, pairs: PairBatch, out: Explanations) -> Tensor:
        held = [c(recommender, pairs, out).to(recommender.device) for c in claims]
        return torch.stack(held).any(0)

    claim.__name__ = " or ".join(c.__name__ for c in claims)
    return claim
