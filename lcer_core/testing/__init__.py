"""Contract suites for explainers and recommenders, for this package and for plugins.

The checks are plain functions (:func:`check_explainer`, :func:`check_recommender`); the
pytest classes :class:`ExplainerContract` and :class:`RecommenderContract` wrap them (they
import pytest, so they load on first use). :mod:`lcer_core.testing.claims` holds what a
method may claim of its sets; :mod:`lcer_core.testing.recommenders` small recommenders and
a small case to explain. See docs/extending.md.
"""

from __future__ import annotations

from typing import Any

from lcer_core.testing import claims
from lcer_core.testing.explainer import ContractError, check_explainer
from lcer_core.testing.recommender import check_recommender
from lcer_core.testing.recommenders import (
    LinearRecommender,
    fit_tiny,
    random_linear,
    small_case,
    small_histories,
)

__all__ = [
    "claims",
    "ContractError",
    "check_explainer",
    "check_recommender",
    "fit_tiny",
    "LinearRecommender",
    "random_linear",
    "small_case",
    "small_histories",
    "ExplainerCase",
    "ExplainerContract",
    "RecommenderContract",
]

_SUITES = ("ExplainerCase", "ExplainerContract", "RecommenderContract")


def __getattr__(name: str) -> Any:
    """The pytest classes, imported on first use (pytest is a test dependency only)."""
    if name in _SUITES:
        from lcer_core.testing import suites

        return getattr(suites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
