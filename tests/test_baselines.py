"""The baselines FIA, Accent and KaffesCE: hand-worked cases, then the contract every method meets."""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny_recommenders import CountingRecommender, LinearRecommender, random_linear

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import get_explainer
from lcer_core.explainers.accent import Accent, AccentConfig
from lcer_core.explainers.base import Explanations
from lcer_core.explainers.fia import FIA, FIAConfig
from lcer_core.explainers.influence import leave_one_out
from lcer_core.explainers.kaffes import KaffesCE, KaffesConfig
from lcer_core.pairs import PairBatch, build_pairs, histories_from_lists
from lcer_core.recommender.base import Recommender, rank_of

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]  # fmt: skip
NEVER = -100.0  # bias that keeps the interacted items 0..2 out of every ranking, removed or not


def three_item_model(w2: list[float], bias: list[float] | None = None) -> LinearRecommender:
    """Items 0..2 are interacted, 3..5 are candidates; ``w2`` is item 2's row on items 3..5.

    Items 0 and 1 give (3, 1, 0) and (2, 0, 1) to items 3, 4, 5.
    """
    weight = torch.zeros(6, 6)
    weight[0, 3:] = torch.tensor([3.0, 1.0, 0.0])
    weight[1, 3:] = torch.tensor([2.0, 0.0, 1.0])
    weight[2, 3:] = torch.tensor(w2)
    return LinearRecommender(weight, torch.tensor([NEVER] * 3 + (bias or [0.0, 0.0, 0.5])))


def one_pair(rec: Recommender, k: int = 1) -> PairBatch:
    return build_pairs(rec, histories_from_lists([0], [[0, 1, 2]]), k)


@pytest.fixture(scope="module")
def basic() -> LinearRecommender:
    # scores: item 3 = 3+2+1 = 6, item 4 = 1+0+1 = 2, item 5 = 0+1+1+0.5 = 2.5
    # top-1 is 3, the replacement (2nd) is 5
    return three_item_model([1.0, 1.0, 1.0])


def rerank(rec: Recommender, pairs: PairBatch, removed: torch.Tensor) -> torch.Tensor:
    """Rank of each target once ``removed`` is taken out; remaining items stay excluded."""
    x = pairs.dense_inputs(rec.n_items, keep=~removed)
    return rank_of(rec.scores(x), x > 0, pairs.targets)


def gap_after(rec: Recommender, pairs: PairBatch, removed: torch.Tensor) -> torch.Tensor:
    s = rec.scores(pairs.dense_inputs(rec.n_items, keep=~removed))
    return (
        s.gather(1, pairs.targets[:, None])[:, 0] - s.gather(1, pairs.replacements[:, None])[:, 0]
    )


# ---- hand-worked cases -------------------------------------------------------------------


def test_the_hand_case_has_the_worked_out_pair(basic: LinearRecommender) -> None:
    pairs = one_pair(basic)
    assert pairs.targets.tolist() == [3]
    assert pairs.replacements.tolist() == [5]


def test_fia_picks_the_item_with_the_largest_drop_of_the_target_score(
    basic: LinearRecommender,
) -> None:
    out = FIA().explain(basic, one_pair(basic))
    # removing 0, 1, 2 alone lowers g_3 by W[j, 3] = 3, 2, 1
    assert out.removed.tolist() == [[True, False, False]]
    assert out.importance.tolist() == [[3.0, 2.0, 1.0]]
    assert FIA.reports_validity is False


def test_accent_removes_the_shortest_influence_prefix_that_closes_the_gap(
    basic: LinearRecommender,
) -> None:
    out = Accent().explain(basic, one_pair(basic))
    # gap g_3 - g_5 = 3.5; influences on it: W[j,3] - W[j,5] = 3, 1, 0
    assert out.importance.tolist() == [[3.0, 1.0, 0.0]]
    # {0}: gap 3 - 2.5 = 0.5, still open; {0, 1}: 1 - 1.5 < 0, closed
    assert out.removed.tolist() == [[True, True, False]]


def test_accent_has_no_ce_when_the_gap_never_closes() -> None:
    rec = three_item_model([1.0, 1.0, 1.0], bias=[10.0, 0.0, 0.5])  # item 3 scores >= 10 anyway
    out = Accent().explain(rec, one_pair(rec))
    assert out.importance.tolist() == [[3.0, 1.0, 0.0]]
    assert not out.found.any()


