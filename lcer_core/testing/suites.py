"""The contracts as pytest classes to subclass (needs pytest; the checks themselves do not).

::

    from lcer_core.testing import ExplainerContract, RecommenderContract, claims

    class TestMyMethod(ExplainerContract):
        method = MyMethod
        config = MyConfig(steps=100)      # optional: a fast config (its default must build)
        claim = claims.below_threshold    # optional: what a found set does

    class TestMyRecommender(RecommenderContract):
        @pytest.fixture(scope="class")
        @classmethod
        def recommender(cls):
            return MyRecommender(...)

Each test is one promise (see :mod:`lcer_core.testing.explainer` and
:mod:`lcer_core.testing.recommender`); override the ``case`` fixture to run one class over
several methods (``tests/test_contracts.py`` runs it over the whole registry), and
``recommender_and_pairs`` to explain with another recommender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from lcer_core.explainers.base import Explainer, ExplainerConfig
from lcer_core.explanations import Explanations
from lcer_core.pairs import Histories, PairBatch
from lcer_core.recommender.base import Recommender
from lcer_core.testing import explainer as ex
from lcer_core.testing import recommender as rc
from lcer_core.testing.claims import Claim
from lcer_core.testing.recommenders import small_case, small_histories

__all__ = ["ExplainerCase", "ExplainerContract", "RecommenderContract"]


@dataclass(frozen=True)
class ExplainerCase:
    """One method under the contract: its class, a (fast) config, its claim, its promises."""

    method: type[Explainer]
    config: ExplainerConfig | None = None
    claim: Claim | None = None
    batch_independent: bool = True
    seed: int = 3

    @property
    def explainer(self) -> Explainer:
        return self.method(self.config if self.config is not None else None)

    @property
    def resolved_config(self) -> ExplainerConfig:
        return self.config if self.config is not None else self.method.config_type()


class ExplainerContract:
    """What every explainer promises; subclass and set ``method`` (and optionally the rest)."""

    method: ClassVar[type[Explainer]]
    config: ClassVar[ExplainerConfig | None] = None
    claim: ClassVar[Claim | None] = None
    batch_independent: ClassVar[bool] = True

    @pytest.fixture(scope="class")
    @classmethod
    def case(cls) -> ExplainerCase:
        """The method under test; override (e.g. parametrised) to test several."""
        return ExplainerCase(cls.method, cls.config, cls.claim, cls.batch_independent)

    @pytest.fixture(scope="class")
    @classmethod
    def recommender_and_pairs(cls) -> tuple[Recommender, PairBatch]:
        """What the method explains: a small linear recommender and its top-3 pairs."""
        return small_case()

    @pytest.fixture(scope="class")
    @classmethod
    def explained(
        cls, case: ExplainerCase, recommender_and_pairs: tuple[Recommender, PairBatch]
    ) -> tuple[Explanations, ex.ProgressLog]:
        rec, pairs = recommender_and_pairs
        log = ex.ProgressLog()
        return case.explainer.explain(rec, pairs, seed=case.seed, progress=log), log

    def test_config_is_frozen_and_round_trips(self, case: ExplainerCase) -> None:
        ex.check_config(case.method, case.config)

    def test_bad_option_values_are_refused_by_name(self, case: ExplainerCase) -> None:
        ex.check_bad_options(case.method)

    def test_empty_batch(self, case: ExplainerCase, recommender_and_pairs) -> None:
        ex.check_empty_batch(case.explainer, *recommender_and_pairs)

    def test_output_shapes_and_sets_within_history(
        self, case: ExplainerCase, recommender_and_pairs, explained
    ) -> None:
        ex.check_output(case.explainer, *recommender_and_pairs, explained[0])

    def test_progress_is_monotone_and_completes(self, case: ExplainerCase, explained) -> None:
        ex.check_progress(case.explainer, explained[1])

    def test_same_seed_same_answer(
        self, case: ExplainerCase, recommender_and_pairs, explained
    ) -> None:
        rec, pairs = recommender_and_pairs
        ex.check_same_seed(case.method, case.resolved_config, rec, pairs, explained[0], case.seed)

    def test_answer_does_not_depend_on_the_batch(
        self, case: ExplainerCase, recommender_and_pairs, explained
    ) -> None:
        if not case.batch_independent:
            pytest.skip(f"{case.method.name} does not promise batch independence")
        rec, pairs = recommender_and_pairs
        ex.check_batch_independent(
            case.method, case.resolved_config, rec, pairs, explained[0], case.seed
        )

    def test_found_sets_keep_the_claim(
        self, case: ExplainerCase, recommender_and_pairs, explained
    ) -> None:
        if case.claim is None:
            pytest.skip(f"{case.method.name} declares no counterfactual claim")
        assert case.method.reports_validity, "a method with a claim must report validity"
        found = ex.check_claim(case.explainer, *recommender_and_pairs, explained[0], case.claim)
        assert found > 0, "no pair has a set: the claim was not exercised"


class RecommenderContract:
    """What every recommender promises; subclass and override the ``recommender`` fixture."""

    @pytest.fixture(scope="class")
    @classmethod
    def recommender(cls) -> Recommender:
        raise NotImplementedError("override the `recommender` fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def histories(cls, recommender: Recommender) -> Histories:
        """A few users' histories (one empty, one of a single item) over its items."""
        return small_histories(n_items=recommender.n_items, n_users=6)

    def test_scores(self, recommender: Recommender, histories: Histories) -> None:
        rc.check_scores(recommender, histories)

    def test_set_paths_agree_with_scores(
        self, recommender: Recommender, histories: Histories
    ) -> None:
        rc.check_sets_agree(recommender, histories)

    def test_set_scorer_gradients(self, recommender: Recommender, histories: Histories) -> None:
        rc.check_set_scorers(recommender, histories)

    def test_no_autograd_state_left(self, recommender: Recommender, histories: Histories) -> None:
        rc.check_no_autograd_state(recommender, histories)

    @pytest.mark.parametrize("chunk", [None, 1, 7])
    def test_recommendations_exclude_the_history(
        self, recommender: Recommender, chunk: int | None
    ) -> None:
        edges = rc.edge_histories(recommender.n_items)
        rc.check_recommendations(recommender, edges, k=3, chunk=chunk)
