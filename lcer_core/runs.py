"""Explanation runs: one :class:`RunSpec` per (dataset, method, k, configuration, seed, model).

The command line and the flows build runs through the same functions (a
:class:`lcer_core.plan.Plan` calls them): :func:`explainer_configs` turns one method's fixed
options and grid into one validated, frozen configuration per combination of the grid (with
the method's ``defaults_for(dataset)`` where an option is not given), :func:`runs_for` makes
the runs of every configuration and k, and :func:`validate_plan` checks a whole plan.
:func:`method_configs` and :func:`plan_runs` take shared options
(``{"alpha": [...], "lam": [...], "steps": 300}``, each applying to the methods declaring it). The configuration is carried whole:
the run key, the ``runs`` row (:meth:`RunSpec.as_row`), the MLflow params and the task names
derive from it, and it crosses the ``lcer-explain`` deployment boundary as
:meth:`RunSpec.to_payload` (rebuilt and re-keyed by :meth:`RunSpec.from_payload`).

A run that crosses to a worker with a bundle (:mod:`lcer_core.remote`) is *bound* to it: its
``model_digest`` and ``data_digest`` (sha256 of the bundle's checkpoint and of its data, see
:func:`lcer_core.remote.bundle_digests`) travel in the payload; the worker refuses a bundle
whose content has other digests and the pipeline a shard explained from one. The digests are
no part of the key (nor of ``key_fields``, the shard files' keys, nor of the ``runs`` row):
they say which bytes carried the model, not what the run is.

Run keys are stable across versions. The key payload (:func:`lcer_core.keys.run_key`:
dataset, method, k, alpha, lam, steps, seed, model, users, extra, and the pairs' version
:data:`lcer_core.pairs.PAIRS_VERSION`) has ``alpha``, ``lam`` and ``steps`` read from the
configuration's options (None for a method without them), and ``extra`` = the
configuration's other fields whose value differs from the config class's default: a run
that sets nothing else keys as it did, and a re-run replaces it instead of storing a
duplicate; a run with, say, another learning rate or KaffesCE budget gets a key of its own.
So does a run on a split seed's data (``split_seed``, see :mod:`lcer_core.datasets.prepare`):
it is named in the key payload, in the payload and in the ``runs`` row's ``params`` only when
it is not the default split (None). Runs stored with pairs of an earlier version (before the
item-0 fix: no ``pairs`` field) keep their keys and are neither replaced by nor mistaken for
today's runs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lcer_core.checks import (
    check_k,
    check_name,
    check_seed,
    check_shard_size,
    check_split_seed,
    check_users,
)
from lcer_core.errors import InvalidParameterError
from lcer_core.explainers import ExplainerConfig, get_method
from lcer_core.keys import run_key
from lcer_core.pairs import PAIRS_VERSION

__all__ = [
    "DEFAULT_KS",
    "RunSpec",
    "run_spec",
    "check_methods",
    "explainer_configs",
    "method_configs",
    "plan_configs",
    "runs_for",
    "split_options",
    "plan_runs",
    "validate_plan",
]

#: The list lengths K explained when none are given (the paper's Table 2).
DEFAULT_KS: tuple[int, ...] = (5, 10)

#: Options of earlier versions' key payload, in their own fields (None where a method lacks one).
_KEYED_OPTIONS = ("alpha", "lam", "steps")
#: How a grid option shows in a run's label.
_SYMBOLS = {"alpha": "α", "lam": "λ"}
#: A content digest in a payload: sha256, lower-case hex.
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_DIGESTS = ("model_digest", "data_digest")


@dataclass(frozen=True)
class RunSpec:
    """What determines one explanation run: its key, dataset, method, k, seed, users, model and
    the method's whole configuration; bound to a bundle, the digests of its model and data
    (no part of the key)."""

    run_id: str
    dataset: str
    method: str
    k: int
    seed: int
    n_users: int | None
    model_key: str
    config: ExplainerConfig
    #: The split seed of the data (None: the default split).
    split_seed: int | None = None
    model_digest: str | None = None
    data_digest: str | None = None

    def bound(self, model_digest: str, data_digest: str) -> RunSpec:
        """This run bound to the bundle whose checkpoint and data have these digests."""
        return replace(self, model_digest=model_digest, data_digest=data_digest)

    @property
    def digests(self) -> tuple[str, str] | None:
        """(model digest, data digest) of the bundle this run is bound to; None if unbound."""
        if self.model_digest is None or self.data_digest is None:
            return None
        return self.model_digest, self.data_digest

    def option(self, name: str) -> Any:
        """The value of the configuration's option ``name``; None if the method has no such option."""
        return getattr(self.config, name) if name in type(self.config).options else None

    @property
    def alpha(self) -> float | None:
        """α of the run (None for methods without it)."""
        return self.option("alpha")

    @property
    def lam(self) -> float | None:
        """λ of the run (None for methods without it)."""
        return self.option("lam")

    @property
    def steps(self) -> int | None:
        """Optimisation steps of the run (None for methods without them)."""
        return self.option("steps")

    def grid_values(self) -> dict[str, Any]:
        """The values of the configuration's grid options (α and λ for LCER), by name."""
        return {name: getattr(self.config, name) for name in type(self.config).grid}

    @property
    def label(self) -> str:
        """One line naming the run, e.g. ``ml-100k lcer k=5 α=0.1 λ=0.01``."""
        grid = "".join(f" {_SYMBOLS.get(n, n)}={v:g}" for n, v in self.grid_values().items())
        split = "" if self.split_seed is None else f" split={self.split_seed}"
        return f"{self.dataset}{split} {self.method} k={self.k}{grid}"

    @property
    def slug(self) -> str:
        """The run in a task name, e.g. ``lcer-k5-a0.1-l0.01``."""
        grid = "".join(f"-{n[0]}{v:g}" for n, v in self.grid_values().items())
        split = "" if self.split_seed is None else f"-s{self.split_seed}"
        return f"{self.method}-k{self.k}{grid}{split}"

    def explainer_config(self) -> dict[str, Any]:
        """The explainer's whole configuration, ``{"method": ..., **fields}`` (``dump_config()``)."""
        return get_method(self.method)(self.config).dump_config()

    def key_fields(self) -> dict[str, Any]:
        """The run's fields as earlier versions held them (shard files are keyed by these)."""
        return {
            "run_id": self.run_id,
            "dataset": self.dataset,
            "method": self.method,
            "k": self.k,
            "alpha": self.alpha,
            "lam": self.lam,
            "steps": self.steps,
            "seed": self.seed,
            "n_users": self.n_users,
            "model_key": self.model_key,
        }

    def selects_on(self) -> list[str]:
        """The evaluation tests the run's explainer, so configured, chooses its answers with."""
        return sorted(get_method(self.method)(self.config).selects())

    def as_row(self) -> dict[str, Any]:
        """The run's columns of the ``runs`` table (``config``: the whole configuration)."""
        return {
            **self.key_fields(),
            "config": self.explainer_config(),
            "reports_validity": get_method(self.method).reports_validity,
            "selects_on": self.selects_on(),
        }

    def params(self) -> dict[str, Any]:
        """What the run adds to its ``runs`` row's and MLflow run's params: the split seed, when
        it is not the default split."""
        return {} if self.split_seed is None else {"split_seed": self.split_seed}

    def tracked_params(self) -> dict[str, Any]:
        """The run's MLflow params, from its fields and configuration alone: ``method, k`` and
        the keyed options (``alpha, lam, steps``; None where the method has none), the seed,
        users, model and key, every field of the configuration (``explainer.NAME``) and
        :meth:`params`."""
        return {
            "method": self.method,
            "k": self.k,
            **{name: self.option(name) for name in _KEYED_OPTIONS},
            "seed": self.seed,
            "n_users": self.n_users,
            "model_key": self.model_key,
            "run_key": self.run_id,
            **{f"explainer.{name}": value for name, value in self.config.dump().items()},
            **self.params(),
        }

    def to_payload(self) -> dict[str, Any]:
        """The run as JSON-able data (a deployment's parameters); :meth:`from_payload` reverses it."""
        return {
            **self.params(),
            "run_id": self.run_id,
            "dataset": self.dataset,
            "method": self.method,
            "k": self.k,
            "seed": self.seed,
            "n_users": self.n_users,
            "model_key": self.model_key,
            "config": self.config.dump(),
            **{n: getattr(self, n) for n in _DIGESTS if getattr(self, n) is not None},
        }

    @classmethod
    def from_payload(cls, payload: RunSpec | Mapping[str, Any]) -> RunSpec:
        """A run from :meth:`to_payload`'s data, its configuration validated and its key
        recomputed (a payload whose ``run_id`` is not its content's key is refused; digests,
        optional, must be sha256 hex)."""
        if isinstance(payload, RunSpec):
            return payload
        if not isinstance(payload, Mapping):
            raise InvalidParameterError(f"a run must be a mapping, got {type(payload).__name__}")
        try:
            fields = dict(payload["config"])
            method = payload["method"]
            spec = run_spec(
                dataset=payload["dataset"],
                method=method,
                k=payload["k"],
                seed=payload["seed"],
                n_users=payload["n_users"],
                model_key=payload["model_key"],
                config=get_method(method).config_type(**fields),
                split_seed=payload.get("split_seed"),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidParameterError(f"malformed run payload: {exc}") from None
        if payload.get("run_id") != spec.run_id:
            raise InvalidParameterError(
                f"run payload {payload.get('run_id')!r} does not match its content ({spec.run_id})"
            )
        digests = [payload.get(n) for n in _DIGESTS]
        if digests == [None, None]:
            return spec
        for name, value in zip(_DIGESTS, digests, strict=True):
            if not (isinstance(value, str) and _DIGEST_RE.fullmatch(value)):
                raise InvalidParameterError(
                    f"run {spec.run_id}: {name} must be a sha256 in hex, got {value!r}",
                    param=name,
                )
        return spec.bound(*digests)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Through pydantic (a flow's parameters), a run is validated by :meth:`from_payload`."""
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls.from_payload,
            serialization=core_schema.plain_serializer_function_ser_schema(cls.to_payload),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """A run's JSON schema (deployment parameters, Prefect's form): :meth:`to_payload`'s fields."""
        return _RUN_SCHEMA


def _optional(kind: str, **extra: Any) -> dict[str, Any]:
    return {"anyOf": [{"type": kind, **extra}, {"type": "null"}], "default": None}


_DIGEST_SCHEMA = {"type": "string", "pattern": f"^{_DIGEST_RE.pattern}$"}
#: :meth:`RunSpec.to_payload` as a JSON schema.
_RUN_SCHEMA: dict[str, Any] = {
    "title": "RunSpec",
    "description": "One explanation run; its run_id is the key of the rest.",
    "type": "object",
    "properties": {
        "run_id": {"type": "string", "title": "Run key"},
        "dataset": {"type": "string"},
        "method": {"type": "string"},
        "k": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": 0},
        "n_users": _optional("integer", minimum=1),
        "model_key": {"type": "string"},
        "config": {"type": "object", "title": "The method's whole configuration"},
        "split_seed": _optional("integer", minimum=0),
        "model_digest": {"anyOf": [_DIGEST_SCHEMA, {"type": "null"}], "default": None},
        "data_digest": {"anyOf": [_DIGEST_SCHEMA, {"type": "null"}], "default": None},
    },
    "required": ["run_id", "dataset", "method", "k", "seed", "n_users", "model_key", "config"],
    "additionalProperties": False,
}


def run_spec(
    *,
    dataset: str,
    method: str,
    k: int,
    seed: int,
    n_users: int | None,
    model_key: str,
    config: ExplainerConfig | None = None,
    split_seed: int | None = None,
    **options: Any,
) -> RunSpec:
    """The run of ``method`` with ``config`` (or its config with ``options`` set, None: default),
    keyed as earlier versions keyed it (see the module docstring)."""
    cls = get_method(method)
    if config is None:
        declared = cls.config_type.options
        unknown = sorted(n for n, v in options.items() if v is not None and n not in declared)
        if unknown:
            raise InvalidParameterError(f"method {method!r} has no option(s) {', '.join(unknown)}")
        config = cls.config_type(**{n: v for n, v in options.items() if v is not None})
    elif options:
        raise InvalidParameterError("give either a config or options, not both")
    if not isinstance(config, cls.config_type):
        raise InvalidParameterError(
            f"{method} expects a {cls.config_type.__name__}, got {type(config).__name__}"
        )
    check_name(dataset, "dataset")
    check_name(model_key, "model_key")
    check_k(k)
    check_seed(seed)
    if n_users is not None:
        check_users(n_users)
    if split_seed is not None:
        check_split_seed(split_seed)
    keyed = {n: (getattr(config, n) if n in config.options else None) for n in _KEYED_OPTIONS}
    extra = {n: v for n, v in config.non_default().items() if n not in _KEYED_OPTIONS}
    key = run_key(
        dataset=dataset,
        method=method,
        k=k,
        **keyed,
        seed=seed,
        model_version=model_key,
        n_users=n_users,
        extra=extra,
        pairs_version=PAIRS_VERSION,
        split_seed=split_seed,
    )
    return RunSpec(key, dataset, method, k, seed, n_users, model_key, config, split_seed)


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` with unknown names refused in one line (duplicates dropped, order kept)."""
    out: list[str] = []
    for method in methods:
        get_method(method)
        if method not in out:
            out.append(method)
    if not out:
        raise InvalidParameterError("no method given")
    return out


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


#: One method's options in a plan: (fixed values by name, grid values by name).
MethodOptions = tuple[Mapping[str, Any], Mapping[str, Sequence[Any]]]


def explainer_configs(
    method: str,
    dataset: str,
    fixed: Mapping[str, Any] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    budget: int | None = None,
) -> list[ExplainerConfig]:
    """``method``'s configurations for ``dataset``: one per combination of ``grid`` (in its
    order), on top of ``fixed`` and the method's ``defaults_for(dataset)``; ``budget`` sets the
    field its config names as its search budget (methods without one ignore it). A name the
    method does not declare, or a grid option without values, is refused in one line."""
    cls = get_method(method).config_type
    fixed = {n: v for n, v in (fixed or {}).items() if v is not None}
    grid = dict(grid or {})
    unknown = [n for n in [*fixed, *grid] if n not in cls.options]
    if unknown:
        known = ", ".join(cls.options) or "none"
        raise InvalidParameterError(
            f"method {method!r} has no option {unknown[0]!r} (options: {known})"
        )
    empty = [n for n, values in grid.items() if not _is_list(values) or not values]
    if empty:
        raise InvalidParameterError(f"method {method!r}: grid option {empty[0]!r} has no values")
    base = {**cls.defaults_for(dataset), **fixed}
    if budget is not None and cls.budget_option:
        base[cls.budget_option] = budget
    configs: dict[str, ExplainerConfig] = {}
    for combo in itertools.product(*grid.values()):
        config = cls(**{**base, **dict(zip(grid, combo, strict=True))})
        configs.setdefault(repr(config.dump()), config)
    return list(configs.values())


def split_options(method: str, options: Mapping[str, Any] | None) -> MethodOptions:
    """Shared options (``{"alpha": [...], "lam": [...], "steps": 300}``) as ``method``'s
    (fixed, grid): only the options it declares apply to it; a grid option's value (a value or
    a list) is a grid axis, others are fixed; None or an empty list: not given."""
    cls = get_method(method).config_type
    fixed: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    for name in cls.options:
        value = (options or {}).get(name)
        if name in cls.grid:
            values = [] if value is None else list(value) if _is_list(value) else [value]
            if values:
                grid[name] = values
        elif value is not None:
            fixed[name] = value
    return fixed, grid


def method_configs(
    method: str, dataset: str, options: Mapping[str, Any] | None = None
) -> list[ExplainerConfig]:
    """``method``'s configurations for ``dataset`` from shared options (see :func:`split_options`;
    ``"budget"``: the method's search budget), one per combination of its grid options."""
    fixed, grid = split_options(method, options)
    return explainer_configs(method, dataset, fixed, grid, budget=(options or {}).get("budget"))


def plan_configs(
    dataset: str, explainers: Mapping[str, MethodOptions], budget: int | None = None
) -> list[tuple[str, ExplainerConfig]]:
    """Every (method, configuration) of ``explainers`` (method -> (fixed, grid)) for
    ``dataset``, validated (see :func:`explainer_configs`)."""
    return [
        (method, config)
        for method in check_methods(list(explainers))
        for config in explainer_configs(method, dataset, *explainers[method], budget=budget)
    ]


def runs_for(
    configs: Sequence[tuple[str, ExplainerConfig]],
    *,
    dataset: str,
    ks: Sequence[int],
    seed: int,
    n_users: int | None,
    model_key: str,
    split_seed: int | None = None,
) -> list[RunSpec]:
    """The runs of every (method, configuration) at every k, on the data of ``split_seed``."""
    if not ks:
        raise InvalidParameterError("no k given", param="k")
    specs: dict[str, RunSpec] = {}
    for method, config in configs:
        for k in ks:
            spec = run_spec(
                dataset=dataset,
                method=method,
                k=k,
                seed=seed,
                n_users=n_users,
                model_key=model_key,
                config=config,
                split_seed=split_seed,
            )
            specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def plan_runs(
    *,
    dataset: str,
    methods: Sequence[str],
    ks: Sequence[int],
    options: Mapping[str, Any] | None = None,
    seed: int,
    n_users: int | None,
    model_key: str,
    split_seed: int | None = None,
) -> list[RunSpec]:
    """Every run of shared ``options`` (see :func:`split_options`): each method once per k and
    per combination of its grid options (LCER per (α, λ); a baseline, which has none, once per k)."""
    budget = (options or {}).get("budget")
    explainers = {m: split_options(m, options) for m in check_methods(methods)}
    return runs_for(
        plan_configs(dataset, explainers, budget),
        dataset=dataset,
        ks=ks,
        seed=seed,
        n_users=n_users,
        model_key=model_key,
        split_seed=split_seed,
    )


def validate_plan(
    datasets: Sequence[str],
    explainers: Mapping[str, MethodOptions],
    *,
    ks: Sequence[int],
    seeds: Sequence[int],
    n_users: int | None,
    shard_size: int,
    split_seeds: Sequence[int] = (),
    budget: int | None = None,
) -> list[str]:
    """Check a whole plan before any work (:class:`lcer_core.plan.Plan` when it is built):
    datasets, methods (method -> (fixed, grid)), every configuration of every dataset, ks,
    seeds, users and shard size. The methods, unknown names refused."""
    from lcer_core.datasets import get_spec

    if not datasets:
        raise InvalidParameterError("no dataset given")
    for name in datasets:
        get_spec(name)
    method_list = check_methods(list(explainers))
    for name in datasets:
        plan_configs(name, explainers, budget)
    if not ks:
        raise InvalidParameterError("no k given", param="k")
    for value in ks:
        check_k(value)
    for value in seeds:
        check_seed(value)
    for value in split_seeds:
        check_split_seed(value)
    if n_users is not None:
        check_users(n_users)
    check_shard_size(shard_size)
    return method_list