def test_accent_finds_a_prefix_longer_than_its_first_round() -> None:
    # items 0..6 give 1.0, 1.1, ..., 1.6 to the target 7; the replacement 8 has bias 1.5
    weight = torch.zeros(10, 10)
    weight[:7, 7] = 1.0 + 0.1 * torch.arange(7)
    rec = LinearRecommender(weight, torch.tensor([NEVER] * 7 + [0.0, 1.5, NEVER]))
    pairs = build_pairs(rec, histories_from_lists([0], [list(range(7))]), 1)
    assert (pairs.targets.item(), pairs.replacements.item()) == (7, 8)
    out = Accent().explain(rec, pairs)
    # removing 6, 5, ..., 1 leaves g_7 = 1.0 < 1.5; one item fewer leaves 2.1
    assert out.removed.tolist() == [[False] + [True] * 6]


def test_kaffes_finds_the_pair_that_pushes_the_target_out(basic: LinearRecommender) -> None:
    out = KaffesCE(KaffesConfig(beam=2, criterion="topk")).explain(basic, one_pair(basic))
    # no singleton works (margins 0.5, 2, 3.5 over the best competitor); {0, 1} gives 1 < 1.5
    assert out.removed.tolist() == [[True, True, False]]
    # importance: the normalised margin drop 1 - m({j}) / m(x), with m(x) = 6 - 2.5
    assert torch.allclose(out.importance, torch.tensor([[3 / 3.5, 1.5 / 3.5, 0.0]]))


def test_kaffes_finds_the_pair_that_flips_the_target_under_the_threshold(
    basic: LinearRecommender,
) -> None:
    out = KaffesCE(KaffesConfig(beam=2)).explain(basic, one_pair(basic))
    # the bar is the factual score of the replacement, g_5(x) = 2.5; singletons leave
    # g_3 = 3, 4, 5 and {0, 1} leaves 1 < 2.5
    assert out.removed.tolist() == [[True, True, False]]
    # importance 1 - m({j}) / m(x) with m = g_3 - 2.5: (1 - 0.5/3.5, 1 - 1.5/3.5, 1 - 2.5/3.5)
    assert torch.allclose(out.importance, torch.tensor([[3 / 3.5, 2 / 3.5, 1 / 3.5]]))


def test_kaffes_finds_a_shorter_ce_than_accent_when_another_competitor_rises() -> None:
    # removing item 2 raises item 4 by 6: alone it pushes item 3 out, though its gap influence is 0
    rec = three_item_model([1.0, -6.0, 1.0], bias=[0.0, 5.0, 0.5])
    pairs = one_pair(rec)
    assert (pairs.targets.item(), pairs.replacements.item()) == (3, 5)
    kaffes = KaffesCE(KaffesConfig(criterion="topk")).explain(rec, pairs)
    assert kaffes.removed.tolist() == [[False, False, True]]
    # under the paper's flip test the rise of item 4 does not count: g_3(x \ {2}) = 5 >= 2.5
    paper = KaffesCE().explain(rec, pairs)
    assert paper.removed.tolist() == [[True, True, False]]
    accent = Accent().explain(rec, pairs)
    assert accent.removed.tolist() == [[True, True, False]]
    topk = Accent(AccentConfig(criterion="topk")).explain(rec, pairs)
    assert topk.removed.tolist() == [[True, True, False]]


def test_the_top_k_variant_is_registered_under_its_own_name() -> None:
    explainer = get_explainer("kaffes-topk", beam=3)
    assert explainer.dump_config()["method"] == "kaffes-topk"
    assert explainer.dump_config()["criterion"] == "topk"
    assert get_explainer("kaffes").dump_config()["criterion"] == "threshold"


def test_kaffes_spends_at_most_its_query_budget(basic: LinearRecommender) -> None:
    pairs = one_pair(basic)
    counting = CountingRecommender(basic)
    # 1 factual + 3 singletons + the child with the best estimate, {0, 1}, which is a CE
    out = KaffesCE(KaffesConfig(max_queries=5, beam=2)).explain(counting, pairs)
    assert out.removed.tolist() == [[True, True, False]]
    assert counting.rows == 5
    counting = CountingRecommender(basic)
    out = KaffesCE(KaffesConfig(max_queries=4, beam=2)).explain(counting, pairs)
    assert not out.found.any()
    assert counting.rows == 4
    # a length bound of 1 stops the search after the singletons
    assert not KaffesCE(KaffesConfig(max_length=1)).explain(basic, pairs).found.any()


