"""MLflow tracking on a real SQLite store under a temporary LCER_HOME: registry, sweeps, run states."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow_fixtures import mlflow_template_db_fixture, store_fixture  # noqa: F401
from torch import nn

from lcer_core import paths
from tasks import mlflow_client

DATASET = "ml-100k"
N_ITEMS = 12


class TinyVAE(nn.Module):
    """A Mult-VAE-shaped toy: normalise, encode to a small mean, decode to item logits."""

    def __init__(self, n_items: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(n_items, 4)
        self.dec = nn.Linear(4, n_items)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.normalize(x, dim=1)
        return self.dec(torch.tanh(self.enc(h)))


def _example(rng: np.random.Generator, rows: int) -> np.ndarray:
    return (rng.random((rows, N_ITEMS)) < 0.4).astype(np.float32)


def test_model_logged_twice_gives_two_loadable_versions(store: MlflowClient) -> None:
    rng = np.random.default_rng(0)
    results, models = [], []
    for seed in (1, 2):
        model = TinyVAE(N_ITEMS, seed).train()
        models.append(model)
        results.append(
            mlflow_client.log_model(
                model,
                DATASET,
                params={"hidden": 4, "epochs": 3, "seed": seed},
                metrics={"loss": [3.0, 2.5, 2.2], "ndcg_at_100": 0.31},
                input_example=_example(rng, 1),
            )
        )
    assert all(m.training for m in models)  # the caller's modules are left as they were
    assert [r["version"] for r in results] == [1, 2]
    versions = store.search_model_versions("name='multvae-ml-100k'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert store.get_registered_model("multvae-ml-100k").aliases == {mlflow_client.MODEL_ALIAS: 2}

    # The training runs live in the dataset's experiment, FINISHED, with per-epoch metrics.
    exp = store.get_experiment_by_name(DATASET)
    run = store.get_run(results[0]["run_id"])
    assert run.info.experiment_id == exp.experiment_id
    assert run.info.run_name == mlflow_client.TRAIN_RUN_NAME and run.info.status == "FINISHED"
    assert run.data.params["hidden"] == "4" and run.data.params["dataset"] == DATASET
    assert [m.value for m in store.get_metric_history(run.info.run_id, "loss")] == [3.0, 2.5, 2.2]

    # Each version loads by its model URI and computes what the trained module computes,
    # for a batch size other than the example's; signature and input example are stored.
    batch = _example(rng, 5)
    for result, model in zip(results, models, strict=True):
        info = mlflow.models.get_model_info(result["model_uri"])
        assert info.signature is not None
        assert info.signature.inputs.inputs[0].shape == (-1, N_ITEMS)
        assert info.saved_input_example_info is not None
        loaded = mlflow.pytorch.load_model(result["model_uri"])
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(batch))
            got = loaded(torch.from_numpy(batch))
        torch.testing.assert_close(got, expected)
    # The alias and the version URIs resolve to the newest model.
    with torch.no_grad():
        torch.testing.assert_close(
            mlflow_client.load_model(DATASET)(torch.from_numpy(batch)),
            mlflow_client.load_model(DATASET, version=2)(torch.from_numpy(batch)),
        )
    # Artifacts stay under LCER_HOME/mlflow/artifacts, not in the working folder.
    assert any((paths.mlflow_dir() / "artifacts" / DATASET).rglob("MLmodel"))


def test_sweep_is_a_parent_run_with_one_child_per_grid_point(
    store: MlflowClient, tmp_path: Path
) -> None:
    from lcer_core import plots

    alphas, lams = [0.1, 0.5], [0.01, 0.1]
    parquet = tmp_path / "explanations.parquet"
    pl.DataFrame({"user": [1, 2], "item": [7, 9], "ce": [[3], [4, 5]]}).write_parquet(parquet)
    rows = []
    with mlflow_client.sweep_run(
        DATASET, {"method": "lcer", "k": 5, "alphas": alphas, "lams": lams}
    ) as parent:
        for a in alphas:
            for lam in lams:
                metrics = {
                    "val_pct": 99.0,
                    "len": 1.0 + a - lam,
                    "ps_pct": 80.0 + 10 * a,
                    "pn_pct": 60.0 - 10 * lam,
                    "fns_pct": 68.0 + a - lam,
                }
                rows.append({"alpha": a, "lam": lam, **metrics})
                mlflow_client.log_explain_run(
                    DATASET,
                    method="lcer",
                    k=5,
                    alpha=a,
                    lam=lam,
                    params={"steps": 50, "seed": 0},
                    metrics=metrics,
                    explanations_parquet=parquet,
                    figures=[],
                    parent_run_id=parent,
                )
        figure = plots.plot_pareto(pl.DataFrame(rows), tmp_path / "pareto.png")
        mlflow_client.log_figures(parent, [figure])

    exp = store.get_experiment_by_name(DATASET)
    assert exp is not None and exp.name == "ml-100k"
    children = store.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len(children) == 4
    assert {(c.data.params["alpha"], c.data.params["lam"]) for c in children} == {
        ("0.1", "0.01"),
        ("0.1", "0.1"),
        ("0.5", "0.01"),
        ("0.5", "0.1"),
    }
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["method"] == "lcer" and child.data.params["k"] == "5"
        assert set(mlflow_client.METRICS) <= set(child.data.metrics)
        a, lam = float(child.data.params["alpha"]), float(child.data.params["lam"])
        assert child.data.metrics["fns_pct"] == pytest.approx(68.0 + a - lam)
        artifacts = [f.path for f in store.list_artifacts(child.info.run_id, "explanations")]
        assert artifacts == ["explanations/explanations.parquet"]
    assert [r.info.run_id for r in mlflow_client.child_runs(parent)] == [
        r.info.run_id for r in sorted(children, key=lambda r: r.info.start_time)
    ]
    parent_run = store.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.params["n_points"] == "4"
    assert parent_run.data.params["alphas"] == "[0.1, 0.5]"
    assert [f.path for f in store.list_artifacts(parent, "figures")] == ["figures/pareto.png"]
    # Only the parent and its children are in the experiment: the sweep did not leak runs.
    assert len(store.search_runs([exp.experiment_id])) == 5


def test_a_run_whose_body_raises_ends_failed(store: MlflowClient) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        mlflow_client.tracked_run(DATASET, run_name="bad") as rid,
    ):
        raise RuntimeError("boom")
    run = store.get_run(rid)
    assert run.info.status == "FAILED"
    assert run.data.tags["lcer.error"] == "RuntimeError: boom"

    with pytest.raises(KeyError), mlflow_client.sweep_run(DATASET, {"alphas": [1.0]}) as parent:
        raise KeyError("x")
    assert store.get_run(parent).info.status == "FAILED"

    # A figure that does not exist fails the explain run, which is then FAILED, not FINISHED.
    with pytest.raises(FileNotFoundError):
        mlflow_client.log_explain_run(
            DATASET,
            method="lcer",
            k=5,
            alpha=0.1,
            lam=0.1,
            metrics={"fns_pct": 50.0},
            figures=[Path("/nonexistent/fig.png")],
            run_name="missing-figure",
        )
    exp = store.get_experiment_by_name(DATASET)
    (bad,) = store.search_runs([exp.experiment_id], "attributes.run_name = 'missing-figure'")
    assert bad.info.status == "FAILED"


def test_baseline_run_without_alpha_lam_or_validity(store: MlflowClient) -> None:
    rid = mlflow_client.log_explain_run(
        DATASET,
        method="fia",
        k=10,
        alpha=None,
        lam=None,
        metrics={"val_pct": None, "len": 4.0, "ps_pct": 30.0, "pn_pct": 40.0, "fns_pct": 34.3},
    )
    run = store.get_run(rid)
    assert run.info.run_name == "fia-k10-anone-lnone"
    assert run.data.params["alpha"] == "None" and run.data.params["lam"] == "None"
    assert "val_pct" not in run.data.metrics and run.data.metrics["fns_pct"] == 34.3
    assert "mlflow.parentRunId" not in run.data.tags


def test_fail_stale_runs_closes_runs_of_dead_processes(store: MlflowClient) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = mlflow_client.start_run(DATASET, run_name="orphan")
    store.set_tag(orphan, "lcer.pid", str(dead.pid))  # as if that process had opened it
    mine = mlflow_client.start_run(DATASET, run_name="mine")
    foreign = mlflow_client.start_run(DATASET, run_name="foreign")
    store.set_tag(foreign, "lcer.host", "some-other-host")

    assert mlflow_client.fail_stale_runs(DATASET) == [orphan]
    assert store.get_run(orphan).info.status == "FAILED"
    assert store.get_run(mine).info.status == "RUNNING"
    assert store.get_run(foreign).info.status == "RUNNING"
    # Runs of other hosts are closed only past an age limit.
    assert mlflow_client.fail_stale_runs(DATASET, max_age_s=0.0) == [foreign]
    mlflow_client.end_run(mine)
    assert store.get_run(mine).info.status == "FINISHED"
    with pytest.raises(ValueError):
        mlflow_client.end_run(mine, "DONE")


def test_concurrent_first_use_creates_one_experiment(store: MlflowClient) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            ids.append(mlflow_client.ensure_experiment("ml-1m"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ids) == 4 and len(set(ids)) == 1
    exp = store.get_experiment(ids[0])
    assert exp.name == "ml-1m"
    assert exp.artifact_location == (paths.mlflow_dir() / "artifacts" / "ml-1m").as_uri()
