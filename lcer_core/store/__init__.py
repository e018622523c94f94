"""The results database (DuckDB): runs, recommendations, explanations, metrics and views.

One file, ``$LCER_HOME/results/lcer.duckdb``. Tables: ``datasets``, ``items``, ``models``,
``runs``, ``recommendations``, ``explanations`` (one row per user × recommended item, with the
CE's items and their importance), ``metrics`` (one row per evaluation; re-evaluations keep
history). Views: ``table2``, ``table3``, ``run_results``, ``latest_metrics``,
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

import importlib
from typing import Any

# Names load on first use (PEP 562): importing ``lcer_core.store.schema`` (the columns a shard
# file holds) must not pull in DuckDB, so that the science core runs where only torch and
# polars are installed (the GPU benchmark's machine, for one). The paper's numbers are in
# :mod:`lcer_core.paper`.
_HOMES = {
    "lcer_core.store.formatting": (
        "FORMATS",
        "print_frame",
        "render",
        "to_csv",
        "to_json",
        "to_rich_table",
    ),
    "lcer_core.store.migrations": ("SCHEMA_VERSION", "apply_migrations", "current_version"),
    "lcer_core.store.report": ("REPORT_METRICS", "table2_report", "table3_report"),
    "lcer_core.store.schema": (
        "COST_KEYS",
        "EXPLANATION_COLUMNS",
        "ITEM_COLUMNS",
        "KINDS",
        "METRIC_KEYS",
        "RECOMMENDATION_COLUMNS",
        "STATUSES",
        "TABLES",
    ),
    "lcer_core.store.store": ("DEFAULT_LOCK_TIMEOUT", "READ_ONLY_CONFIG", "ResultStore"),
    "lcer_core.store.views": ("METHOD_ORDER", "TABLE2_COLUMNS", "TABLE3_COLUMNS", "VIEWS"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)  # the names of _HOMES, the one list of them


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
