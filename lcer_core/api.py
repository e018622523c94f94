"""The public API: a handful of functions to explain recommendations from a notebook.

Each function delegates to the core (:mod:`lcer_core.models`, :mod:`lcer_core.pairs`,
:mod:`lcer_core.explainers`, :mod:`lcer_core.metrics`, :mod:`lcer_core.explain_user`); files
are read and written under ``LCER_HOME``, datasets come from ``LCER_MIRROR`` (or the web).
A value out of range is a one-line :class:`~lcer_core.errors.LcerError`.

Explain the top-5 of two test users of ML 100K (this example runs in the test suite)::

    >>> from lcer_core import api
    >>> data = api.load_dataset("ml-100k")
    >>> model = api.train_model(data, epochs=2, seed=1, device="cpu")  # reused once trained
    >>> rec = model.recommender("cpu")
    >>> pairs = api.make_pairs(rec, data, users=2, k=5)  # the first 2 test users' top-5
    >>> len(pairs), pairs.k
    (10, 5)
    >>> expl = api.explain(rec, pairs, "lcer", alpha=0.1, lam=0.01, steps=30)
    >>> expl.removed.shape == pairs.mask.shape
    True
    >>> metrics = api.summarize(api.evaluate(rec, pairs, expl), "lcer")
    >>> metrics["n_pairs"], sorted(metrics)
    (10, ['fns_pct', 'len', 'n_pairs', 'pn_pct', 'ps_pct', 'val_pct'])
    >>> 0 <= metrics["val_pct"] <= 100
    True

One user, in their raw id, item by item (``lcer explain --user``)::

    >>> uid = int(pairs.users[0])
    >>> user = data.users.filter(data.users["uid"] == uid)["raw_id"].item()
    >>> result = api.explain_user(data, model, user, k=3, steps=30)
    >>> [r["rank"] for r in result["recommendations"]]
    [1, 2, 3]
    >>> all(len(r["ce"]) >= 1 for r in result["recommendations"] if r["found"])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lcer_core.datasets import PreparedDataset, ensure_prepared
from lcer_core.explain_user import explain_one_user
from lcer_core.explainers import get_explainer, get_method, make_config
from lcer_core.explanations import Explanations, Progress
from lcer_core.metrics import PairOutcomes, evaluate_pairs
from lcer_core.metrics import summarize as summarize_outcomes
from lcer_core.models import MODEL_SEED, TrainedModel, ensure_model, recommender_config
from lcer_core.models import load_model as load_trained
from lcer_core.pairs import PairBatch, test_users
from lcer_core.pairs import make_pairs as pairs_of
from lcer_core.recommender import DEFAULT_RECOMMENDER
from lcer_core.recommender.base import Recommender

__all__ = [
    "load_dataset",
    "train_model",
    "load_model",
    "make_pairs",
    "explain",
    "evaluate",
    "summarize",
    "explain_user",
]


def load_dataset(name: str) -> PreparedDataset:
    """Dataset ``name`` (e.g. ``ml-100k``), downloaded and prepared the first time."""
    return ensure_prepared(name)


def train_model(
    data: PreparedDataset,
    *,
    epochs: int | None = None,
    seed: int = MODEL_SEED,
    device: torch.device | str | None = None,
    recommender: str = DEFAULT_RECOMMENDER,
) -> TrainedModel:
    """The ``recommender`` (default: the paper's) of ``data`` for ``epochs`` (None: its default)
    and ``seed``: trained the first time, then reused."""
    config = recommender_config(recommender, epochs)
    return ensure_model(data, config, seed=seed, device=device)[0]


def load_model(dataset: str, key: str | None = None) -> TrainedModel:
    """The model ``key`` (default: the latest trained) of ``dataset``; none is a one-line error."""
    return load_trained(dataset, key)


def make_pairs(
    recommender: Recommender,
    data: PreparedDataset,
    users: int | Sequence[int] | None = None,
    k: int = 5,
) -> PairBatch:
    """The (user, item) pairs of the top-``k`` of ``users``: the first N test users for an int,
    these internal ids for a sequence, every test user for None."""
    chosen = test_users(data, users) if users is None or isinstance(users, int) else list(users)
    return pairs_of(recommender, data, chosen, k)


def explain(
    recommender: Recommender,
    pairs: PairBatch,
    method: str,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    **options: Any,
) -> Explanations:
    """Explain ``pairs`` with ``method`` (see :data:`lcer_core.explainers.METHODS`) and its options."""
    return get_explainer(method, **options).explain(
        recommender, pairs, seed=seed, progress=progress
    )


def evaluate(
    recommender: Recommender, pairs: PairBatch, explanations: Explanations
) -> PairOutcomes:
    """What removing each explanation does to its pair: found, length, sufficient, necessary."""
    return evaluate_pairs(recommender, pairs, explanations)


def summarize(outcomes: PairOutcomes, method: str) -> dict[str, float | int | None]:
    """The paper's Table-2 metrics of ``outcomes`` (validity is None for methods without it)."""
    return summarize_outcomes(outcomes, reports_validity=get_method(method).reports_validity)


def explain_user(
    data: PreparedDataset,
    model: TrainedModel,
    user: str,
    *,
    k: int = 5,
    method: str = "lcer",
    item: str | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """The top-``k`` of raw user ``user``, each item with its CE (ids, titles, importance) and its
    rank before and after (``lcer explain --user``; :func:`lcer_core.explain_user.sentences`
    words it)."""
    config = make_config(method, **options)
    return explain_one_user(
        data, model, user, k=k, method=method, item=item, seed=seed, config=config
    )
