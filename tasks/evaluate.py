"""Prefect tasks that turn explanations into the metrics of Table 2 (Val, Len, PS, PN, F_NS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lcer_core import shards
from lcer_core.datasets import load_prepared
from lcer_core.devices import default_device
from lcer_core.explainers import get_method
from lcer_core.frames import explanation_frame, pairs_from_frame, summarize_frame
from lcer_core.fsio import write_parquet_atomic
from lcer_core.metrics import evaluate_pairs
from lcer_core.models import load_model
from lcer_core.shards import RunSpec

__all__ = ["RunResult", "evaluate_run", "reevaluate_run"]


@dataclass(frozen=True)
class RunResult:
    """An evaluated run: its rows in one Parquet file, its metrics, the device(s) that explained it."""

    spec: RunSpec
    path: str
    metrics: dict[str, Any]
    device: str | None


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={'-' if v is None else format(v, '.4g')}" for k, v in metrics.items())


@task(name="evaluate-run", cache_policy=NO_CACHE)
def evaluate_run(spec: RunSpec, shard_paths: list[str]) -> RunResult:
    """Concatenate the run's shard files into ``explanations.parquet`` and compute its metrics."""
    frame = shards.read_shards(shard_paths)
    path = write_parquet_atomic(frame, shards.work_dir(spec.run_id) / "explanations.parquet")
    metrics = summarize_frame(frame, get_method(spec.method).reports_validity)
    devices = sorted(set(frame["device"].to_list())) if "device" in frame.columns else []
    get_run_logger().info(
        "%s %s k=%d alpha=%s lam=%s: %s",
        spec.dataset,
        spec.method,
        spec.k,
        spec.alpha,
        spec.lam,
        _fmt(metrics),
    )
    return RunResult(spec, str(path), metrics, ",".join(devices) or None)


@task(name="reevaluate-run", cache_policy=NO_CACHE)
def reevaluate_run(run: dict[str, Any], explanations: pl.DataFrame) -> dict[str, Any]:
    """Metrics of a stored run's CEs against the dataset's current (latest trained) model; a run
    on a split seed's data against its own model (the latest names only the default split's)."""
    dataset, method, k = run["dataset"], run["method"], int(run["k"])
    split_seed = run.get("split_seed")
    data = load_prepared(dataset, split_seed)
    model = load_model(dataset, None if split_seed is None else run["model_key"])
    recommender = model.recommender(default_device())
    pairs, ces = pairs_from_frame(data, recommender, explanations, k)
    outcomes = evaluate_pairs(recommender, pairs, ces)
    frame = explanation_frame(data, pairs, ces, outcomes)
    metrics = summarize_frame(frame, get_method(method).reports_validity)
    get_run_logger().info(
        "re-evaluated run %s (%s %s k=%d) against model %s: %s",
        run["run_id"],
        dataset,
        method,
        k,
        model.key,
        _fmt(metrics),
    )
    return {**metrics, "model_key": model.key}
