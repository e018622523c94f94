"""The plan of ``lcer run`` and of the pipeline flows, as one typed value.

A :class:`Plan` says what to explain: the datasets, the recommender and its options, the
explainers (each with fixed options and a grid: one run per combination), the list lengths K,
the seeds, the split seeds, the users and the sharding. It is built from the command line's
flags, from a TOML file (``lcer run --plan plan.toml``) or from a deployment's parameters;
building it validates all of it at once (:func:`lcer_core.runs.validate_plan`: every
configuration of every dataset), so a bad value is one :class:`InvalidParameterError` before any
work. The runs it makes are keyed by :func:`lcer_core.runs.run_spec`, as they always were.

A plan in TOML::

    datasets = ["ml-100k"]
    ks = [5]
    n_users = 20

    [explainers.lcer]
    fixed = {steps = 300}
    grid = {alpha = [0.05, 0.1], lam = [0.01]}

    [explainers.kaffes]
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import PAPER_METHODS, PAPER_SWEEP_METHOD, ExplainerConfig
from lcer_core.paper import PAPER_ALPHAS, PAPER_LAMS, PAPER_RECOMMENDER
from lcer_core.runs import (
    DEFAULT_KS,
    RunSpec,
    check_methods,
    plan_configs,
    runs_for,
    split_options,
    validate_plan,
)
from lcer_core.shards import DEFAULT_SHARD_SIZE

__all__ = [
    "DEFAULT_DATASETS",
    "ExplainerPlan",
    "Plan",
    "load_plan",
    "make_plan",
    "shorthand_explainers",
    "sweep_plan",
]

#: The datasets explained when none are given.
DEFAULT_DATASETS: tuple[str, ...] = ("ml-100k",)
Scalar = bool | int | float | str


class ExplainerPlan(BaseModel):
    """One method's options: ``fixed`` values, and a ``grid`` of values (one run per combination)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fixed: dict[str, Scalar] = Field(default_factory=dict)
    grid: dict[str, list[Scalar]] = Field(default_factory=dict)


#: The largest plan file read (bytes): a plan is a few lines; more is refused unread.
MAX_PLAN_BYTES = 1 << 20
#: The most explanation runs one plan may make (datasets × splits × seeds × K × each method's
#: grid combinations): counted before any configuration is built, so a hostile grid costs
#: one line, not memory.
MAX_RUNS = 10_000


def _paper_explainers() -> dict[str, ExplainerPlan]:
    return {method: ExplainerPlan() for method in PAPER_METHODS}


class Plan(BaseModel):
    """What a pipeline explains (see the module docstring); validated whole when built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: list[str] = Field(default_factory=lambda: list(DEFAULT_DATASETS))
    recommender: str = PAPER_RECOMMENDER
    recommender_options: dict[str, Scalar] = Field(default_factory=dict)
    explainers: dict[str, ExplainerPlan] = Field(default_factory=_paper_explainers)
    ks: list[int] = Field(default_factory=lambda: list(DEFAULT_KS))
    #: The explainers' seed (the model has the default seed); unused when ``seeds`` is given.
    seed: int = 0
    #: One model per seed, trained and explained with it (replaces ``seed``).
    seeds: list[int] = Field(default_factory=list)
    #: One split of the data, model and runs per split seed (default: the dataset's one split).
    split_seeds: list[int] = Field(default_factory=list)
    #: The first N test users (None: all).
    n_users: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    #: The recommender's training epochs (None: its default).
    epochs: int | None = None
    #: The search budget of every method that has one (None: each method's).
    budget: int | None = None

    @model_validator(mode="after")
    def _validate(self) -> Plan:
        self._check_size()
        self._check_recommender()
        validate_plan(
            self.datasets,
            self.method_options(),
            ks=self.ks,
            seeds=self.seeds or [self.seed],
            n_users=self.n_users,
            shard_size=self.shard_size,
            split_seeds=self.split_seeds,
            budget=self.budget,
        )
        return self

    def _check_size(self) -> None:
        combos = sum(math.prod(len(v) for v in e.grid.values()) for e in self.explainers.values())
        runs = (
            len(self.datasets)
            * max(1, len(self.split_seeds))
            * max(1, len(self.seeds))
            * len(self.ks)
            * combos
        )
        if runs > MAX_RUNS:
            raise InvalidParameterError(
                f"the plan makes {runs} explanation runs, more than {MAX_RUNS}: "
                "split it into smaller plans"
            )

    def _check_recommender(self) -> None:
        if self.epochs is not None and "epochs" in self.recommender_options:
            raise InvalidParameterError("give epochs or recommender_options.epochs, not both")
        self.training_options()

    def training_options(self) -> dict[str, Any]:
        """The recommender's training options (``epochs`` given as a field of its own too),
        checked by its config; empty: its defaults."""
        from lcer_core.models import recommender_config

        options = {**self.recommender_options}
        if self.epochs is not None:
            options["epochs"] = self.epochs
        # an unknown name or option, or a bad value: one line
        recommender_config(self.recommender, options.get("epochs"), self.recommender_fields())
        return options

    def recommender_fields(self) -> dict[str, Any]:
        """The recommender's config fields the plan sets, but its epochs (which a recommender
        trained in closed form ignores)."""
        return {n: v for n, v in self.recommender_options.items() if n != "epochs"}

    @property
    def methods(self) -> list[str]:
        """The plan's methods, in order."""
        return list(self.explainers)

    def method_options(self) -> dict[str, tuple[dict[str, Any], dict[str, list[Any]]]]:
        """Each method's (fixed, grid), as :mod:`lcer_core.runs` takes them."""
        return {m: (dict(e.fixed), dict(e.grid)) for m, e in self.explainers.items()}

    def model_seeds(self, default: int) -> list[tuple[int, int]]:
        """(model seed, explainers' seed) of every model: one per seed of ``seeds``, else
        the model's ``default`` seed explained with ``seed``."""
        if self.seeds:
            return [(s, s) for s in dict.fromkeys(self.seeds)]
        return [(default, self.seed)]

    def splits(self) -> list[int | None]:
        """The split seed of every split explained (None: the dataset's default split)."""
        return list(dict.fromkeys(self.split_seeds)) if self.split_seeds else [None]

    def configs(self, dataset: str) -> list[tuple[str, ExplainerConfig]]:
        """Every (method, configuration) of the plan for ``dataset``."""
        return plan_configs(dataset, self.method_options(), self.budget)

    def runs(
        self, dataset: str, model_key: str, seed: int, split_seed: int | None = None
    ) -> list[RunSpec]:
        """Every run of the plan on one trained model of ``dataset``."""
        return runs_for(
            self.configs(dataset),
            dataset=dataset,
            ks=self.ks,
            seed=seed,
            n_users=self.n_users,
            model_key=model_key,
            split_seed=split_seed,
        )

    def grid_params(self) -> dict[str, Any]:
        """The plan as a sweep's parent MLflow run logs it: the method(s), k(s), the fixed
        options, each grid option's values (``alphas``, ``lams``), the seed and the users."""
        methods = self.methods
        return {
            "method": ",".join(methods),
            "k": self.ks[0] if len(self.ks) == 1 else ",".join(map(str, self.ks)),
            **{n: v for e in self.explainers.values() for n, v in e.fixed.items()},
            **{f"{n}s": v for e in self.explainers.values() for n, v in e.grid.items()},
            "seed": self.seed,
            "n_users": self.n_users,
        }


