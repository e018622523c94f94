"""``lcer-sweep``: a plan with a grid (default: LCER's α/λ grid of section 4.1) over one model per
dataset, one MLflow child run per grid point under one parent run.

The same code as ``lcer-pipeline`` (:func:`flows.pipeline.run_plan`); only the MLflow runs are
nested, and the parent run gets Figures 8 and 9 and the Pareto front of F_NS against length.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import run_plan
from flows.runner import default_task_runner
from lcer_core.plan import Plan, sweep_plan

__all__ = ["lcer_sweep", "DEFAULT_SWEEP"]

#: The paper's sweep: LCER at every (α, λ) of section 4.1 on ML 100K, K = 5.
DEFAULT_SWEEP = sweep_plan("ml-100k")


@flow(name="lcer-sweep", task_runner=default_task_runner())
def lcer_sweep(
    plan: Plan = DEFAULT_SWEEP, explain_deployment: str | None = None
) -> list[dict[str, Any]]:
    """Every run of ``plan`` (its grid points) as children of one parent MLflow run per model;
    one row per grid point. The runs are stored in DuckDB like any other."""
    return run_plan(plan, explain_deployment, sweep=True)
