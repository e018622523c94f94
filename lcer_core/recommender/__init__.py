"""Recommenders behind one seam (:class:`Recommender`), registered by name (:mod:`.registry`):
Mult-VAE, the paper's, and EASE."""

from lcer_core.recommender import ease, training  # noqa: F401  register the built-in kinds
from lcer_core.recommender.base import Recommender, dense_from_sets, rank_of, topk_excluding
from lcer_core.recommender.registry import (
    DEFAULT_RECOMMENDER,
    RECOMMENDERS,
    get_recommender,
    kind_of,
    seal_builtins,
)

seal_builtins()

__all__ = [
    "DEFAULT_RECOMMENDER",
    "RECOMMENDERS",
    "Recommender",
    "dense_from_sets",
    "get_recommender",
    "kind_of",
    "rank_of",
    "topk_excluding",
]
