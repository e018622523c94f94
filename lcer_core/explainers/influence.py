"""Forward-only evaluation of removal sets, and the leave-one-out influence of footnote 9.

The baselines (FIA, Accent, KaffesCE) only ever ask the recommender one question: "what
are the scores once this set C of interacted items is removed from the input?". This
module answers it for many (pair, set) entries at once, in chunks of bounded memory, and
derives from the answers the three numbers every method needs: the score of the target
item g_i, the score of the replacement item g_r (the (K+1)-th of the original list) and
the margin of the target over its K-th competitor in the re-ranked list.

The influence of an item j is approximated as the paper did (footnote 9): the drop of a
score when j alone is removed, ``s(x) - s(x \\ j)``. Pairs that share a history (the K
pairs of one user) share their leave-one-out inputs, so each input is scored once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lcer_core.errors import NonFiniteScoresError
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender, history_mask

__all__ = [
    "DEFAULT_CHUNK_MB",
    "LeaveOneOut",
    "QueryCounter",
    "RemovalScores",
    "evaluate_removals",
    "evaluate_sets",
    "extents",
    "leave_one_out",
    "plan_chunks",
    "rows_per_chunk",
]

DEFAULT_CHUNK_MB = 64.0
"""Default memory bound of one batched recommender call, in MiB."""


@dataclass(frozen=True)
class RemovalScores:
    """Scores after a removal, one entry per evaluated (pair, set); shapes match."""

    target: Tensor  # g_i(x \ C)
    replacement: Tensor  # g_r(x \ C), r = the (K+1)-th item of the original list
    margin: Tensor  # g_i(x \ C) minus the K-th best competitor: < 0 iff i left the top-K

    @property
    def gap(self) -> Tensor:
        """g_i - g_r: Accent's gap, closed when negative."""
        return self.target - self.replacement

    @property
    def out_of_top_k(self) -> Tensor:
        """The target fell out of the top-K of the re-ranked list (ties count in its favour)."""
        return self.margin < 0


@dataclass(frozen=True)
class LeaveOneOut:
    """Factual scores ``base`` ([P]) and the scores with each item removed alone ``loo`` ([P, L]).

    ``loo`` is NaN at padding and at positions that were not evaluated.
    """

    base: RemovalScores
    loo: RemovalScores

    @property
    def target_influence(self) -> Tensor:
        """[P, L] influence of each item on g_i: g_i(x) - g_i(x \\ j) (FIA's influence)."""
        return self.base.target[:, None] - self.loo.target

    @property
    def gap_influence(self) -> Tensor:
        """[P, L] influence of each item on the gap g_i - g_r (Accent's influence)."""
        return self.base.gap[:, None] - self.loo.gap


class QueryCounter:
    """Counts the inputs a method has scored and reports them as ``progress(done, total)``.

    ``total`` is an upper bound fixed up front; ``finish()`` reports completion.
    """

    def __init__(self, progress: Callable[[int, int], None] | None, total: int) -> None:
        self.progress, self.total, self.done, self._phase = progress, max(total, 1), 0, 0

    def add(self, n: int) -> None:
        """``n`` more inputs were scored."""
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def phase(self, done: int, total: int) -> None:
        """Progress of a sub-step that reports its own running count (as :func:`leave_one_out`)."""
        self.add(done - self._phase)
        self._phase = 0 if done >= total else done

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


_HIDDEN_ALLOWANCE = 1024
"""Floats per interacted item a recommender may hold while scoring (Mult-VAE's fast path
gathers one first-layer row, H = 600, per item)."""


