"""``lcer-sweep``: the α/λ grid of section 4.1 over one trained model, one MLflow child run per grid point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger

from flows.env import check_environment
from flows.pipeline import explain_runs
from flows.runner import default_task_runner
from flows.train import DEFAULT_EPOCHS, prepare_and_train
from lcer_core.explainers import PAPER_SWEEP_METHOD
from lcer_core.paper import PAPER_ALPHAS, PAPER_LAMS
from lcer_core.runs import RunSpec, plan_runs, validate_plan
from lcer_core.shards import DEFAULT_SHARD_SIZE
from tasks.data import test_users
from tasks.runs import RunOutcome
from tasks.tracking import close_sweep, open_sweep, sweep_figures

__all__ = ["lcer_sweep"]


def _run_tracked(
    dataset: str,
    grid: dict[str, Any],
    specs: Sequence[RunSpec],
    users: Sequence[int],
    shard_size: int,
) -> list[RunOutcome]:
    """Run the grid's ``specs`` as children of one parent MLflow run, closed FINISHED with the
    sweep's figures, or FAILED if anything fails."""
    parent = open_sweep(dataset, grid)
    try:
        outcomes = explain_runs(
            specs, users, shard_size, params={"sweep": parent}, parent_run_id=parent
        )
        sweep_figures(parent, [outcome.result for outcome in outcomes if outcome.result])
    except BaseException:
        close_sweep(parent, "FAILED")
        raise
    close_sweep(parent, "FINISHED")
    return outcomes


@flow(name="lcer-sweep", task_runner=default_task_runner())
def lcer_sweep(
    dataset: str = "ml-100k",
    alphas: list[float] | None = None,
    lams: list[float] | None = None,
    k: int = 5,
    n_users: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    epochs: int = DEFAULT_EPOCHS,
) -> list[dict[str, Any]]:
    """LCER at every (α, λ) of the grid (default: the paper's); one row per grid point.

    The runs are stored in DuckDB like any other and tracked as children of one parent
    MLflow run, which also gets Figures 8 and 9 and the Pareto front of F_NS against length.
    """
    check_environment()
    alphas = list(alphas or PAPER_ALPHAS)
    lams = list(lams or PAPER_LAMS)
    options = {"alpha": alphas, "lam": lams, "steps": steps}
    methods = validate_plan(
        [dataset],
        [PAPER_SWEEP_METHOD],
        options,
        ks=[k],
        seeds=[seed],
        n_users=n_users,
        shard_size=shard_size,
    )
    model, _ = prepare_and_train(dataset, epochs)
    users = test_users(dataset, n_users)
    specs = plan_runs(
        dataset=dataset,
        methods=methods,
        ks=[k],
        options=options,
        seed=seed,
        n_users=n_users,
        model_key=model.key,
    )
    get_run_logger().info(
        "%s: sweep of %d grid points over %d test users", dataset, len(specs), len(users)
    )
    grid = {
        "method": PAPER_SWEEP_METHOD,
        "k": k,
        "alphas": alphas,
        "lams": lams,
        "steps": specs[0].steps,
        "seed": seed,
        "n_users": n_users,
        "model_key": model.key,
    }
    outcomes = _run_tracked(dataset, grid, specs, users, shard_size)
    return [outcome.summary() for outcome in outcomes]
