"""Runs carry their explainer's whole configuration: keys, rows, MLflow params, the deployment boundary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from mlflow.tracking import MlflowClient
from mlflow_fixtures import mlflow_template_db_fixture, store_fixture  # noqa: F401

from lcer_core.cli.flags import cli_message
from lcer_core.errors import InvalidParameterError, UnknownMethodError
from lcer_core.explainers import (
    FIA,
    METHODS,
    ExplainerConfig,
    KaffesConfig,
    LCERConfig,
    get_explainer,
    get_method,
    register,
)
from lcer_core.keys import run_key
from lcer_core.pairs import PAIRS_VERSION
from lcer_core.runs import RunSpec, method_configs, plan_runs, run_spec
from lcer_core.shards import shard_key

COMMON = {"dataset": "ml-100k", "k": 5, "seed": 0, "model_key": "abc123"}

# Keys of the same runs as computed by main's code before the item-0 fix (pairs version 1,
# commit e0d35e4): today's runs must not take them (their pairs differ), and ``run_key`` with
# ``pairs_version=1`` still gives them (old homes' rows stay addressable).
V1_KEYS = [
    ("lcer", {"alpha": 0.1, "lam": 0.01, "steps": 300}, None, "f41e1b3198ac1528"),
    ("lcer", {"alpha": 0.1, "lam": 0.01, "steps": 300}, 20, "212ed75262e20e0d"),
    ("lcer", {"alpha": 0.1, "lam": 0.01}, None, "b5e65afaa5db188e"),  # LCER's 3000 steps
    ("lcer-plus", {"alpha": 1.0, "lam": 0.1}, 20, "86ad3ba82552afec"),
    ("fia", {}, None, "a01a2f590ea05dc6"),
    ("fia", {}, 20, "47165b315731b244"),
    ("accent", {}, None, "5edb988ad8bb1126"),
]
# The same runs' keys with today's pairs (version 2): every later version must keep these.
KEYS = [
    "cb4722b964403233",
    "94dd8cbb96d8e572",
    "b9ca20eec84d0140",
    "ed1fe2e929d583f5",
    "70e687b8ccead47f",
    "0eeca0029f58a7a7",
    "a33c7e19014f8d5d",
]


@pytest.mark.parametrize(
    ("method", "options", "n_users", "v1_key", "key"),
    [(*old, new) for old, new in zip(V1_KEYS, KEYS, strict=True)],
)
def test_keys_are_stable_and_versioned_by_the_pairs(
    method: str, options: dict, n_users: int | None, v1_key: str, key: str
) -> None:
    spec = run_spec(method=method, n_users=n_users, **options, **COMMON)
    assert PAIRS_VERSION == 2
    assert spec.run_id == key != v1_key
    # the same through the planner the CLI and the flows use (an int α keys as the float)
    [planned] = plan_runs(
        methods=[method],
        ks=[5],
        options={n: [v] if n in ("alpha", "lam") else v for n, v in options.items()},
        n_users=n_users,
        **{n: v for n, v in COMMON.items() if n != "k"},
    )
    assert planned.run_id == key
    # the payload of version 1 (no "pairs" field) still gives version 1's key
    keyed = {n: options.get(n) for n in ("alpha", "lam", "steps")}
    if method == "lcer" and keyed["steps"] is None:
        keyed["steps"] = 3000
    if method == "lcer-plus":
        keyed["steps"] = spec.config.steps
    assert (
        run_key(
            dataset="ml-100k",
            method=method,
            k=5,
            **keyed,
            seed=0,
            model_version="abc123",
            n_users=n_users,
            pairs_version=1,
        )
        == v1_key
    )


def test_shard_files_are_keyed_by_their_run() -> None:
    lcer = run_spec(method="lcer", alpha=0.1, lam=0.01, n_users=None, **COMMON)
    fia = run_spec(method="fia", n_users=None, **{**COMMON, "k": 10})
    assert shard_key(lcer, 0, [1, 2, 3]) == (
        "a8441a6585c01454b71fdb73c492c9428c8f8d043557fe4ff10d263666bb5bfe"
    )
    assert shard_key(fia, 0, [1, 2, 3]) == (
        "7de19b653e05731ade19833d85cbd7959ee9f0a80eb3b586583e4db2afc52983"
    )


def _two_of_each() -> list[RunSpec]:
    """Two LCER runs that differ only in lr, two KaffesCE runs only in their budget."""
    return [
        run_spec(method="lcer", config=LCERConfig(steps=50), n_users=3, **COMMON),
        run_spec(method="lcer", config=LCERConfig(steps=50, lr=5e-3), n_users=3, **COMMON),
        run_spec(method="kaffes", config=KaffesConfig(), n_users=3, **COMMON),
        run_spec(method="kaffes", config=KaffesConfig(max_queries=50), n_users=3, **COMMON),
    ]


def test_runs_that_differ_only_in_lr_or_budget_get_keys_of_their_own() -> None:
    specs = _two_of_each()
    assert len({s.run_id for s in specs}) == 4
    rows = [s.as_row() for s in specs]
    assert rows[1]["config"]["lr"] == 5e-3 and rows[0]["config"]["lr"] == 1e-3
    assert rows[3]["config"] == {**rows[2]["config"], "max_queries": 50}
    assert rows[2]["config"]["method"] == "kaffes" and rows[2]["reports_validity"] is True
    assert rows[2]["alpha"] is None and rows[0]["alpha"] == 0.1  # the familiar columns
    fia = run_spec(method="fia", n_users=3, **COMMON).as_row()
    assert fia["reports_validity"] is False


def test_both_configs_reach_the_runs_row_and_the_mlflow_params(store: MlflowClient) -> None:
    from lcer_core.store import ResultStore
    from tasks.store import begin_runs
    from tasks.tracking import open_runs

    specs = _two_of_each()
    assert sorted(begin_runs.fn(specs, {"shard_size": 25})) == sorted(s.run_id for s in specs)
    stored = ResultStore().query("SELECT run_id, params_json FROM runs")
    params = {r["run_id"]: json.loads(r["params_json"]) for r in stored.iter_rows(named=True)}
    assert params[specs[1].run_id]["explainer"]["lr"] == 5e-3
    assert params[specs[3].run_id]["explainer"]["max_queries"] == 50
    opened = open_runs.fn(specs, {"shard_size": 25})
    logged = {key: store.get_run(mlflow_id).data.params for key, mlflow_id in opened.items()}
    lr = [logged[s.run_id]["explainer.lr"] for s in specs[:2]]
    assert lr == ["0.001", "0.005"]
    assert logged[specs[3].run_id]["explainer.max_queries"] == "50"
    for spec in specs:  # the DESIGN contract's params beside the config's
        assert {"method", "k", "alpha", "lam"} <= set(logged[spec.run_id])


def test_a_run_crosses_the_deployment_boundary_whole() -> None:
    from prefect.utilities.callables import parameter_schema
    from pydantic import TypeAdapter

    from flows.explain import lcer_explain

    specs = [*_two_of_each(), run_spec(method="fia", n_users=None, **COMMON)]
    sent = json.loads(json.dumps([s.to_payload() for s in specs]))  # as the API carries it
    assert TypeAdapter(list[RunSpec]).validate_python(sent) == specs
    # the flow's own parameter validation (what a deployment's flow run goes through)
    got = lcer_explain.validate_parameters({"specs": sent, "users": [1, 2]})["specs"]
    assert got == specs and type(got[3].config) is KaffesConfig
    assert "specs" in parameter_schema(lcer_explain.fn).properties
    forged = {**sent[0], "run_id": "../../elsewhere"}
    with pytest.raises(InvalidParameterError, match="does not match"):
        RunSpec.from_payload(forged)


def test_labels_and_task_names_derive_from_the_grid() -> None:
    lcer = run_spec(method="lcer", alpha=0.1, lam=0.01, n_users=None, **COMMON)
    fia = run_spec(method="fia", n_users=None, **COMMON)
    assert lcer.label == "ml-100k lcer k=5 α=0.1 λ=0.01" and lcer.slug == "lcer-k5-a0.1-l0.01"
    assert fia.label == "ml-100k fia k=5" and fia.slug == "fia-k5"
    assert (lcer.alpha, lcer.lam, lcer.steps) == (0.1, 0.01, 3000)
    assert (fia.alpha, fia.lam, fia.steps) == (None, None, None)


def test_method_configs_apply_only_declared_options_with_the_dataset_defaults() -> None:
    from lcer_core.paper import PAPER_LCER_PARAMS

    [lcer] = method_configs("lcer", "epinions", {"steps": 40})
    assert (lcer.alpha, lcer.lam) == tuple(PAPER_LCER_PARAMS["epinions"].values())
    assert lcer.steps == 40
    grid = method_configs("lcer", "ml-100k", {"alpha": [0.1, 0.2], "lam": [0.01, 0.02]})
    assert len(grid) == 4
    assert method_configs("fia", "ml-100k", {"alpha": [0.5], "steps": 3}) == [FIA.config_type()]
    with pytest.raises(InvalidParameterError, match="alpha must be a finite number"):
        method_configs("lcer", "ml-100k", {"alpha": [float("nan")]})


def test_get_explainer_refuses_a_parameter_instead_of_dropping_it() -> None:
    with pytest.raises(InvalidParameterError, match="has no parameter"):
        get_explainer("fia", alpha=0.1)
    assert get_explainer("kaffes", max_queries=7).dump_config()["max_queries"] == 7


def test_the_registry_is_the_one_place_that_knows_the_methods() -> None:
    with pytest.raises(
        UnknownMethodError, match="unknown method 'magic'; known: accent, amortised, fia"
    ):
        get_method("magic")

    @dataclass(frozen=True)
    class TakenConfig(ExplainerConfig):
        pass

    class Taken(FIA):
        name: ClassVar[str] = "fia"
        config_type = TakenConfig

    with pytest.raises(InvalidParameterError, match="'fia' .* is taken by"):
        register(Taken)
    assert METHODS["fia"] is FIA
    assert [m for m in sorted(METHODS) if METHODS[m].prefers_gpu] == ["lcer", "lcer-plus"]


def test_the_cli_names_its_flags_in_one_table(tmp_path: Path) -> None:
    exc = InvalidParameterError("k must be a positive integer, got 0", param="k")
    assert cli_message(exc, ["run", "--k", "0"]) == "--k must be a positive integer, got 0"
    exc = InvalidParameterError(
        "alpha must be a finite number in [0, 1e6), got -1.0", param="alpha"
    )
    assert cli_message(exc, ["sweep", "ml-100k"]).startswith("--alphas must be")
    assert cli_message(exc, ["explain", "ml-100k"]).startswith("--alpha must be")
    exc = InvalidParameterError("k=9 must be smaller than ...", param="k")
    assert cli_message(exc, ["explain"]) == "k=9 must be smaller than ..."