def rows_per_chunk(n_items: int, width: int, chunk_mb: float) -> int:
    """How many removal inputs of ``width`` items one call may hold within ``chunk_mb`` MiB."""
    # scores, masked scores and masks over the catalogue; the item list; the model's own use
    per_row = 13 * n_items + (13 + 4 * _HIDDEN_ALLOWANCE) * max(width, 1)
    return max(1, int(chunk_mb * 2**20) // per_row)


def extents(mask: Tensor) -> Tensor:
    """[n] one past the last valid position of each row (0 for an empty row)."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * pos).max(1).values if mask.shape[1] else mask.sum(1)


def plan_chunks(widths: Tensor, n_items: int, chunk_mb: float) -> list[tuple[Tensor, int]]:
    """Split entries into calls of bounded memory, longest inputs first.

    Returns, per call, the entry indices and the width its inputs are trimmed to, so
    short histories are not padded to the longest one of the batch.
    """
    order = torch.argsort(widths, descending=True, stable=True)
    sorted_widths = widths[order].tolist()
    chunks: list[tuple[Tensor, int]] = []
    start = 0
    while start < len(sorted_widths):
        width = max(int(sorted_widths[start]), 1)
        stop = min(len(sorted_widths), start + rows_per_chunk(n_items, width, chunk_mb))
        chunks.append((order[start:stop], width))
        start = stop
    return chunks


@torch.no_grad()
def evaluate_removals(
    recommender: Recommender,
    items: Tensor,
    keep: Tensor,
    targets: Tensor,
    replacements: Tensor,
    k: int,
) -> RemovalScores:
    """Score inputs ``items[n, L]`` restricted to ``keep[n, L]`` once, read at ``targets[n, G]``.

    The re-ranked list excludes the items that remain in the input (the user still has
    them); removed items become candidates again. Returns ``[n, G]`` tensors.
    """
    weights = keep.float()
    scores = recommender.scores_of_sets(items, weights)
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteScoresError(
            "the recommender produced non-finite scores for an input with items removed"
        )
    n_items = recommender.n_items
    exclude = history_mask(items, keep, n_items)
    masked = scores.masked_fill(exclude, float("-inf"))
    vals, idx = torch.topk(masked, k + 1, dim=1, sorted=True)
    in_top = (idx[:, None, :k] == targets[:, :, None]).any(-1)
    # the K-th best item other than the target: the (K+1)-th overall when the target is in the top-K
    competitor = torch.where(in_top, vals[:, k : k + 1], vals[:, k - 1 : k])
    s_t = scores.gather(1, targets)
    return RemovalScores(s_t, scores.gather(1, replacements), s_t - competitor)


@torch.no_grad()
def leave_one_out(
    recommender: Recommender,
    pairs: PairBatch,
    *,
    max_positions: int | None = None,
    chunk_mb: float = DEFAULT_CHUNK_MB,
    progress: Callable[[int, int], None] | None = None,
) -> LeaveOneOut:
    """Scores of every pair with each interacted item removed alone, plus the factual scores.

    Only the first ``max_positions`` items of each history are removed (all when None).
    Pairs with identical histories share one input per removal. ``progress(done, total)``
    counts the inputs scored, after each call.
    """
    dev = pairs.items.device
    n_pairs, width = pairs.items.shape
    # group pairs by history: one input per (history, removed item)
    key = pairs.items.masked_fill(~pairs.mask, -1)
    _, group = torch.unique(key, dim=0, return_inverse=True)
    n_hist = int(group.max()) + 1
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=n_hist)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(n_pairs, device=dev) - starts[group[order]]
    members = torch.full((n_hist, int(counts.max())), -1, dtype=torch.long, device=dev)
    members[group, slot] = torch.arange(n_pairs, device=dev)
    rep = members[:, 0]
    h_items, h_mask = pairs.items[rep], pairs.mask[rep]
    safe = members.clamp_min(0)
    h_targets, h_repl = pairs.targets[safe], pairs.replacements[safe]

    evaluated = h_mask.clone()
    if max_positions is not None:
        evaluated[:, max_positions:] = False
    e_hist, e_pos = evaluated.nonzero(as_tuple=True)
    total = n_hist + int(e_hist.shape[0])
    done = 0
    h_width = extents(h_mask)

    def run(rows: Tensor, drop: Tensor | None, width: int) -> RemovalScores:
        nonlocal done
        keep = h_mask[rows, :width]
        if drop is not None:
            keep = keep.scatter(1, drop[:, None], False)
        out = evaluate_removals(
            recommender, h_items[rows, :width], keep, h_targets[rows], h_repl[rows], pairs.k
        )
        done += int(rows.shape[0])
        if progress is not None:
            progress(done, total)
        return out

    nan = torch.full((n_pairs,), float("nan"), device=dev)
    base = [nan.clone(), nan.clone(), nan.clone()]
    for rows, w in plan_chunks(h_width, recommender.n_items, chunk_mb):
        res = run(rows, None, w)
        who = members[rows]
        ok = who >= 0
        for dst, src in zip(base, (res.target, res.replacement, res.margin), strict=True):
            dst[who[ok]] = src[ok]

    loo = [torch.full((n_pairs, width), float("nan"), device=dev) for _ in range(3)]
    for entries, w in plan_chunks(h_width[e_hist], recommender.n_items, chunk_mb):
        rows, pos = e_hist[entries], e_pos[entries]
        res = run(rows, pos, w)
        who = members[rows]
        ok = who >= 0
        cols = pos[:, None].expand_as(who)
        for dst, src in zip(loo, (res.target, res.replacement, res.margin), strict=True):
            dst[who[ok], cols[ok]] = src[ok]
    return LeaveOneOut(RemovalScores(*base), RemovalScores(*loo))


def evaluate_sets(
    recommender: Recommender,
    pairs: PairBatch,
    pair_index: Tensor,
    make_removed: Callable[[Tensor], Tensor],
    *,
    chunk_mb: float = DEFAULT_CHUNK_MB,
    progress: Callable[[int], None] | None = None,
) -> RemovalScores:
    """Scores of ``n`` entries: pair ``pair_index[e]`` with the set ``make_removed(...)`` removed.

    ``make_removed(entries)`` returns the ``[len(entries), L]`` bool removal masks of the
    given entry indices, so masks are only materialised one call at a time. ``progress(n)``
    is called with the number of inputs of each call. Returns ``[n]`` tensors.
    """
    n = int(pair_index.shape[0])
    dev = pairs.items.device
    out = [torch.empty(n, device=dev) for _ in range(3)]
    widths = extents(pairs.mask)[pair_index]
    for entries, w in plan_chunks(widths, recommender.n_items, chunk_mb):
        p = pair_index[entries]
        keep = pairs.mask[p, :w] & ~make_removed(entries)[:, :w]
        res = evaluate_removals(
            recommender,
            pairs.items[p, :w],
            keep,
            pairs.targets[p][:, None],
            pairs.replacements[p][:, None],
            pairs.k,
        )
        for dst, src in zip(out, (res.target, res.replacement, res.margin), strict=True):
            dst[entries] = src[:, 0]
        if progress is not None:
            progress(int(entries.shape[0]))
    return RemovalScores(*out)
