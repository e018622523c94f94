"""The pipeline's one-page HTML report of a dataset, attached to its MLflow runs."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lcer_core.paths import lcer_home
from lcer_core.report_html import write_html_report
from lcer_core.store import ResultStore
from tasks import mlflow_client

__all__ = ["html_report"]


@task(name="html-report", cache_policy=NO_CACHE)
def html_report(dataset: str) -> str | None:
    """Write ``dataset``'s HTML page under ``LCER_HOME/work/reports`` and attach it (as
    ``report/DATASET.html``) to the MLflow run of each of its ``table2`` rows; the page's path.

    A page that cannot be made is a warning, not a failed pipeline: the results are stored."""
    try:
        return _html_report(dataset)
    except Exception as exc:
        get_run_logger().warning("no HTML report for %s: %s: %s", dataset, type(exc).__name__, exc)
        return None


def _html_report(dataset: str) -> str:
    store = ResultStore()
    folder = lcer_home() / "work" / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_html_report(dataset, folder / f"{dataset}.html", store)
    runs = store.query(
        "SELECT r.mlflow_run_id FROM table2 t JOIN runs r USING (run_id) "
        "WHERE t.dataset = ? AND r.mlflow_run_id IS NOT NULL",
        [dataset],
    )
    for mlflow_run_id in runs["mlflow_run_id"].to_list():
        mlflow_client.log_figures(mlflow_run_id, [path], artifact_path="report")
    get_run_logger().info(
        "HTML report of %s at %s, attached to %d MLflow run(s)", dataset, path, runs.height
    )
    return str(path)
