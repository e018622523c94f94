"""Explain one user's recommendations, as data and in words (``lcer explain --user``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lcer_core.datasets import PreparedDataset
from lcer_core.errors import InvalidParameterError, UnknownUserError
from lcer_core.explainers import ExplainerConfig, get_method
from lcer_core.frames import explanation_frame
from lcer_core.metrics import evaluate_pairs
from lcer_core.models import TrainedModel
from lcer_core.pairs import make_pairs

__all__ = ["explain_one_user", "sentences"]


def explain_one_user(
    data: PreparedDataset,
    model: TrainedModel,
    user: str,
    *,
    k: int = 5,
    method: str = "lcer",
    item: str | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    config: ExplainerConfig | None = None,
) -> dict[str, Any]:
    """The top-``k`` of raw user ``user`` with, per item, the CE (ids, titles, importance) and
    the item's rank before and after removing it; ``item`` (a raw id) restricts to one item.
    ``config`` configures ``method`` (default: its config's defaults)."""
    explainer = get_method(method)(config)
    uid = data.uid_of(user)
    if not data.history(uid):
        raise UnknownUserError(f"user {user!r} has no interactions the recommender can see")
    rec = model.recommender()
    pairs = make_pairs(rec, data, [uid], k)
    if item is not None:
        sid = data.sid_of(item)
        hit = (pairs.targets == sid).nonzero().flatten()
        if hit.numel() == 0:
            top = ", ".join(data.titles(pairs.targets.tolist()))
            raise InvalidParameterError(f"item {item!r} is not in user {user!r}'s top-{k} ({top})")
        pairs = pairs.select(hit)
    expl = explainer.explain(rec, pairs, seed=seed, progress=progress)
    outcomes = evaluate_pairs(rec, pairs, expl)
    frame = explanation_frame(data, pairs, expl, outcomes)
    with torch.no_grad():
        scores = rec.scores_of_sets(pairs.items, pairs.mask.float(), pairs.targets[:, None])[
            :, 0
        ].tolist()
    recs = []
    for row, score in zip(frame.iter_rows(named=True), scores, strict=True):
        ce = [
            {"item": raw, "sid": sid, "title": title, "importance": imp}
            for raw, sid, title, imp in zip(
                row["ce_raw"],
                row["ce_items"],
                data.titles(row["ce_items"]),
                row["ce_importance"],
                strict=True,
            )
        ]
        recs.append(
            {
                "rank": row["rank"],
                "item": row["raw_item"],
                "sid": row["sid"],
                "title": data.titles([row["sid"]])[0],
                "score": score,
                "found": row["found"],
                "ce": ce,
                "rank_before": row["rank"],
                "rank_after": row["rank_after"] if row["found"] else None,
                "necessary": row["necessary"],
                "sufficient": row["sufficient"],
            }
        )
    return {
        "dataset": data.name,
        "user": str(user),
        "method": method,
        "k": k,
        "model": model.key,
        "recommendations": recs,
    }


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def sentences(result: dict[str, Any]) -> list[str]:
    """One plain-language sentence per recommended item."""
    verb = "watched" if result["dataset"].startswith("ml-") else "interacted with"
    out = []
    for r in result["recommendations"]:
        if not r["found"]:
            out.append(
                f"No counterfactual explanation found for {r['title']} (rank {r['rank']}): "
                f"{result['method']} found no set of your items whose removal takes it out of your top-{result['k']}."
            )
            continue
        names = _join([c["title"] for c in r["ce"]])
        after = r["rank_after"]
        if r["necessary"]:
            out.append(
                f"If you had not {verb} {names}, {r['title']} would not be recommended to you "
                f"(it would fall from rank {r['rank']} to rank {after})."
            )
        else:
            out.append(
                f"Without {names}, {r['title']} would score below the bar of your top-{result['k']}, yet "
                f"re-ranking keeps it at rank {after} (from rank {r['rank']}): not a strict counterfactual."
            )
    return out
