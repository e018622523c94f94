"""Recommenders behind one seam (:class:`Recommender`); Mult-VAE is the paper's."""

from lcer_core.recommender.base import Recommender, dense_from_sets, rank_of, topk_excluding

__all__ = ["Recommender", "dense_from_sets", "rank_of", "topk_excluding"]
