"""The bookkeeping of explanation runs around their shards: begin them, then finish each one.

:func:`begin` marks the runs ``running`` in DuckDB and opens their MLflow runs (before any
shard is computed, so that a killed process leaves them to be closed as FAILED);
:func:`finish_run` evaluates, stores and tracks one run whose shards are on disk, or records its
failure (``failed`` in DuckDB, FAILED in MLflow) and returns it instead of raising, so that the
other runs go on. The flows only call these in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from lcer_core.runs import RunSpec
from tasks.evaluate import RunResult, evaluate_run
from tasks.store import begin_runs, link_mlflow, mark_failed, store_run
from tasks.tracking import fail_tracked, open_runs, track_run

__all__ = ["RunOutcome", "begin", "finish_run", "first_error"]


@dataclass(frozen=True)
class RunOutcome:
    """How one explanation run ended: its evaluated result and MLflow run, or its error."""

    spec: RunSpec
    result: RunResult | None = None
    mlflow_run_id: str | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the run was stored and tracked."""
        return self.error is None and self.result is not None

    def summary(self) -> dict[str, Any]:
        """The run's row as the flows return it: its ``runs`` columns, metrics, device, MLflow run
        and explanations file."""
        if self.result is None:
            raise ValueError(f"run {self.spec.run_id} has no result: {self.error}")
        return {
            **self.spec.as_row(),
            **self.result.metrics,
            "device": self.result.device,
            "mlflow_run_id": self.mlflow_run_id,
            "explanations": self.result.path,
        }


def begin(
    specs: Sequence[RunSpec], params: dict[str, Any], parent_run_id: str | None = None
) -> dict[str, str]:
    """Mark ``specs`` running and open their MLflow runs; the MLflow run id of each run opened.

    A run finished before (a re-run of the same command) keeps its MLflow run, which
    :func:`finish_run` finds; in a sweep (``parent_run_id``) every run gets a child run.
    """
    begun = set(begin_runs(specs, params))
    return open_runs(
        [s for s in specs if parent_run_id is not None or s.run_id in begun],
        params,
        parent_run_id,
    )


def finish_run(
    spec: RunSpec,
    paths: Sequence[str] | None,
    params: dict[str, Any],
    *,
    parent_run_id: str | None = None,
    tracked: str | None = None,
    error: BaseException | None = None,
) -> RunOutcome:
    """Evaluate, store and track one run from its shard files (``paths``); on ``error`` (its
    explanation failed) or a failure here, mark it failed in DuckDB and MLflow instead."""
    try:
        if error is not None:
            raise error
        if paths is None:
            raise ValueError(f"run {spec.run_id} has no shard files")
        result = evaluate_run(spec, list(paths))
        store_run(result, params)
        mlflow_run_id = track_run(result, params, parent_run_id, tracked)
        link_mlflow(spec.run_id, mlflow_run_id)
    except Exception as exc:
        get_run_logger().error(
            "run %s (%s %s k=%d) failed: %s", spec.run_id, spec.dataset, spec.method, spec.k, exc
        )
        mark_failed(spec.run_id)
        if tracked is not None:
            fail_tracked(tracked, f"{type(exc).__name__}: {exc}")
        return RunOutcome(spec, error=exc)
    return RunOutcome(spec, result, mlflow_run_id)


def first_error(
    explain_errors: dict[str, BaseException], outcomes: Sequence[RunOutcome]
) -> BaseException | None:
    """The error a flow raises once every run is finished: the first explanation failure, else
    the first run that failed afterwards; None when every run succeeded."""
    if explain_errors:
        return next(iter(explain_errors.values()))
    return next((o.error for o in outcomes if o.error is not None), None)
