"""Prefect tasks around :mod:`tasks.mlflow_client` (MLflow): explanation runs, sweeps, figures, stale runs.

An explanation run's MLflow run is opened (RUNNING) before its shards are computed and closed
when it is tracked, so a pipeline killed on the way leaves it RUNNING; the next flow's
:func:`fail_stale` closes it as FAILED (its owner process is gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lcer_core import plots
from lcer_core.columns import COST_COLUMNS, STRICT_KEYS
from lcer_core.paths import lcer_home
from lcer_core.runs import RunSpec
from lcer_core.store import ResultStore
from lcer_core.store.frontier import frontier_rows
from lcer_core.store.report import selects_text
from tasks import mlflow_client
from tasks.evaluate import RunResult

__all__ = [
    "fail_stale",
    "open_runs",
    "fail_tracked",
    "track_run",
    "open_sweep",
    "close_sweep",
    "item_figures",
    "sweep_figures",
]


@task(name="fail-stale-mlflow-runs", cache_policy=NO_CACHE)
def fail_stale(dataset: str) -> list[str]:
    """Close as FAILED the MLflow runs of ``dataset`` left RUNNING by a killed process."""
    mlflow_client.configure()
    mlflow_client.ensure_experiment(dataset)
    failed = mlflow_client.fail_stale_runs(dataset)
    if failed:
        get_run_logger().warning(
            "closed %d stale MLflow run(s) of %s as FAILED: %s", len(failed), dataset, failed
        )
    return failed


_RUN_KEY_TAG = "lcer.run_key"


def _open_params(spec: RunSpec, params: dict[str, Any]) -> dict[str, Any]:
    """An explanation run's MLflow params known before it runs (``device`` comes at the end):
    :meth:`RunSpec.tracked_params` (from its configuration alone: ``method, k, alpha, lam``,
    every field as ``explainer.NAME``), ``selects_on``, the evaluation tests the method chooses
    its answers with (``topk+sufficiency``, ``topk`` or ``none``), and the flow's ``params``."""
    return {
        **spec.tracked_params(),
        "selects_on": selects_text(spec.selects_on()),
        **params,
        **spec.params(),
    }


@task(name="open-mlflow-runs", cache_policy=NO_CACHE)
def open_runs(
    specs: Sequence[RunSpec], params: dict[str, Any], parent_run_id: str | None = None
) -> dict[str, str]:
    """Open one RUNNING MLflow run per explanation run about to be computed; MLflow ids by run id."""
    opened: dict[str, str] = {}
    for spec in specs:
        opened[spec.run_id] = mlflow_client.start_explain_run(
            spec.dataset,
            method=spec.method,
            k=spec.k,
            alpha=spec.alpha,
            lam=spec.lam,
            params=_open_params(spec, params),
            parent_run_id=parent_run_id,
            tags={_RUN_KEY_TAG: spec.run_id},
        )
    return opened


@task(name="fail-mlflow-run", cache_policy=NO_CACHE)
def fail_tracked(mlflow_run_id: str, error: str) -> None:
    """Close an explanation run's MLflow run as FAILED with ``error``, unless it has already ended."""
    if mlflow_client.client().get_run(mlflow_run_id).info.status == "RUNNING":
        mlflow_client.fail_run(mlflow_run_id, error)


def _same_metrics(logged: dict[str, float], metrics: dict[str, Any]) -> bool:
    for name, value in metrics.items():
        if value is None:
            if name in logged:
                return False
        elif name not in logged or abs(logged[name] - float(value)) > 1e-9 * max(
            1.0, abs(float(value))
        ):
            return False
    return True


def _tracked_already(dataset: str, run_key: str, metrics: dict[str, Any]) -> str | None:
    """A FINISHED top-level MLflow run of the same run key with the same metrics (a re-run), or None."""
    runs = mlflow_client.finished_runs_tagged(dataset, _RUN_KEY_TAG, run_key)
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags and _same_metrics(run.data.metrics, metrics):
            return run.info.run_id
    return None


@task(name="track-run", cache_policy=NO_CACHE)
def track_run(
    result: RunResult,
    params: dict[str, Any],
    parent_run_id: str | None = None,
    mlflow_run_id: str | None = None,
) -> str:
    """One MLflow run for the (method, k, α, λ): params, the five metrics (and the ``strict_*``
    ones and the cost per pair), the explanations Parquet; its id.

    ``mlflow_run_id`` is the run :func:`open_runs` opened for it, closed here; without one,
    outside a sweep, a re-run whose metrics are those of an earlier finished run of the same
    run key reuses that run instead of logging a duplicate.
    """
    spec = result.spec
    # the paper's metrics and the strict ones over all pairs (``strict_*``) tell a re-run; the
    # cost per pair (seconds vary) is logged beside them
    metrics = {k: result.metrics.get(k) for k in (*mlflow_client.METRICS, "n_pairs", *STRICT_KEYS)}
    logged = {**metrics, **{k: result.metrics.get(k) for k in (*COST_COLUMNS, "threads")}}
    if mlflow_run_id is not None:
        mlflow_client.finish_explain_run(
            mlflow_run_id,
            metrics=logged,
            params={**_open_params(spec, params), "device": result.device},
            explanations_parquet=Path(result.path),
        )
        get_run_logger().info(
            "MLflow run %s for %s %s k=%d", mlflow_run_id, spec.dataset, spec.method, spec.k
        )
        return mlflow_run_id
    if parent_run_id is None:
        earlier = _tracked_already(spec.dataset, spec.run_id, metrics)
        if earlier is not None:
            get_run_logger().info("run %s already tracked as MLflow run %s", spec.run_id, earlier)
            return earlier
    run_id = mlflow_client.log_explain_run(
        spec.dataset,
        method=spec.method,
        k=spec.k,
        alpha=spec.alpha,
        lam=spec.lam,
        params={**_open_params(spec, params), "device": result.device},
        metrics=logged,
        explanations_parquet=Path(result.path),
        parent_run_id=parent_run_id,
        tags={_RUN_KEY_TAG: spec.run_id},
    )
    get_run_logger().info("MLflow run %s for %s %s k=%d", run_id, spec.dataset, spec.method, spec.k)
    return run_id


