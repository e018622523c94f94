"""The results database (DuckDB): runs, recommendations, explanations, metrics and views.

One file, ``$LCER_HOME/results/lcer.duckdb``. Tables: ``datasets``, ``items``, ``models``,
``runs`` (one row per run key: its method, k, α, λ, seed, status, ``config`` = the explainer's
whole configuration as JSON, ``{"method": ..., field: value}``, ``reports_validity``, false
for a method whose explanations are not counterfactuals, FIA, and ``selects_on``, the
evaluation tests the method chose its answers with), ``recommendations``,
``explanations`` (one row per user × recommended item, with the CE's items and their
importance), ``metrics`` (one row per evaluation; re-evaluations keep history; the paper's metrics, the
strict metrics over all pairs and the cost per pair). Views: ``table2``, ``table3``,
``strict`` (the strict comparison), ``run_results``, ``latest_metrics``,
``explanation_items`` and ``item_explanations`` (section 4.3), described with example
queries in :mod:`lcer_core.store.views`.

Write a run (a re-run with the same run key replaces its rows)::

    from lcer_core.store import ResultStore
    with ResultStore() as store:
        store.write_run(run, recommendations, explanations, metrics)
        print(store.query("SELECT * FROM table2"))

Which items appear most often in LCER's CEs, and how popular they are::

    SELECT sid, title, popularity, explanation_count, mean_importance FROM item_explanations
    WHERE dataset = 'ml-100k' AND method = 'lcer' AND k = 5 ORDER BY explanation_count DESC;
"""

from lcer_core.store.formatting import FORMATS, print_frame, render, to_csv, to_json, to_rich_table
from lcer_core.store.migrations import SCHEMA_VERSION, apply_migrations, current_version
from lcer_core.store.report import REPORT_METRICS, strict_report, table2_report, table3_report
from lcer_core.store.schema import (
    COST_KEYS,
    EXPLANATION_COLUMNS,
    ITEM_COLUMNS,
    KINDS,
    METRIC_KEYS,
    RECOMMENDATION_COLUMNS,
    STATUSES,
    TABLES,
)
from lcer_core.store.store import DEFAULT_LOCK_TIMEOUT, READ_ONLY_CONFIG, ResultStore
from lcer_core.store.views import METHOD_ORDER, TABLE2_COLUMNS, TABLE3_COLUMNS, VIEWS

# Plain imports: the package needs DuckDB. The science core reads the columns of a shard file
# from :mod:`lcer_core.columns` and the paper's numbers from :mod:`lcer_core.paper`, neither of
# which imports DuckDB, so it runs where only torch and polars are installed.
__all__ = [
    "COST_KEYS",
    "DEFAULT_LOCK_TIMEOUT",
    "EXPLANATION_COLUMNS",
    "FORMATS",
    "ITEM_COLUMNS",
    "KINDS",
    "METHOD_ORDER",
    "METRIC_KEYS",
    "READ_ONLY_CONFIG",
    "RECOMMENDATION_COLUMNS",
    "REPORT_METRICS",
    "SCHEMA_VERSION",
    "STATUSES",
    "TABLE2_COLUMNS",
    "TABLE3_COLUMNS",
    "TABLES",
    "VIEWS",
    "ResultStore",
    "apply_migrations",
    "current_version",
    "print_frame",
    "render",
    "table2_report",
    "strict_report",
    "table3_report",
    "to_csv",
    "to_json",
    "to_rich_table",
]
