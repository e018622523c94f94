"""The Prefect flows in-process (a temporary Prefect server via prefect_test_harness) on ML 100K.

One LCER_HOME for the module: the first pipeline run trains a tiny Mult-VAE (2 epochs) and
explains 4 test users in shards of 2 with every method; later tests reuse that model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lcer_core import runs, shards
from lcer_core.errors import InvalidParameterError, UnknownMethodError
from lcer_core.explainers import METHODS
from lcer_core.fsio import write_parquet_atomic
from lcer_core.store import ResultStore

pytestmark = pytest.mark.slow

TINY = {"ks": [5], "n_users": 4, "shard_size": 2, "epochs": 2, "seed": 0}
STEPS = {"steps": 30}  # LCER's and LCER+'s steps (the options of the methods that declare them)


def tiny(methods: list[str]) -> Any:
    """The module's small plan: ``methods`` on ML 100K, 4 users in shards of 2, 30 steps."""
    from lcer_core.plan import make_plan, shorthand_explainers

    return make_plan(datasets=["ml-100k"], explainers=shorthand_explainers(methods, STEPS), **TINY)


N_SHARDS = 2  # 4 users in shards of 2


@pytest.fixture(scope="module")
def flow_home(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> Iterator[Path]:
    """LCER_HOME, the mirror and a temporary Prefect server for every test of this module."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("flows") / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCER_HOME", str(home))
        mp.setenv("LCER_MIRROR", http_mirror)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("LCER_TASK_RUNNER", raising=False)
        with prefect_test_harness(server_startup_timeout=90):
            yield home


def _task_runs(flow_run_id: Any, expected: int, prefix: str = "explain-") -> list[Any]:
    """The flow run's task runs named ``prefix...`` once ``expected`` of them are final (bounded wait)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        mine = [r for r in runs if r.name.startswith(prefix)]
        if (len(mine) >= expected and all(r.state and r.state.is_final() for r in mine)) or (
            time.monotonic() > deadline
        ):
            return mine
        time.sleep(0.5)


def _run(flow: Any, **params: Any) -> tuple[Any, list[dict[str, Any]]]:
    state = flow(**params, return_state=True)
    assert state.is_completed(), state
    return state.state_details.flow_run_id, state.result()


def _shard_files(home: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((home / "work").glob("*/shard-*.parquet"))}


def test_pipeline_fans_out_stores_tracks_and_reuses_finished_shards(flow_home: Path) -> None:
    from flows.pipeline import lcer_pipeline
    from tasks import mlflow_client

    methods = sorted(METHODS)
    flow_run_id, rows = _run(lcer_pipeline, plan=tiny(methods))

    # One row per method (baselines once per k, LCER at the paper's α/λ), 4 users x top-5.
    assert sorted(r["method"] for r in rows) == methods
    assert all(r["n_pairs"] == 20 for r in rows)
    lcer = next(r for r in rows if r["method"] == "lcer")
    assert (lcer["alpha"], lcer["lam"], lcer["steps"]) == (0.1, 0.01, 30)
    assert all(r["alpha"] is None for r in rows if r["method"] not in ("lcer", "lcer-plus"))

    store = ResultStore()
    table2 = store.table2("ml-100k")
    assert sorted(table2["method"].to_list()) == methods
    assert set(table2["run_id"].to_list()) == {r["run_id"] for r in rows}
    runs = store.query("SELECT run_id, status, mlflow_run_id, device FROM runs")
    assert runs.height == len(methods)
    assert set(runs["status"].to_list()) == {"finished"}
    assert set(runs["device"].to_list()) == {"cpu"}
    counts = store.counts()
    assert counts["recommendations"] == counts["explanations"] == 20 * len(methods)
    assert store.query("SELECT count(*) AS n FROM models")["n"][0] == 1
    # cost per pair in its own units: LCER takes `steps` gradient steps per pair, KaffesCE none
    cost = {
        r["method"]: r
        for r in store.query("SELECT * FROM strict WHERE dataset = 'ml-100k'").iter_rows(named=True)
    }
    assert cost["lcer"]["grad_steps_per_pair"] == cost["lcer"]["target_per_pair"] == 30
    assert cost["lcer"]["catalogue_per_pair"] == 0 and cost["lcer"]["selects_on"] == []
    assert cost["kaffes"]["grad_steps_per_pair"] == 0 and cost["kaffes"]["catalogue_per_pair"] > 0
    assert cost["lcer-plus"]["selects_on"] == ["sufficiency", "topk"]

    # MLflow holds the same figures as DuckDB, and the explanations Parquet as an artifact.
    client = mlflow_client.client()
    for row in table2.iter_rows(named=True):
        mlflow_id = runs.filter(pl.col("run_id") == row["run_id"])["mlflow_run_id"][0]
        logged = client.get_run(mlflow_id)
        assert logged.data.params["method"] == row["method"]
        assert logged.data.metrics["fns_pct"] == pytest.approx(row["fns_pct"])
        # the strict comparison: strict_* metrics, the cost per pair, what it selects on
        strict = store.query("SELECT * FROM strict WHERE run_id = ?", [row["run_id"]])
        for key in ("strict_ps_pct", "strict_pn_pct", "strict_fns_pct", "grad_steps_per_pair"):
            assert logged.data.metrics[key] == pytest.approx(strict[key][0]), key
        assert logged.data.params["selects_on"] == ("+".join(strict["selects_on"][0]) or "none")
        artifacts = {a.path for a in client.list_artifacts(mlflow_id)}
        assert {"explanations", "figures"} <= artifacts
    assert client.get_registered_model("multvae-ml-100k") is not None

    # The fan-out is real: one explanation task run per shard and method, with its own name.
    task_runs = _task_runs(flow_run_id, N_SHARDS * len(methods))
    assert len(task_runs) == N_SHARDS * len(methods)
    assert {r.state.name for r in task_runs} == {"Completed"}
    for method in methods:
        names = sorted(r.name for r in task_runs if r.name.startswith(f"explain-{method}-k"))
        assert [n[-4:] for n in names] == ["0000", "0001"]
    files = _shard_files(flow_home)
    assert len(files) == N_SHARDS * len(methods)

    # The same flow again: nothing recomputed (every shard a cache hit, files untouched),
    # the model not trained again, every row count unchanged.
    flow_run_2, rows_2 = _run(lcer_pipeline, plan=tiny(methods))
    again = _task_runs(flow_run_2, N_SHARDS * len(methods))
    assert len(again) == N_SHARDS * len(methods)
    assert {r.state.name for r in again} == {"Cached"}
    assert _shard_files(flow_home) == files
    assert store.counts() == counts
    assert [r["fns_pct"] for r in rows_2] == [r["fns_pct"] for r in rows]
    assert store.query("SELECT count(*) AS n FROM runs")["n"][0] == len(methods)
    train_runs = _task_runs(flow_run_2, 1, prefix="train-multvae")
    assert len(train_runs) == 1

    # A shard whose file is gone is recomputed even though Prefect remembers its result;
    # the others of that run stay cache hits.
    fia = next(r for r in rows if r["method"] == "fia")
    lost = shards.shard_path(fia["run_id"], 1)
    lost.unlink()
    flow_run_3, _ = _run(lcer_pipeline, plan=tiny(["fia"]))
    third = {r.name[-4:]: r.state.name for r in _task_runs(flow_run_3, N_SHARDS)}
    assert third == {"0000": "Cached", "0001": "Completed"}
    assert lost.is_file()
    assert store.counts() == counts


def test_cli_runs_ease_through_the_pipeline_and_reports_a_table_per_recommender(
    flow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataset_fixtures import run_cli

    import lcer_core.cli.pipeline  # noqa: F401  (registers run)
    import lcer_core.cli.results  # noqa: F401  (registers report)
    from tasks import mlflow_client

    common = ["ml-100k", "--methods", "lcer,kaffes", "--k", "2", "--users", "3", "--steps", "20"]
    ease_argv = ["--recommender", "ease", "--recommender-option", "lam=250"]
    code, _, err = run_cli(["run", *common, *ease_argv], capsys)
    assert code == 0, err[-2000:]
    code, _, err = run_cli(["run", *common, "--epochs", str(TINY["epochs"])], capsys)  # Mult-VAE
    assert code == 0, err[-2000:]

    code, out, err = run_cli(["report", "ml-100k", "--no-train"], capsys)
    assert code == 0, err
    assert "recommender multvae · top-2" in out and "recommender ease · top-2" in out
    code, out, _ = run_cli(["report", "ml-100k", "--no-train", "--format", "json"], capsys)
    rows = [r for r in json.loads(out)["table2_by_recommender"] if r["k"] == 2]
    assert sorted((r["recommender"], r["method"]) for r in rows) == [
        ("ease", "kaffes"), ("ease", "lcer"), ("multvae", "kaffes"), ("multvae", "lcer"),
    ]  # fmt: skip
    ease = {r["model_key"] for r in rows if r["recommender"] == "ease"}
    assert len(ease) == 1 and next(iter(ease)).startswith("ease-")
    assert all(r["n_pairs"] == 6 for r in rows)

    # the model: its own checkpoint folder, registry name and training run; Mult-VAE's kept
    store = ResultStore()
    models = store.query("SELECT model_key, params_json FROM models ORDER BY model_key")
    assert sum(k.startswith("ease-") for k in models["model_key"]) == 1
    assert (flow_home / "models" / "ml-100k" / "latest-ease").read_text() in ease
    (ease_key,) = ease  # the option given on the command line trained it and is in its key
    recorded = json.loads((flow_home / "models" / "ml-100k" / ease_key / "train.json").read_text())
    assert recorded["config"] == {"lam": 250.0}
    client = mlflow_client.client()
    assert client.get_registered_model("ease-ml-100k") is not None
    assert client.get_registered_model("multvae-ml-100k") is not None
    names = {
        r.info.run_name
        for r in client.search_runs([client.get_experiment_by_name("ml-100k").experiment_id])
    }
    assert {"train-ease", "train-multvae"} <= names


def test_sweep_is_a_parent_mlflow_run_with_one_child_per_grid_point(flow_home: Path) -> None:
    from flows.sweep import lcer_sweep
    from lcer_core.plan import sweep_plan
    from tasks import mlflow_client

    # the sweep is a plan with a grid; as a deployment's parameter, JSON validated by Prefect
    plan = sweep_plan(
        "ml-100k",
        grid={"alpha": [0.05, 0.1], "lam": [0.01, 0.02]},
        fixed={"steps": 20},
        n_users=2,
        shard_size=2,
        epochs=2,
    )
    _, rows = _run(lcer_sweep, plan=plan.model_dump(mode="json"))
    assert sorted((r["alpha"], r["lam"]) for r in rows) == [
        (0.05, 0.01),
        (0.05, 0.02),
        (0.1, 0.01),
        (0.1, 0.02),
    ]
    client = mlflow_client.client()
    parents = {client.get_run(r["mlflow_run_id"]).data.tags["mlflow.parentRunId"] for r in rows}
    assert len(parents) == 1
    parent = parents.pop()
    assert client.get_run(parent).info.status == "FINISHED"
    children = mlflow_client.child_runs(parent)
    assert len(children) == 4
    for child in children:
        assert {"alpha", "lam", "method", "k"} <= set(child.data.params)
        assert set(mlflow_client.METRICS) <= set(child.data.metrics)
    figures = {Path(a.path).name for a in client.list_artifacts(parent, "figures")}
    assert {"fig8_effect_lambda.png", "fig9_effect_alpha.png", "pareto_fns_len.png"} <= figures
    stored = ResultStore().query(
        "SELECT run_id FROM run_results WHERE run_id IN (SELECT unnest(?))",
        [[r["run_id"] for r in rows]],
    )
    assert stored.height == 4


def test_reevaluate_adds_a_timestamped_metrics_row_per_table2_run(flow_home: Path) -> None:
    from flows.reevaluate import lcer_reevaluate

    store = ResultStore()
    before = store.query("SELECT run_id, kind FROM metrics")
    table2 = store.table2("ml-100k")
    assert table2.height >= 1, "runs of the pipeline test are expected in this module's LCER_HOME"
    _, rows = _run(lcer_reevaluate, datasets=["ml-100k"])
    assert sorted(r["run_id"] for r in rows) == sorted(table2["run_id"].to_list())
    after = store.query("SELECT run_id, kind, fns_pct FROM metrics")
    added = after.filter(pl.col("kind") == "reevaluate")
    assert after.height == before.height + table2.height
    assert sorted(added["run_id"].to_list()) == sorted(table2["run_id"].to_list())
    # Same model as the one that explained them: the figures do not move.
    for row in rows:
        original = table2.filter(pl.col("run_id") == row["run_id"])["fns_pct"][0]
        assert row["fns_pct"] == pytest.approx(original)


# --------------------------------------------------------------------------- pieces


def test_split_users_and_plan_runs() -> None:
    assert shards.split_users([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    with pytest.raises(InvalidParameterError, match="shard_size"):
        shards.split_users([1], 0)
    specs = runs.plan_runs(
        dataset="ml-100k",
        methods=["lcer", "fia"],
        ks=[5, 10],
        options={"alpha": [0.1, 0.2], "lam": [0.01], "steps": None},
        seed=0,
        n_users=4,
        model_key="m",
    )
    lcer = [s for s in specs if s.method == "lcer"]
    fia = [s for s in specs if s.method == "fia"]
    assert len(lcer) == 4 and len(fia) == 2  # baselines once per k, whatever α/λ
    assert all(s.steps is not None for s in lcer) and all(s.steps is None for s in fia)
    assert len({s.run_id for s in specs}) == len(specs)
    with pytest.raises(UnknownMethodError, match="nope"):
        runs.check_methods(["lcer", "nope"])


def test_shard_files_are_whole_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "work" / "r" / "shard-0000.parquet"
    frame = pl.DataFrame({"uid": [3, 3, 4], "rank": [1, 2, 1]})
    write_parquet_atomic(frame, path)
    assert shards.shard_is_complete(path, [3, 4])
    assert not shards.shard_is_complete(path, [3, 4, 5])
    assert not shards.shard_is_complete(tmp_path / "missing.parquet", [3])
    path.write_bytes(b"not parquet")
    assert not shards.shard_is_complete(path, [3, 4])
    assert not list(path.parent.glob(".tmp-*"))


def test_ray_runner_without_prefect_ray_is_one_clear_line() -> None:
    import importlib.util

    from flows.runner import make_task_runner

    if importlib.util.find_spec("prefect_ray") is not None:
        pytest.skip("prefect-ray is installed here")
    with pytest.raises(InvalidParameterError, match=r"pip install 'lcer\[ray\]'"):
        make_task_runner("ray", "ray://127.0.0.1:10001")
    with pytest.raises(InvalidParameterError, match="threads, ray"):
        make_task_runner("dask")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nope"], "unknown dataset 'nope'"),
        (["run", "--methods", "lcer,bogus"], "unknown method 'bogus'"),
        (["run", "--k", "5,x"], "--k: 'x' is not a valid int"),
        (["run", "--users", "0"], "--users must be a positive integer"),
        (["run", "--shard-size", "0"], "--shard-size must be a positive integer"),
        (["run", "--address", "ray://x:1"], "--address only applies with --runner ray"),
        (
            ["sweep", "ml-100k", "--alphas", "0.1,-1"],
            "--alphas must be a finite number in [0, 1e6), got -1.0",
        ),
        (["train", "ml-100k", "--epochs", "0"], "--epochs must be >= 1"),
        (["run", "--recommender", "bogus"], "unknown recommender 'bogus'; known: ease, multvae"),
        (["train", "ml-100k", "--recommender", "x"], "unknown recommender 'x'; known: ease"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], lcer_home: Path
) -> None:
    import lcer_core.cli.pipeline  # noqa: F401  (registers run/sweep/train)
    from lcer_core.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (lcer_home / "prefect-home").exists()  # refused before Prefect started


def test_lcer_run_sets_a_plugins_option_in_key_row_and_mlflow(
    flow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """docs/extending.md's ``lcer run ml-100k --method toy --set top=2`` on this module's server
    and model: ``top`` reaches the run key (not the default top's), the ``runs`` row's
    ``config`` and the MLflow run's params."""
    import json

    from dataset_fixtures import run_cli
    from test_extending import blocks

    from lcer_core.explainers import registry
    from lcer_core.runs import run_spec
    from tasks import mlflow_client

    for name, value in {  # what the command line sets, restored after the test
        "PREFECT_HOME": str(flow_home / "prefect-home"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for _, name, text in blocks():  # the page's plugin, on sys.path, registered here
        if name:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry.load_plugins()
        argv = ["run", "ml-100k", "--method", "toy", "--set", "top=2", "--users", "2", "--k", "2"]
        code, _, err = run_cli([*argv, "--epochs", str(TINY["epochs"])], capsys)
        assert code == 0, err
        [row] = (
            ResultStore()
            .query("SELECT run_id, model_key, config, mlflow_run_id FROM runs WHERE method = 'toy'")
            .iter_rows(named=True)
        )
        keys = {
            top: run_spec(
                dataset="ml-100k",
                method="toy",
                k=2,
                seed=0,
                n_users=2,
                model_key=row["model_key"],
                top=top,
            ).run_id
            for top in (1, 2)
        }
    finally:
        METHODS.pop("toy", None)
        registry.PLUGINS.pop("toy", None)
    assert row["run_id"] == keys[2] != keys[1]
    assert json.loads(row["config"]) == {"method": "toy", "top": 2}
    params = mlflow_client.client().get_run(row["mlflow_run_id"]).data.params
    assert params["explainer.top"] == "2" and params["method"] == "toy"
    assert params["run_key"] == row["run_id"]