def test_kaffes_budget_holds_for_every_pair_of_a_batch() -> None:
    rec = random_linear(20, seed=3)
    gen = torch.Generator().manual_seed(3)
    lists = [torch.randperm(20, generator=gen)[:6].tolist() for _ in range(8)]
    pairs = build_pairs(rec, histories_from_lists(list(range(8)), lists), 1)
    for budget in (1, 3, 10, 25):
        counting = CountingRecommender(rec)
        KaffesCE(KaffesConfig(max_queries=budget, beam=3)).explain(counting, pairs)
        assert counting.rows <= budget * len(pairs)


def brute_force_shortest(rec: Recommender, pairs: PairBatch, criterion: str) -> list[int]:
    """Length of the shortest CE of each pair by trying every subset (0: none)."""
    best = []
    for p in range(len(pairs)):
        one = pairs.select(torch.tensor([p]))
        n = int(one.mask.sum())
        length = 0
        for size in range(1, n + 1):
            for combo in itertools.combinations(range(n), size):
                removed = torch.zeros_like(one.mask)
                removed[0, list(combo)] = True
                if flipped(rec, one, removed, criterion):
                    length = size
                    break
            if length:
                break
        best.append(length)
    return best


def flipped(rec: Recommender, one: PairBatch, removed: torch.Tensor, criterion: str) -> bool:
    if criterion == "topk":
        return int(rerank(rec, one, removed)) > one.k
    s = rec.scores(one.dense_inputs(rec.n_items, keep=~removed))
    return bool(s[0, one.targets[0]] < one.thresholds[0])


@pytest.mark.parametrize("criterion", ["threshold", "topk"])
def test_kaffes_with_an_exhaustive_beam_finds_a_shortest_ce(criterion: str) -> None:
    rec = random_linear(14, seed=6, bias_scale=3.0)
    gen = torch.Generator().manual_seed(6)
    lists = [torch.randperm(14, generator=gen)[:5].tolist() for _ in range(6)]
    pairs = build_pairs(rec, histories_from_lists(list(range(6)), lists), 2)
    # C(5, 2) = 10 sets per depth
    out = KaffesCE(KaffesConfig(beam=10, criterion=criterion)).explain(rec, pairs)
    assert out.lengths.tolist() == brute_force_shortest(rec, pairs, criterion)
    # the case exercises no CE and CEs of lengths 1 and 2 (and 3 under the top-K test)
    assert {0, 1, 2} <= set(out.lengths.tolist())


# ---- influence -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_case() -> tuple[LinearRecommender, PairBatch]:
    """50 items, 20 users (one with an empty history, one with a single item), K = 5."""
    rec = random_linear(50, seed=1)
    gen = torch.Generator().manual_seed(0)
    lists = [torch.randperm(50, generator=gen)[: 2 + u % 11].tolist() for u in range(20)]
    lists[3], lists[7] = [], [12]
    return rec, build_pairs(rec, histories_from_lists(list(range(20)), lists), 5)


def test_leave_one_out_influence_is_the_weight_of_the_removed_item(random_case) -> None:
    rec, pairs = random_case
    loo = leave_one_out(rec, pairs)
    w = rec.weight[pairs.items]  # [P, L, M]: row of each interacted item
    on_target = w.gather(2, pairs.targets[:, None, None].expand(-1, w.shape[1], 1))[..., 0]
    on_repl = w.gather(2, pairs.replacements[:, None, None].expand(-1, w.shape[1], 1))[..., 0]
    m = pairs.mask
    assert torch.allclose(loo.target_influence[m], on_target[m], atol=1e-4)
    assert torch.allclose(loo.gap_influence[m], (on_target - on_repl)[m], atol=1e-4)
    assert loo.target_influence[~m].isnan().all()
    # the factual margin is the target's lead over the (K+1)-th item
    assert torch.allclose(loo.base.margin, loo.base.target - pairs.thresholds, atol=1e-4)


def test_leave_one_out_does_not_depend_on_chunking(random_case) -> None:
    rec, pairs = random_case
    whole = leave_one_out(rec, pairs)
    counting = CountingRecommender(rec)
    tiny = leave_one_out(counting, pairs, chunk_mb=1e-6)  # one input per call
    assert counting.calls == counting.rows
    # pairs of one user share inputs: one factual + one per interacted item, per user
    assert counting.rows == 20 + sum(2 + u % 11 for u in range(20) if u not in (3, 7)) + 1
    for a, b in [(whole.loo.margin, tiny.loo.margin), (whole.base.gap, tiny.base.gap)]:
        assert torch.allclose(a.nan_to_num(-7.0), b.nan_to_num(-7.0), atol=1e-5)
    capped = leave_one_out(rec, pairs, max_positions=2)
    assert capped.loo.target[:, 2:].isnan().all()
    assert torch.equal(capped.loo.target[:, :2].isnan(), ~pairs.mask[:, :2])


