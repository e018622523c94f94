"""One call shape for every explainer, modelled on Captum's ``attribute``.

``Explainer.explain(recommender, pairs, seed=...)`` validates its input and calls the
method's private ``_explain``. Every method returns :class:`Explanations`: per pair,
the counterfactual set as a mask over the pair's interacted items (all False when
there is none) and, where the method has one, an importance per interacted item.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from lcer_core.devices import answer_threads
from lcer_core.errors import InvalidParameterError
from lcer_core.explanations import Explanations, Progress
from lcer_core.pairs import PairBatch
from lcer_core.recommender.base import Recommender

__all__ = ["Explainer", "ExplainerConfig", "Explanations", "Progress", "SELECTION_TESTS"]

#: The evaluation tests an explainer may query while choosing its answer (``selects_on``):
#: ``"topk"``, the top-K drop-out test on the re-ranked list (PN's test), and
#: ``"sufficiency"``, the only-these-items test (PS's test). A method that selects on a test
#: is scored by that test on its own choices: its PN (or PS) is high by construction.
SELECTION_TESTS = frozenset({"topk", "sufficiency"})


@dataclass(frozen=True)
class ExplainerConfig:
    """Base of the typed, frozen configs: each validates itself in ``__post_init__``, with
    messages that name the field; ``dump()`` gives the flat, JSON-able dict of all fields."""

    #: Fields a run may set from the command line or the flow parameters (e.g. α, λ, steps).
    options: ClassVar[tuple[str, ...]] = ()
    #: Options swept one run per combination, each stored in its own ``runs`` column.
    grid: ClassVar[tuple[str, ...]] = ()
    #: The field that sets a search method's budget (``--budget``); None: the method has none.
    budget_option: ClassVar[str | None] = None
    #: Fields bound to one trained model (an explainer network's key): two runs on two models
    #: with the same settings differ there, and comparisons across models ignore them.
    model_bound: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def defaults_for(cls, dataset: str) -> dict[str, Any]:
        """Dataset-dependent defaults of the options (e.g. the paper's α and λ); none here."""
        return {}

    def dump(self) -> dict[str, Any]:
        """Every field by name (the run's stored configuration, its MLflow params)."""
        return asdict(self)

    def non_default(self) -> dict[str, Any]:
        """The fields whose value differs from this config class's default (all fields without one)."""
        values = self.dump()
        out = {}
        for f in fields(self):
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                out[f.name] = values[f.name]
                continue
            if values[f.name] != default:
                out[f.name] = values[f.name]
        return out


class Explainer(ABC):
    """Base class of all explanation methods; subclasses cite their paper in the docstring."""

    name: ClassVar[str]
    #: False for methods whose output is not a counterfactual by construction (FIA):
    #: their validity is reported as NULL, as in the paper's Table 2.
    reports_validity: ClassVar[bool] = True
    #: True for methods that optimise with gradients (LCER), whose shards gain most from a
    #: GPU. On a Ray cluster with GPUs every method's shards ask for one (``flows.runner``).
    prefers_gpu: ClassVar[bool] = False
    #: The evaluation tests (:data:`SELECTION_TESTS`) the method queries while choosing its
    #: answer, with its default configuration; empty for none. :meth:`selects` gives them for
    #: the configuration at hand (where an option switches a test on or off).
    selects_on: ClassVar[frozenset[str]] = frozenset()
    config_type: ClassVar[type[ExplainerConfig]] = ExplainerConfig

    def selects(self) -> frozenset[str]:
        """The evaluation tests this explainer, so configured, queries to choose its answer."""
        return self.selects_on

    def __init__(self, config: ExplainerConfig | None = None) -> None:
        self.config = config if config is not None else self.config_type()
        if not isinstance(self.config, self.config_type):
            raise InvalidParameterError(
                f"{self.name} expects a {self.config_type.__name__}, got {type(self.config).__name__}"
            )

    def dump_config(self) -> dict[str, Any]:
        """``{"method": name, **every config field}``: what is stored and logged with a run."""
        return {"method": self.name, **self.config.dump()}

    def explain(
        self,
        recommender: Recommender,
        pairs: PairBatch,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Explanations:
        """Explain every pair of ``pairs`` with ``recommender``; same seed, same answer."""
        if pairs.items.shape != pairs.mask.shape:
            raise InvalidParameterError("pairs.items and pairs.mask must have the same shape")
        if len(pairs) == 0:
            empty = torch.zeros(
                0, pairs.items.shape[1], dtype=torch.bool, device=pairs.items.device
            )
            return Explanations(empty, empty.float().fill_(float("nan")))
        pairs = pairs.to(recommender.device)
        with answer_threads():  # the same answer whatever the machine's cores
            out = self._explain(recommender, pairs, seed=seed, progress=progress)
        removed = out.removed & pairs.mask
        importance = out.importance.masked_fill(~pairs.mask, float("nan"))
        return Explanations(removed, importance, out.steps, out.forward_calls)

    @abstractmethod
    def _explain(
        self,
        recommender: Recommender,
        pairs: PairBatch,
        *,
        seed: int,
        progress: Progress | None,
    ) -> Explanations:
        """The method itself, on a validated batch already on the recommender's device."""
