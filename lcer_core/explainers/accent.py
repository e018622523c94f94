"""Accent: remove items by their influence on the gap to a replacement until it closes (SIGIR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations, Progress
from lcer_core.explainers.influence import (
    DEFAULT_CHUNK_MB,
    QueryCounter,
    evaluate_sets,
    leave_one_out,
)
from lcer_core.explainers.registry import register
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["Accent", "AccentConfig"]

_FIRST_BLOCK = 4  # prefix lengths 1..4 are tried first, then blocks of doubling size


@dataclass(frozen=True)
class AccentConfig(ExplainerConfig):
    """``criterion``: when a prefix counts as a CE.

    ``"gap"`` (Accent's own, the default): the replacement item overtakes the target,
    g_i(x \\ C) < g_r(x \\ C). ``"topk"``: the target leaves the top-K of the re-ranked list.
    ``chunk_mb`` bounds the memory of one recommender call.

    ``stop``: how the gap is known closed. ``"requery"`` (ours, the default, a deviation from
    the authors' code): the recommender re-scores x \\ C for each prefix. ``"additive"`` (the
    authors' code): no re-query; the prefix closes the gap once the factual gap minus the
    summed leave-one-out influences of its items is below zero (``criterion="gap"`` only).
    """

    criterion: Literal["gap", "topk"] = "gap"
    chunk_mb: float = DEFAULT_CHUNK_MB
    stop: Literal["requery", "additive"] = "requery"

    def __post_init__(self) -> None:
        if self.criterion not in ("gap", "topk"):
            raise InvalidParameterError(
                f"criterion must be 'gap' or 'topk', got {self.criterion!r}"
            )
        if not self.chunk_mb > 0:
            raise InvalidParameterError(f"chunk_mb must be positive, got {self.chunk_mb}")
        if self.stop not in ("requery", "additive"):
            raise InvalidParameterError(f"stop must be 'requery' or 'additive', got {self.stop!r}")
        if self.stop == "additive" and self.criterion != "gap":
            raise InvalidParameterError("stop='additive' estimates the gap: use criterion='gap'")


@register
class Accent(Explainer):
    """Accent: the shortest influence-ordered prefix of interactions whose removal closes the gap.

    Tran K H, Ghazimatin A, Saha Roy R. "Counterfactual explanations for neural
    recommenders", SIGIR 2021. The replacement r is the (K+1)-th item of the original
    list (LCER paper, section 4.1). Interacted items are ordered by their influence on the
    gap g_i - g_r, approximated by leave-one-out forward calls (LCER paper, footnote 9),
    and removed cumulatively in that order; the CE is the shortest prefix after whose
    removal the gap, recomputed by the recommender, has closed. Only items with positive
    influence are ever removed; when no prefix closes the gap there is no CE.

    Prefixes are evaluated for all pairs at once, in rounds of growing blocks of prefix
    lengths (1-4, 5-12, 13-28, ...), so that pairs whose CE is short stop early.
    ``importance`` is the raw (not normalised) influence of each item on the gap.
    """

    name: ClassVar[str] = "accent"
    #: None with Accent's own ``criterion="gap"``: the prefix stops when the (K+1)-th factual
    #: item overtakes the target, one comparison, not the top-K of the re-ranked list
    #: (``stop="additive"`` does not even re-query); ``criterion="topk"`` is PN's test.
    selects_on: ClassVar[frozenset[str]] = frozenset()
    config_type: ClassVar[type[ExplainerConfig]] = AccentConfig
    config: AccentConfig

    def selects(self) -> frozenset[str]:
        return frozenset({"topk"}) if self.config.criterion == "topk" else frozenset()

    def _explain(
        self,
        recommender: Recommender,
        pairs: PairBatch,
        *,
        seed: int,
        progress: Progress | None,
    ) -> Explanations:
        dev = pairs.items.device
        n_pairs, width = pairs.items.shape
        # leave-one-out inputs, then at most one input per prefix: an upper bound of 2 per item
        counter = QueryCounter(progress, len(pairs) + 2 * int(pairs.mask.sum()))
        loo = leave_one_out(
            recommender, pairs, chunk_mb=self.config.chunk_mb, progress=counter.phase
        )
        influence = loo.gap_influence.masked_fill(~pairs.mask, float("nan"))
        positive, position = influence_order(influence, pairs.mask)
        n_pos = positive.sum(1)
        if self.config.stop == "additive":
            counter.finish()
            length = _additive_length(loo.base.gap, influence, positive, position, n_pos)
            return Explanations((position < length[:, None]) & positive, influence)

        length = torch.zeros(n_pairs, dtype=torch.long, device=dev)  # 0: none found yet
        lo, size = 1, _FIRST_BLOCK
        max_len = int(n_pos.max()) if n_pairs else 0
        while lo <= max_len:
            hi = lo + size  # prefix lengths lo .. hi-1
            active = (length == 0) & (n_pos >= lo)
            if not bool(active.any()):
                break
            cand = torch.arange(lo, hi, device=dev).expand(n_pairs, -1)
            valid = active[:, None] & (cand <= n_pos[:, None])
            e_pair, e_col = valid.nonzero(as_tuple=True)
            e_len = cand[e_pair, e_col]
            res = evaluate_sets(
                recommender,
                pairs,
                e_pair,
                lambda e, p=e_pair, n=e_len: position[p[e]] < n[e][:, None],
                chunk_mb=self.config.chunk_mb,
                progress=counter.add,
            )
            hit = res.gap < 0 if self.config.criterion == "gap" else res.out_of_top_k
            lens = torch.full((n_pairs, size), width + 1, dtype=torch.long, device=dev)
            lens[e_pair[hit], e_col[hit]] = e_len[hit]
            shortest = lens.min(1).values
            length = torch.where(active & (shortest <= width), shortest, length)
            lo, size = hi, size * 2

        counter.finish()
        removed = (position < length[:, None]) & positive
        return Explanations(removed, influence)


def _additive_length(
    gap: Tensor, influence: Tensor, positive: Tensor, position: Tensor, n_pos: Tensor
) -> Tensor:
    """[P] the shortest prefix whose summed influence exceeds the factual gap (0: none), as the
    authors' code estimates it, without querying the recommender again."""
    ranked = torch.zeros_like(influence).scatter_(
        1, position, influence.masked_fill(~positive, 0.0).nan_to_num(nan=0.0)
    )
    n = torch.arange(1, influence.shape[1] + 1, device=influence.device)
    closes = (gap[:, None] - ranked.cumsum(1) < 0) & (n[None, :] <= n_pos[:, None])
    return torch.where(closes.any(1), closes.float().argmax(1) + 1, 0)


def influence_order(influence: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Items with positive influence, and each item's 0-based place in descending order (ties: first)."""
    positive = (influence > 0) & mask
    ranked = influence.masked_fill(~positive, float("-inf"))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    places = torch.arange(mask.shape[1], device=mask.device).expand_as(order).contiguous()
    return positive, torch.empty_like(order).scatter_(1, order, places)