def _one_line(exc: ValidationError) -> InvalidParameterError:
    """A pydantic error as one line naming the first bad field."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "plan"
    return InvalidParameterError(f"plan: {where}: {error['msg']}")


def make_plan(data: Mapping[str, Any] | None = None, /, **fields: Any) -> Plan:
    """A validated :class:`Plan` from ``data`` and ``fields`` (``fields`` win); a bad value
    is one :class:`InvalidParameterError`."""
    try:
        return Plan.model_validate({**(data or {}), **fields})
    except ValidationError as exc:
        raise _one_line(exc) from None


def load_plan(path: str | Path) -> dict[str, Any]:
    """A plan file's fields (TOML), unvalidated: :func:`make_plan` validates them with the
    flags that go with the file."""
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_PLAN_BYTES + 1)
        if len(raw) > MAX_PLAN_BYTES:
            raise InvalidParameterError(
                f"--plan: {path} is larger than {MAX_PLAN_BYTES} bytes: not a plan"
            )
        return tomllib.loads(raw.decode())
    except OSError as exc:
        raise InvalidParameterError(f"--plan: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"--plan: {path} is not TOML: {exc}") from None


def shorthand_explainers(
    methods: Sequence[str], options: Mapping[str, Any]
) -> dict[str, ExplainerPlan]:
    """Shared options (``{"alpha": [...], "steps": 300}``, today's ``--alpha``/``--steps``
    flags) as each method's :class:`ExplainerPlan`: an option applies to the methods that
    declare it."""
    plans: dict[str, ExplainerPlan] = {}
    for method in check_methods(methods):
        fixed, grid = split_options(method, options)
        plans[method] = ExplainerPlan(fixed=fixed, grid=grid)
    return plans


def sweep_plan(
    dataset: str = "ml-100k",
    grid: Mapping[str, Sequence[Any]] | None = None,
    fixed: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Plan:
    """The sweep of section 4.1 as a plan: LCER on ``dataset`` at K = 5 over ``grid`` (an
    option not given takes the paper's grid: α and λ), ``fixed`` options; ``fields`` of the
    plan besides."""
    paper = {"alpha": list(PAPER_ALPHAS), "lam": list(PAPER_LAMS)}
    points = {**paper, **{n: list(v) for n, v in (grid or {}).items() if v}}
    explainer = {"fixed": dict(fixed or {}), "grid": points}
    return make_plan(
        {"ks": [5]},
        datasets=[dataset],
        explainers={PAPER_SWEEP_METHOD: explainer},
        **fields,
    )
