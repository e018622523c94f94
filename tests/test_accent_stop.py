"""Accent's two stopping rules: ours re-queries the recommender, the authors' code adds influences."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import Accent, AccentConfig
from lcer_core.pairs import build_pairs, histories_from_lists
from lcer_core.recommender.base import Recommender


class _Together(Recommender):
    """Items 0-3 are the user's; the target 4 scores 1.5·x0 + 1.5·x1 − 1.4·x0·x1 + 0.05·x2
    (items 0 and 1 stand in for each other), the replacement 5 a constant 1.0.

    Factual gap 1.65 − 1.0 = 0.65. Leave-one-out influences on the gap: 0.1 (item 0), 0.1
    (item 1), 0.05 (item 2), summing to 0.25 < 0.65: the additive estimate never closes the gap.
    Re-scored, removing {0, 1} leaves 0.05 < 1.0: the gap closes at the prefix of length 2.
    """

    n_items = 6

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def scores(self, x: Tensor) -> Tensor:
        out = torch.full_like(x, -10.0)
        out[:, 4] = 1.5 * x[:, 0] + 1.5 * x[:, 1] - 1.4 * x[:, 0] * x[:, 1] + 0.05 * x[:, 2]
        out[:, 5] = 1.0
        return out


def test_additive_rule_differs_from_requery_where_influences_do_not_add():
    rec = _Together()
    pairs = build_pairs(rec, histories_from_lists([0], [[0, 1, 2, 3]]), 1)
    assert pairs.targets.tolist() == [4] and pairs.replacements.tolist() == [5]
    ours = Accent().explain(rec, pairs)
    assert pairs.items[0][ours.removed[0]].tolist() == [0, 1]
    authors = Accent(AccentConfig(stop="additive")).explain(rec, pairs)
    assert not bool(authors.found.any())
    assert torch.allclose(ours.importance, authors.importance, equal_nan=True)


def test_additive_rule_agrees_on_a_linear_model_and_is_checked():
    w = torch.zeros(6, 6)
    w[0, 4], w[1, 4], w[2, 4] = 0.6, 0.5, 0.05  # gap 0.15: item 0 alone closes it
    rec_b = torch.tensor([-10.0, -10.0, -10.0, -10.0, 0.0, 1.0])

    class Linear(_Together):
        def scores(self, x: Tensor) -> Tensor:
            return x @ w + rec_b

    rec = Linear()
    pairs = build_pairs(rec, histories_from_lists([0], [[0, 1, 2, 3]]), 1)
    for stop in ("requery", "additive"):
        out = Accent(AccentConfig(stop=stop)).explain(rec, pairs)
        assert pairs.items[0][out.removed[0]].tolist() == [0]
    with pytest.raises(InvalidParameterError):
        AccentConfig(stop="guess")
    with pytest.raises(InvalidParameterError):
        AccentConfig(stop="additive", criterion="topk")
