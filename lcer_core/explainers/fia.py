"""FIA: the single most influential interacted item (Cheng et al., KDD 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers.base import Explainer, ExplainerConfig, Explanations, Progress
from lcer_core.explainers.influence import DEFAULT_CHUNK_MB, leave_one_out
from lcer_core.explainers.registry import register
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["FIA", "FIAConfig"]


@dataclass(frozen=True)
class FIAConfig(ExplainerConfig):
    """FIA has no hyperparameter; ``chunk_mb`` only bounds the memory of one recommender call."""

    chunk_mb: float = DEFAULT_CHUNK_MB

    def __post_init__(self) -> None:
        if not self.chunk_mb > 0:
            raise InvalidParameterError(f"chunk_mb must be positive, got {self.chunk_mb}")


@register
class FIA(Explainer):
    """Fast influence analysis: explain (u, i) by the interacted item with the largest influence on g_i.

    Cheng W, Shen Y, Huang L, et al. "Incorporating interpretability into latent factor
    models via fast influence analysis", KDD 2019. As in the LCER paper (footnote 9), the
    influence of item j is approximated by the drop of the target's score when j alone is
    removed, ``g_i(x) - g_i(x \\ j)``, for every interacted item in batched forward calls.

    ``removed`` holds exactly one item per pair with a non-empty history (the first one on
    ties); ``importance`` is that raw influence for every interacted item (not normalised).
    The item is not guaranteed to flip the recommendation, so FIA reports no validity.
    """

    name: ClassVar[str] = "fia"
    reports_validity: ClassVar[bool] = False
    #: None: the most influential item is taken whatever either test would say.
    selects_on: ClassVar[frozenset[str]] = frozenset()
    config_type: ClassVar[type[ExplainerConfig]] = FIAConfig
    config: FIAConfig

    def _explain(
        self,
        recommender: Recommender,
        pairs: PairBatch,
        *,
        seed: int,
        progress: Progress | None,
    ) -> Explanations:
        loo = leave_one_out(recommender, pairs, chunk_mb=self.config.chunk_mb, progress=progress)
        influence = loo.target_influence.masked_fill(~pairs.mask, float("nan"))
        ranked = influence.nan_to_num(nan=float("-inf")).masked_fill(~pairs.mask, float("-inf"))
        best = ranked.argmax(1)
        removed = torch.zeros_like(pairs.mask).scatter(1, best[:, None], True) & pairs.mask
        return Explanations(removed, influence)