@task(name="open-sweep", cache_policy=NO_CACHE)
def open_sweep(dataset: str, grid: dict[str, Any]) -> str:
    """The RUNNING parent MLflow run of an α/λ sweep."""
    mlflow_client.configure()
    mlflow_client.ensure_experiment(dataset)
    return mlflow_client.start_sweep(dataset, grid)


@task(name="close-sweep", cache_policy=NO_CACHE)
def close_sweep(parent_run_id: str, status: str = "FINISHED") -> None:
    """End the parent run of a sweep (FINISHED, or FAILED when a grid point failed)."""
    mlflow_client.end_run(parent_run_id, status)


def _figure_dir(name: str) -> Path:
    return lcer_home() / "work" / "figures" / name


@task(name="item-figures", cache_policy=NO_CACHE)
def item_figures(dataset: str) -> int:
    """Figures 5–7 (per item: CE count, mean importance, recommendation count against popularity)
    from DuckDB, attached to the MLflow run of each ``table2`` row of ``dataset`` with the
    frontier figure (strict F_NS against seconds per pair); how many runs got Figures 5–7."""
    store = ResultStore()
    runs = store.query(
        "SELECT t.method, t.k, r.mlflow_run_id FROM table2 t JOIN runs r USING (run_id) "
        "WHERE t.dataset = ? AND r.mlflow_run_id IS NOT NULL",
        [dataset],
    )
    done = 0
    for (k,), part in runs.group_by(["k"], maintain_order=True):
        items = store.query(
            "SELECT * FROM item_explanations WHERE dataset = ? AND k = ?", [dataset, k]
        )
        if items.height == 0:
            continue
        paths = plots.render_item_figures(items, _figure_dir(f"{dataset}-k{k}"))
        for mlflow_run_id in part["mlflow_run_id"].to_list():
            mlflow_client.log_figures(mlflow_run_id, paths)
            done += 1
    points = frontier_rows(store, dataset)
    if points.height and points["s_per_pair"].is_not_null().any() and runs.height:
        path = plots.plot_frontier(points, _figure_dir(dataset) / "frontier_fns_seconds.png")
        for mlflow_run_id in runs["mlflow_run_id"].to_list():
            mlflow_client.log_figures(mlflow_run_id, [path])
    get_run_logger().info("attached Figures 5-7 of %s to %d MLflow run(s)", dataset, done)
    return done


def _best_baseline(dataset: str, k: int, method: str) -> dict[str, float | None] | None:
    """The Table 2 row of the best other method than the swept ``method`` (highest F_NS)."""
    rows = ResultStore().query(
        "SELECT * FROM table2 WHERE dataset = ? AND k = ? AND method <> ? "
        "ORDER BY fns_pct DESC NULLS LAST LIMIT 1",
        [dataset, k, method],
    )
    if rows.height == 0:
        return None
    row = rows.row(0, named=True)
    return {m: row[m] for m in ("val_pct", "len", "ps_pct", "pn_pct", "fns_pct")}


@task(name="sweep-figures", cache_policy=NO_CACHE)
def sweep_figures(parent_run_id: str, results: Sequence[RunResult]) -> list[str]:
    """Figures 8 and 9 and the Pareto front of a sweep, attached to its parent run (a sweep
    whose runs lack α or λ has none)."""
    if not results or any(r.spec.alpha is None or r.spec.lam is None for r in results):
        return []
    spec = results[0].spec
    sweep = pl.DataFrame(
        [
            {
                "alpha": r.spec.alpha,
                "lam": r.spec.lam,
                **{m: r.metrics.get(m) for m in plots.SWEEP_COLUMNS[2:]},
            }
            for r in results
        ],
        schema={c: pl.Float64 for c in plots.SWEEP_COLUMNS},
    )
    paths = plots.render_sweep_figures(
        sweep,
        _figure_dir(f"sweep-{parent_run_id}"),
        baseline=_best_baseline(spec.dataset, spec.k, spec.method),
    )
    mlflow_client.log_figures(parent_run_id, paths)
    get_run_logger().info("attached %d sweep figures to MLflow run %s", len(paths), parent_run_id)
    return [str(p) for p in paths]
