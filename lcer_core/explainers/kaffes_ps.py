"""``kaffes-ps``: KaffesCE's search order with ``lcer-plus``'s PS-aware choice.

Not in the paper. KaffesCE (:mod:`lcer_core.explainers.kaffes`) spends its query budget
(``max_queries``) on a leave-one-out pass and a beam search; here its answer and the shortest
passing prefix of its leave-one-out order (items by normalised margin drop, unqueried ones
last) are the candidates, and ``lcer-plus``'s selector chooses between them
(:mod:`lcer_core.explainers.selector`: the top-K test, sufficiency-aware choice, pruning). It
separates what the selector adds from what the search finds, at KaffesCE's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from lcer_core.explainers.base import ExplainerConfig, Explanations, Progress
from lcer_core.explainers.kaffes import KaffesCE, KaffesConfig
from lcer_core.explainers.registry import register
from lcer_core.explainers.selector import SelectionConfig, Selector, SelectsWithSelector
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["KaffesPS", "KaffesPSConfig"]


@dataclass(frozen=True)
class KaffesPSConfig(SelectionConfig, KaffesConfig):
    """KaffesCE's search options (its budget ``max_queries``; the top-K flip test by default,
    as the selector's) and the selector's, with ``lcer-plus``'s defaults."""

    budget_option: ClassVar[str | None] = "max_queries"
    options: ClassVar[tuple[str, ...]] = ("max_queries", "sufficiency")

    criterion: Literal["threshold", "topk"] = "topk"


@register
class KaffesPS(SelectsWithSelector, KaffesCE):
    """KaffesCE's answer and leave-one-out prefix, chosen by the PS-aware selector; registered
    as ``kaffes-ps``. ``importance``: KaffesCE's (the leave-one-out margin drop)."""

    name: ClassVar[str] = "kaffes-ps"
    config_type: ClassVar[type[ExplainerConfig]] = KaffesPSConfig
    config: KaffesPSConfig

    def _explain(
        self, recommender: Recommender, pairs: PairBatch, *, seed: int, progress: Progress | None
    ) -> Explanations:
        found, importance, used = self._run(recommender, pairs, progress)
        sel = Selector(recommender, pairs, self.config, used.clone())
        candidates = torch.cat([found[:, None, :], sel.prefixes(importance[:, None, :])], 1)
        return Explanations(sel.select(candidates), importance, None, sel.calls)
