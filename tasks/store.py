"""Prefect tasks that write the results database (DuckDB): the pipeline's single writer.

Shard tasks never open the database: they write Parquet, and these tasks, called one at a
time from the flow, load it (one transaction per run). A lock held by another process is
waited for by :class:`~lcer_core.store.ResultStore`, then retried here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lcer_core.datasets import load_prepared
from lcer_core.errors import StoreLockedError
from lcer_core.runs import RunSpec
from lcer_core.shards import read_shards, shard_placements, split_run_frame
from lcer_core.store import ResultStore
from tasks.evaluate import RunResult
from tasks.train import ModelInfo, Registration

__all__ = [
    "store_dataset",
    "store_model",
    "begin_runs",
    "store_run",
    "link_mlflow",
    "mark_failed",
    "latest_runs",
    "read_explanations",
    "store_reevaluation",
]


def _locked(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when another process held the database for longer than the store waits."""
    try:
        state.result()
    except StoreLockedError:
        return True
    except Exception:
        return False
    return False


_WRITE = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": _locked,
}


@task(name="store-dataset", **_WRITE)
def store_dataset(dataset: str) -> None:
    """Record the dataset's Table 1 statistics, the digests of its source bytes and its items."""
    data = load_prepared(dataset)
    ResultStore().upsert_dataset(
        {"dataset": dataset, **data.stats}, data.items, source=data.meta.get("source")
    )


@task(name="store-model", **_WRITE)
def store_model(info: ModelInfo, registration: Registration | None = None) -> None:
    """Record the trained model, its test metrics and its MLflow registry entry."""
    ResultStore().upsert_model(
        model_key=info.key,
        dataset=info.dataset,
        version=None if registration is None else registration.version,
        params=info.params,
        ndcg100=info.metrics.get("ndcg100"),
        recall20=info.metrics.get("recall20"),
        recall50=info.metrics.get("recall50"),
        path=info.path,
        mlflow_model_uri=None if registration is None else registration.model_uri,
    )


@task(name="begin-runs", **_WRITE)
def begin_runs(specs: Sequence[RunSpec], params: dict[str, Any]) -> list[str]:
    """Mark the runs about to be explained as ``running``; a run already finished keeps its status
    (and its rows stay in ``table2``) until the new copy replaces it. The ids of the runs marked."""
    store = ResultStore()
    begun = []
    for spec in specs:
        earlier = store.run(spec.run_id)
        if earlier is None or earlier["status"] != "finished":
            row = spec.as_row()
            store.begin_run(
                {**row, "params": {**params, **spec.params(), "explainer": row["config"]}}
            )
            begun.append(spec.run_id)
    return begun


@task(name="store-run", **_WRITE)
def store_run(result: RunResult, params: dict[str, Any]) -> str:
    """Load a run's rows into DuckDB in one transaction (replacing an earlier copy); its run id."""
    frame = read_shards([result.path])
    recommendations, explanations = split_run_frame(frame)
    row = result.spec.as_row()
    params = {**params, **result.spec.params(), "explainer": row["config"]}
    run = {**row, "device": result.device, "kind": "explain", "params": params}
    run_id = ResultStore().write_run(
        run,
        recommendations,
        explanations,
        result.metrics,
        shards=shard_placements(frame),
    )
    get_run_logger().info(
        "stored run %s: %d recommendations, %d explanations",
        run_id,
        recommendations.height,
        explanations.height,
    )
    return run_id


@task(name="link-mlflow-run", **_WRITE)
def link_mlflow(run_id: str, mlflow_run_id: str) -> None:
    """Record which MLflow run holds the run's params, metrics and artifacts."""
    ResultStore().set_mlflow_run_id(run_id, mlflow_run_id)


@task(name="mark-run-failed", **_WRITE)
def mark_failed(run_id: str) -> None:
    """Mark a run whose explanation failed as ``failed`` (rows of an earlier success stay)."""
    ResultStore().mark_run(run_id, "failed")


@task(name="latest-runs", cache_policy=NO_CACHE)
def latest_runs(datasets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The runs of Table 2 (latest finished run per dataset, method and k), optionally for some
    datasets; ``split_seed`` None for the default split."""
    sql = (
        "SELECT t.run_id, t.dataset, t.method, t.k, t.alpha, t.lam, r.model_key, r.mlflow_run_id, "
        "TRY_CAST(json_extract(r.params_json, '$.split_seed') AS INTEGER) AS split_seed "
        "FROM table2 t JOIN runs r USING (run_id)"
    )
    params: list[Any] = []
    if datasets:
        sql += f" WHERE t.dataset IN ({', '.join('?' for _ in datasets)})"
        params = list(datasets)
    frame = ResultStore().query(sql + " ORDER BY t.dataset, t.method, t.k", params)
    return frame.to_dicts()


@task(name="read-explanations", cache_policy=NO_CACHE)
def read_explanations(run_id: str) -> pl.DataFrame:
    """A stored run's explanation rows."""
    return ResultStore().query(
        "SELECT uid, sid, rank, ce_items FROM explanations WHERE run_id = ? ORDER BY uid, rank",
        [run_id],
    )


@task(name="store-reevaluation", **_WRITE)
def store_reevaluation(run_id: str, metrics: dict[str, Any]) -> None:
    """Append a timestamped re-evaluation metrics row to a run."""
    keep = {k: v for k, v in metrics.items() if k != "model_key"}
    ResultStore().add_metrics(run_id, keep, kind="reevaluate")
