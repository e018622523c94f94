"""The matched-compute baselines (``random-prefix``, ``kaffes-ps``) on lcer-plus's selector, and
the search budget of every search method (``--budget``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dataset_fixtures import run_cli

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import (
    METHODS,
    KaffesPS,
    KaffesPSConfig,
    LCERPlusConfig,
    RandomPrefix,
    RandomPrefixConfig,
    get_method,
)
from lcer_core.explainers.selector import SELECTS_ON
from lcer_core.runs import method_configs, run_spec
from lcer_core.testing import small_case

#: Each search method and the field its budget sets.
BUDGETS = {
    "random-prefix": "orders",
    "kaffes": "max_queries",
    "kaffes-topk": "max_queries",
    "kaffes-ps": "max_queries",
    "lcer-plus": "candidates",
    "amortised": "budget",
}


def test_each_search_method_names_its_budget_and_declares_what_it_selects_on() -> None:
    assert {
        n: c.config_type.budget_option for n, c in METHODS.items() if c.config_type.budget_option
    } == BUDGETS
    for name in ("random-prefix", "kaffes-ps", "lcer-plus"):
        assert get_method(name).selects_on == SELECTS_ON == frozenset({"topk", "sufficiency"})


def test_the_selector_options_have_lcer_plus_defaults() -> None:
    plus = LCERPlusConfig()
    for cfg in (RandomPrefixConfig(), KaffesPSConfig()):
        for name in ("select", "sufficiency", "prune", "chunk_mb"):
            assert getattr(cfg, name) == getattr(plus, name), name
    assert KaffesPSConfig().criterion == "topk"


@pytest.mark.parametrize("method", sorted(BUDGETS))
def test_budget_zero_is_refused_in_one_line_naming_the_option(method: str) -> None:
    field = BUDGETS[method]
    with pytest.raises(InvalidParameterError, match=f"^{field} ") as info:
        method_configs(method, "ml-100k", {"budget": 0})
    assert "\n" not in str(info.value)
    # three budgets or more are accepted and keyed apart
    keys = set()
    for budget in (1, 4, 16):
        [cfg] = method_configs(method, "ml-100k", {"budget": budget})
        assert getattr(cfg, field) == budget
        spec = run_spec(
            dataset="ml-100k", method=method, k=5, seed=0, n_users=None, model_key="m", config=cfg
        )
        keys.add(spec.run_id)
    assert len(keys) == 3


@pytest.mark.parametrize("method", ["random-prefix", "kaffes-ps", "lcer-plus"])
def test_cli_refuses_budget_zero_in_one_line(
    method: str, lcer_home, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["explain", "ml-100k", "--method", method, "--budget", "0"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {get_method(method).config_type.budget_option} must be ")
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["explain", "ml-100k", "--method", "lcer", "--budget", "3"], capsys)
    assert code == 2 and "has no search budget" in err


def _explain(cls, cfg, seed: int = 0, n_users: int = 12):
    rec, pairs = small_case(n_users=n_users, k=3)
    return pairs, cls(cfg).explain(rec, pairs, seed=seed)


def test_random_prefix_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    cfg = RandomPrefixConfig(orders=4)
    pairs, a = _explain(RandomPrefix, cfg, seed=1)
    _, b = _explain(RandomPrefix, cfg, seed=1)
    _, c = _explain(RandomPrefix, cfg, seed=2)
    assert torch.equal(a.removed, b.removed) and torch.equal(a.forward_calls, b.forward_calls)
    assert torch.equal(a.importance.nan_to_num(-1), b.importance.nan_to_num(-1))
    assert not torch.equal(a.importance.nan_to_num(-1), c.importance.nan_to_num(-1))
    assert a.found.any()
    # the share of orders whose prefix holds the item: in [0, 1] on the history, NaN off it
    inside = a.importance[pairs.mask]
    assert bool(((inside >= 0) & (inside <= 1)).all())


@pytest.mark.parametrize(
    ("cls", "field", "budgets"),
    [(RandomPrefix, "orders", (1, 4, 16)), (KaffesPS, "max_queries", (2, 20, 1000))],
)
def test_a_larger_budget_costs_more_and_finds_as_many(cls, field, budgets) -> None:
    calls, found = [], []
    for budget in budgets:
        cfg = dataclasses.replace(cls.config_type(), **{field: budget})
        _, out = _explain(cls, cfg)
        calls.append(int(out.forward_calls.sum()))
        found.append(int(out.found.sum()))
    assert calls == sorted(calls) and calls[0] < calls[-1]
    assert found[-1] >= found[0]


def test_kaffes_ps_keeps_kaffes_importance_and_finds_where_kaffes_does() -> None:
    from lcer_core.explainers import KaffesTopK, KaffesTopKConfig

    _, base = _explain(KaffesTopK, KaffesTopKConfig())
    _, ps = _explain(KaffesPS, KaffesPSConfig())
    assert torch.equal(base.importance.nan_to_num(-1), ps.importance.nan_to_num(-1))
    # KaffesCE's answer (top-K test) is one of the candidates: where it found one, so does kaffes-ps
    assert bool((ps.found | ~base.found).all())
