"""Pairs, explanations and outcomes as polars frames (one row per pair), and back.

These frames are what shards write, the store reads and ``lcer explain --user`` prints; every
function takes any :class:`~lcer_core.recommender.base.Recommender`.
"""

from __future__ import annotations

import math

import polars as pl
import torch

from lcer_core.columns import COST_COLUMNS
from lcer_core.datasets import PreparedDataset
from lcer_core.devices import with_answer_threads
from lcer_core.explanations import Explanations
from lcer_core.metrics import PairOutcomes, strict_summary, summarize
from lcer_core.pairs import PairBatch, build_pairs
from lcer_core.recommender.base import Recommender

__all__ = [
    "recommendation_frame",
    "explanation_frame",
    "pairs_from_frame",
    "summarize_frame",
]


@with_answer_threads
def recommendation_frame(
    data: PreparedDataset, pairs: PairBatch, recommender: Recommender
) -> pl.DataFrame:
    """One row per (user, rank): the top-K list with raw ids and scores."""
    with torch.no_grad():
        scores = recommender.scores_of_sets(
            pairs.items, pairs.mask.float(), pairs.targets[:, None]
        )[:, 0]
    uids = pairs.users.cpu().tolist()
    sids = pairs.targets.cpu().tolist()
    return pl.DataFrame(
        {
            "uid": uids,
            "raw_user": _raw_users(data, uids),
            "rank": pairs.ranks.cpu().tolist(),
            "sid": sids,
            "raw_item": _raw_items(data, sids),
            "score": scores.cpu().double().tolist(),
        }
    )


def _raw_users(data: PreparedDataset, uids: list[int]) -> list[str]:
    lookup = dict(zip(data.users["uid"].to_list(), data.users["raw_id"].to_list(), strict=True))
    return [lookup[u] for u in uids]


def _raw_items(data: PreparedDataset, sids: list[int]) -> list[str]:
    lookup = dict(zip(data.items["sid"].to_list(), data.items["raw_id"].to_list(), strict=True))
    return [lookup[s] for s in sids]


def explanation_frame(
    data: PreparedDataset, pairs: PairBatch, explanations: Explanations, outcomes: PairOutcomes
) -> pl.DataFrame:
    """One row per pair: the CE's items (internal and raw ids), their importance, and the outcomes."""
    items = pairs.items.cpu()
    removed = explanations.removed.cpu()[:, : items.shape[1]]
    imp = explanations.importance.cpu()[:, : items.shape[1]]
    ce_items, ce_imp = [], []
    for row in range(len(pairs)):
        sel = removed[row]
        ce_items.append(items[row][sel].tolist())
        vals = imp[row][sel].double().tolist()
        ce_imp.append([None if math.isnan(v) else v for v in vals])
    uids = pairs.users.cpu().tolist()
    sids = pairs.targets.cpu().tolist()
    raw_item = dict(zip(data.items["sid"].to_list(), data.items["raw_id"].to_list(), strict=True))
    return pl.DataFrame(
        {
            "uid": uids,
            "raw_user": _raw_users(data, uids),
            "sid": sids,
            "raw_item": [raw_item[s] for s in sids],
            "rank": pairs.ranks.cpu().tolist(),
            "found": outcomes.found.cpu().tolist(),
            "ce_items": ce_items,
            "ce_raw": [[raw_item[s] for s in ce] for ce in ce_items],
            "ce_importance": ce_imp,
            "length": outcomes.length.cpu().tolist(),
            "sufficient": outcomes.sufficient.cpu().tolist(),
            "necessary": outcomes.necessary.cpu().tolist(),
            "rank_after": outcomes.rank_after.cpu().tolist(),
        },
        schema_overrides={
            "ce_items": pl.List(pl.Int64),
            "ce_raw": pl.List(pl.String),
            "ce_importance": pl.List(pl.Float64),
        },
    )


def pairs_from_frame(
    data: PreparedDataset, recommender: Recommender, frame: pl.DataFrame, k: int
) -> tuple[PairBatch, Explanations]:
    """Rebuild pairs (with the *current* model's thresholds) and CEs from stored explanation rows."""
    users = frame["uid"].to_list()
    base = build_pairs(recommender, data.histories(sorted(set(users))), k)
    row_of = {
        (u, s): i
        for i, (u, s) in enumerate(zip(base.users.tolist(), base.targets.tolist(), strict=True))
    }
    hist = data.histories(users)
    dev = recommender.device
    # Thresholds: the (K+1)-th score of the user's current list (same for every pair of a user).
    per_user = {u: float(base.thresholds[i]) for (u, _), i in row_of.items()}
    per_user_rep = {u: int(base.replacements[i]) for (u, _), i in row_of.items()}
    thresholds = torch.tensor([per_user[u] for u in users], device=dev)
    items, mask = hist.items.to(dev), hist.mask.to(dev)
    pairs = PairBatch(
        users=torch.tensor(users, device=dev),
        targets=torch.tensor(frame["sid"].to_list(), device=dev),
        ranks=torch.tensor(frame["rank"].to_list(), device=dev),
        items=items,
        mask=mask,
        thresholds=thresholds,
        replacements=torch.tensor([per_user_rep[u] for u in users], device=dev),
        k=k,
    )
    removed = torch.zeros_like(mask)
    for row, ce in enumerate(frame["ce_items"].to_list()):
        if ce:
            removed[row] = torch.isin(items[row], torch.tensor(ce, device=dev)) & mask[row]
    return pairs, Explanations(removed, torch.full(mask.shape, float("nan"), device=dev))


def summarize_frame(frame: pl.DataFrame, reports_validity: bool) -> dict[str, float | int | None]:
    """Table-2 metrics from stored per-pair rows (the same code path as :func:`summarize`);
    ``reports_validity`` is the method's :attr:`Explainer.reports_validity`."""
    outcomes = PairOutcomes(
        found=torch.tensor(frame["found"].to_list(), dtype=torch.bool),
        length=torch.tensor(frame["length"].to_list(), dtype=torch.long),
        sufficient=torch.tensor(frame["sufficient"].to_list(), dtype=torch.bool),
        necessary=torch.tensor(frame["necessary"].to_list(), dtype=torch.bool),
        rank_after=torch.tensor(frame["rank_after"].fill_null(0).to_list(), dtype=torch.long),
    )
    out = summarize(outcomes, reports_validity=reports_validity) | strict_summary(outcomes)
    # what the run cost per pair, when the shards recorded it (see shards.explain_users)
    for key, column in COST_COLUMNS.items():
        if column in frame.columns and frame.height and frame[column].null_count() == 0:
            out[key] = float(frame[column].mean())  # type: ignore[arg-type]
    if "threads" in frame.columns and frame["threads"].drop_nulls().n_unique() == 1:
        out["threads"] = int(frame["threads"].drop_nulls()[0])
    return out
