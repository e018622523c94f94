"""Choosing an explainer's options on validation users, never on the test users we report.

The prepared split holds validation users (Mult-VAE's early stopping reads their held-out
part); they are the explainers' tuning set too. :func:`tune` explains the first N validation
users' top-K pairs with every combination of a grid over the method's declared options and
chooses the one with the best strict F_NS (a pair without a set counts as a failure; ties go
to the shorter sets, then to the first in grid order). It reads the model and the validation
users' fold-in histories only: :func:`validation_pairs` refuses any other user, and a test
proves that removing every test user's interactions from the data changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl
import torch

from lcer_core.checks import check_k, check_seed, check_users
from lcer_core.datasets import PreparedDataset
from lcer_core.devices import default_device
from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import ExplainerConfig, get_method
from lcer_core.metrics import evaluate_pairs, strict_summary
from lcer_core.models import TrainedModel
from lcer_core.pairs import PairBatch, build_pairs
from lcer_core.runs import explainer_configs

__all__ = ["TUNING_SPLIT", "validation_users", "validation_pairs", "tuning_configs", "tune"]

#: The users an explainer is tuned on.
TUNING_SPLIT = "val"


def validation_users(data: PreparedDataset, n_users: int | None = None) -> list[int]:
    """The first ``n_users`` validation users (all by default), ascending internal ids."""
    users = data.users_of(TUNING_SPLIT)
    if n_users is not None:
        check_users(n_users)
        users = users[:n_users]
    if not users:
        raise InvalidParameterError(f"dataset {data.name!r} has no validation users to tune on")
    return users


def validation_pairs(
    model: TrainedModel, data: PreparedDataset, users: Sequence[int], k: int, device: Any
) -> PairBatch:
    """The top-``k`` pairs of ``users``, refusing any user that is not a validation user."""
    allowed = set(data.users_of(TUNING_SPLIT))
    stray = [u for u in users if u not in allowed]
    if stray:
        raise InvalidParameterError(f"user {stray[0]} is not a validation user: tuning reads none")
    return build_pairs(model.recommender(device), data.histories(list(users)), k)


def tuning_configs(
    method: str, dataset: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]
) -> list[ExplainerConfig]:
    """One validated configuration of ``method`` per combination of ``grid`` (over its
    declared options, on top of ``fixed`` and the dataset's defaults), in grid order."""
    cls = get_method(method).config_type
    for name in [*grid, *fixed]:
        if name not in cls.options:
            known = ", ".join(cls.options) or "none"
            raise InvalidParameterError(
                f"method {method!r} has no option {name!r} to tune (options: {known})",
                param="grid",
            )
    if any(len(values) == 0 for values in grid.values()):
        raise InvalidParameterError("a grid option has no value", param="grid")
    return explainer_configs(method, dataset, fixed, {n: list(v) for n, v in grid.items()})


def tune(
    data: PreparedDataset,
    model: TrainedModel,
    method: str,
    *,
    k: int,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    n_users: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    on_config: Callable[[int, int], None] | None = None,
    no_train: bool = False,
    notify: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Every configuration of the grid on the validation users: one row each (the grid's
    options, strict Val/PS/PN/F_NS over all pairs, Len of the verified sets, s/pair) and a
    ``chosen`` column that is true for the best strict F_NS (see the module docstring). A method
    that needs a trained network (``amortised``) gets it bound, trained on the training users
    first if missing (``notify``; ``no_train`` refuses)."""
    from lcer_core.amortised_store import bind_network

    check_k(k)
    check_seed(seed)
    configs = tuning_configs(method, data.name, grid, fixed or {})
    configs = [bind_network(c, model, data, k, no_train=no_train, notify=notify) for c in configs]
    users = validation_users(data, n_users)
    pairs = validation_pairs(model, data, users, k, device or default_device())
    recommender = model.recommender(device or default_device())
    explainer_cls = get_method(method)
    rows = []
    for i, config in enumerate(configs):
        start = time.perf_counter()
        explanations = explainer_cls(config).explain(recommender, pairs, seed=seed)
        seconds = time.perf_counter() - start
        strict = strict_summary(evaluate_pairs(recommender, pairs, explanations))
        dumped = config.dump()
        rows.append(
            {
                **{name: dumped[name] for name in grid},
                **strict,
                "s_per_pair": seconds / max(len(pairs), 1),
                "users": len(users),
            }
        )
        if on_config is not None:
            on_config(i + 1, len(configs))
    frame = pl.DataFrame(rows).with_row_index("order")
    best = frame.sort(
        [pl.col("strict_fns_pct").fill_nan(-1.0), pl.col("strict_len").fill_nan(1e9), "order"],
        descending=[True, False, False],
    )["order"][0]
    return frame.with_columns(chosen=pl.col("order") == best).drop("order")
