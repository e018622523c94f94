"""The paper's metrics (section 4.1): validity, length, PS, PN (eqs. 13–14) and F_NS.

Per pair, the recommender re-scores two inputs: x without the CE (necessity: is the item
out of the top-K now?) and x with only the CE (sufficiency: is it still in the top-K?),
each ranking excluding its own input items. Aggregates return NaN where undefined.

The paper's PS and PN divide by the pairs with a set, and its validity is each method's own
acceptance test, so neither compares methods that find sets for different pairs. The strict
metrics (:func:`strict_summary`) divide by *all* pairs, a pair without a set counting as a
failure: verified validity is the share of all pairs whose set really drops the item out of
the re-ranked top-K (the PN test, so it equals strict PN by definition), and Len is averaged
over those verified sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lcer_core.columns import STRICT_KEYS
from lcer_core.devices import with_answer_threads
from lcer_core.errors import NonFiniteScoresError
from lcer_core.explanations import Explanations
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender, history_mask

__all__ = [
    "PairOutcomes",
    "STRICT_KEYS",
    "evaluate_pairs",
    "summarize",
    "strict_summary",
    "validity",
    "length",
    "ps",
    "pn",
    "f_ns",
]


@dataclass(frozen=True)
class PairOutcomes:
    """Per-pair results: ``found`` (non-empty CE), its ``length``, ``sufficient``,
    ``necessary`` and ``rank_after`` (1-based rank of the item once the CE is removed; 0 if none)."""

    found: Tensor
    length: Tensor
    sufficient: Tensor
    necessary: Tensor
    rank_after: Tensor


def _ranks(recommender: Recommender, pairs: PairBatch, weights: Tensor, chunk: int) -> Tensor:
    out = []
    for s in range(0, len(pairs), chunk):
        items, w, tgt = (
            pairs.items[s : s + chunk],
            weights[s : s + chunk],
            pairs.targets[s : s + chunk],
        )
        scores = recommender.scores_of_sets(items, w)
        if not torch.isfinite(scores).all():
            raise NonFiniteScoresError(
                "the recommender produced non-finite scores during evaluation"
            )
        excluded = history_mask(items, w > 0, recommender.n_items)
        masked = scores.masked_fill(excluded, float("-inf"))
        own = masked.gather(1, tgt[:, None])
        rank = (masked > own).sum(1) + 1
        out.append(
            torch.where(excluded.gather(1, tgt[:, None])[:, 0], torch.zeros_like(rank), rank)
        )
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@with_answer_threads
@torch.no_grad()
def evaluate_pairs(
    recommender: Recommender,
    pairs: PairBatch,
    explanations: Explanations,
    *,
    chunk: int | None = None,
) -> PairOutcomes:
    """Re-rank without and with only each CE, for all pairs at once (chunked for memory)."""
    pairs = pairs.to(recommender.device)
    removed = explanations.removed.to(recommender.device)[:, : pairs.items.shape[1]] & pairs.mask
    if chunk is None:
        chunk = max(1, 50_000_000 // max(recommender.n_items, 1))
    found = removed.any(1)
    without = (pairs.mask & ~removed).float()
    only = removed.float()
    rank_without = _ranks(recommender, pairs, without, chunk)
    rank_only = _ranks(recommender, pairs, only, chunk)
    k = pairs.k
    necessary = found & ((rank_without > k) | (rank_without == 0))
    sufficient = found & (rank_only >= 1) & (rank_only <= k)
    rank_after = torch.where(found, rank_without, torch.zeros_like(rank_without))
    return PairOutcomes(found, removed.sum(1), sufficient, necessary, rank_after)


def validity(found: Tensor) -> float:
    """Share of pairs with a non-empty CE, in %."""
    return 100.0 * float(found.float().mean()) if found.numel() else math.nan


def length(found: Tensor, lengths: Tensor) -> float:
    """Mean size of the non-empty CEs."""
    n = int(found.sum())
    return float(lengths[found].float().sum()) / n if n else math.nan


def ps(found: Tensor, sufficient: Tensor) -> float:
    """Probability of sufficiency (eq. 13), in % of the CEs found."""
    n = int(found.sum())
    return 100.0 * int((sufficient & found).sum()) / n if n else math.nan


def pn(found: Tensor, necessary: Tensor) -> float:
    """Probability of necessity (eq. 14), in % of the CEs found."""
    n = int(found.sum())
    return 100.0 * int((necessary & found).sum()) / n if n else math.nan


def f_ns(ps_pct: float, pn_pct: float) -> float:
    """Harmonic mean of PS and PN (0 when both are 0, NaN when either is undefined)."""
    if math.isnan(ps_pct) or math.isnan(pn_pct):
        return math.nan
    return 0.0 if ps_pct + pn_pct == 0 else 2 * ps_pct * pn_pct / (ps_pct + pn_pct)


def summarize(
    outcomes: PairOutcomes, *, reports_validity: bool = True
) -> dict[str, float | int | None]:
    """Table-2 metrics of a set of pairs; ``val_pct`` is None for methods without validity (FIA)."""
    f = outcomes.found.cpu()
    p = ps(f, outcomes.sufficient.cpu())
    n = pn(f, outcomes.necessary.cpu())
    return {
        "n_pairs": int(f.numel()),
        "val_pct": validity(f) if reports_validity else None,
        "len": length(f, outcomes.length.cpu()),
        "ps_pct": p,
        "pn_pct": n,
        "fns_pct": f_ns(p, n),
    }


def strict_summary(outcomes: PairOutcomes) -> dict[str, float]:
    """The strict metrics over *all* pairs (a pair without a set fails both tests).

    ``strict_val_pct``: share of pairs whose set really drops the item out of the re-ranked
    top-K (verified validity; the PN test, hence equal to ``strict_pn_pct``); ``strict_len``:
    mean size of those verified sets; ``strict_ps_pct``/``strict_pn_pct``/``strict_fns_pct``:
    PS, PN and their harmonic mean with every pair in the denominator.
    """
    f = outcomes.found.cpu()
    every = torch.ones_like(f)
    verified = outcomes.necessary.cpu() & f
    p = ps(every, outcomes.sufficient.cpu() & f)
    n = pn(every, verified)
    values = (n, length(verified, outcomes.length.cpu()), p, n, f_ns(p, n))
    return dict(zip(STRICT_KEYS, values, strict=True))
