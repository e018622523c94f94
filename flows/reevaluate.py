"""``lcer-reevaluate`` (scheduled weekly): the latest explanations measured again against the current model."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.env import check_environment
from flows.runner import default_task_runner
from tasks.evaluate import reevaluate_run
from tasks.store import latest_runs, read_explanations, store_reevaluation

__all__ = ["lcer_reevaluate"]


@flow(name="lcer-reevaluate", task_runner=default_task_runner())
def lcer_reevaluate(datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """Recompute the metrics of every ``table2`` run (of ``datasets``, default all) with the latest
    trained model and store them as a new, timestamped metrics row; one row per run."""
    check_environment()
    logger = get_run_logger()
    runs = latest_runs(datasets)
    if not runs:
        logger.warning(
            "no finished explanation runs%s to re-evaluate",
            f" of {', '.join(datasets)}" if datasets else "",
        )
    out = []
    for run in runs:
        metrics = reevaluate_run(run, read_explanations(run["run_id"]))
        store_reevaluation(run["run_id"], metrics)
        out.append({**run, **metrics})
    return out