# ---- every baseline, beyond the shared contract ------------------------------------------

EXPLAINERS = {
    "fia": lambda **kw: FIA(FIAConfig(**kw)),
    "accent": lambda **kw: Accent(AccentConfig(**kw)),
    "accent-topk": lambda **kw: Accent(AccentConfig(criterion="topk", **kw)),
    "kaffes": lambda **kw: KaffesCE(KaffesConfig(**kw)),
    "kaffes-topk": lambda **kw: get_explainer("kaffes-topk", **kw),
}


@pytest.fixture(params=list(EXPLAINERS), scope="module")
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def explained(method: str, random_case) -> Explanations:
    rec, pairs = random_case
    return EXPLAINERS[method]().explain(rec, pairs)


# Shapes, sets within the history, empty histories, the counterfactual claim of each method,
# same seed same answer, batch independence and progress: the shared contract
# (tests/test_contracts.py, lcer_core.testing). What follows is specific to the baselines.


def test_every_interacted_item_gets_an_importance(random_case, explained) -> None:
    _, pairs = random_case
    # KaffesCE's budget covers all singletons here
    assert not explained.importance[pairs.mask].isnan().any()


def test_fia_gives_one_item_per_non_empty_history(random_case) -> None:
    rec, pairs = random_case
    out = FIA().explain(rec, pairs)
    assert out.lengths[pairs.lengths > 0].eq(1).all()
    assert out.lengths[pairs.lengths == 0].eq(0).all()


def test_independent_of_chunking_and_seed(method: str, random_case, explained) -> None:
    rec, pairs = random_case
    again = EXPLAINERS[method](chunk_mb=1e-6).explain(rec, pairs, seed=7)
    assert torch.equal(again.removed, explained.removed)
    assert torch.allclose(
        again.importance.nan_to_num(-9.0), explained.importance.nan_to_num(-9.0), atol=1e-5
    )


def test_accent_ce_is_the_shortest_closing_prefix(random_case) -> None:
    rec, pairs = random_case
    out = Accent().explain(rec, pairs)
    influence = out.importance.nan_to_num(float("-inf"))
    order = torch.argsort(influence, dim=1, descending=True, stable=True)
    place = torch.argsort(order, dim=1)  # each item's place in the influence order
    n_pos = (out.importance > 0).sum(1)
    n = out.lengths
    assert out.found.any() and (n < n_pos).any()  # some CEs stop before the positive items run out
    for size in range(1, int(n_pos.max()) + 1):
        removed = (place < size) & (out.importance > 0)
        gap = gap_after(rec, pairs, removed)
        # every shorter prefix, and without a CE every prefix, leaves the gap open
        shorter = (n == 0) & (size <= n_pos) | (size < n)
        assert (gap[shorter] >= 0).all()
        assert torch.equal(removed[n == size], out.removed[n == size])


def test_only_empty_histories(method: str) -> None:
    rec = random_linear(10, seed=2)
    pairs = build_pairs(rec, histories_from_lists([0, 1], [[], []]), 3)
    out = EXPLAINERS[method]().explain(rec, pairs)
    assert out.removed.shape == (6, 1)
    assert not out.found.any()
    assert out.importance.isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_same_answer_on_the_device_of_the_recommender(
    method: str, device: str, random_case
) -> None:
    rec, pairs = random_case
    moved = rec.to(device)
    out = EXPLAINERS[method]().explain(moved, pairs)
    assert out.removed.device.type == device
    reference = EXPLAINERS[method]().explain(rec, pairs)
    assert torch.equal(out.removed.cpu(), reference.removed)


def test_configs_reject_bad_values() -> None:
    for make in (
        lambda: FIAConfig(chunk_mb=0),
        lambda: AccentConfig(criterion="nearest"),  # type: ignore[arg-type]
        lambda: KaffesConfig(max_queries=0),
        lambda: KaffesConfig(criterion="rank"),
        lambda: KaffesConfig(beam=0),
        lambda: KaffesConfig(max_length=0),
    ):
        with pytest.raises(InvalidParameterError):
            make()
    with pytest.raises(InvalidParameterError):
        KaffesCE(FIAConfig())
