"""Schema versions of the results database, and the ordered migrations between them.

The database records every applied version in ``schema_version``; opening it applies the
missing migrations, all in one transaction, then recreates the views. Each migration is
idempotent (``IF NOT EXISTS``), so a half-known database converges. A database written by a
newer ``lcer`` (a version above :data:`SCHEMA_VERSION`) is refused, never downgraded.

To change the schema: append a migration, bump :data:`SCHEMA_VERSION`. A change of a view
alone is a migration too (with no statement), so that old databases get the new view.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import duckdb

from lcer_core.errors import LcerHomeError, StoreError
from lcer_core.store.schema import (
    V1_DDL,
    V2_DDL,
    V3_DDL,
    V4_DDL,
    V5_DDL,
    V6_DDL,
    V7_DDL,
    V8_DDL,
)
from lcer_core.store.views import create_views

__all__ = [
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "current_version",
    "apply_migrations",
    "disk_trouble",
    "registry_reports_validity",
    "registry_selects_on",
    "registry_plugins",
]

#: How DuckDB words the failures of the file system under it (they are LCER_HOME's problem).
_DISK_MARKERS = (
    "No space left on device",
    "Read-only file system",
    "Permission denied",
    "File too large",
    "Disk quota exceeded",
)


def disk_trouble(message: str) -> bool:
    """Whether a DuckDB error message is a full disk, a read-only mount or a permission problem."""
    return any(m in message for m in _DISK_MARKERS)


def _run_all(statements: tuple[str, ...]) -> Callable[[duckdb.DuckDBPyConnection], None]:
    def apply(con: duckdb.DuckDBPyConnection) -> None:
        for sql in statements:
            con.execute(sql)

    return apply


def registry_reports_validity(method: str) -> bool | None:
    """Whether the registered explainer ``method`` reports validity; None for an unknown name."""
    from lcer_core.explainers import METHODS  # lazily: the registry imports torch

    cls = METHODS.get(method)
    return None if cls is None else bool(cls.reports_validity)


def registry_plugins() -> list[dict[str, Any]]:
    """The explainer plugins loaded in this process (what a stored run records)."""
    from lcer_core.explainers import loaded_plugins  # lazily: the registry imports torch

    return loaded_plugins()


#: Whether each built-in method reported validity when schema v6 was written: the migration
#: reads this frozen table, never today's registry (installed plugins must not change what a
#: migration does). Other names (plugins of the time) stay NULL.
_V6_REPORTS_VALIDITY = {
    "lcer": True,
    "fia": False,
    "accent": True,
    "kaffes": True,
    "kaffes-topk": True,
    "lcer-plus": True,
}


def _v6(con: duckdb.DuckDBPyConnection) -> None:
    """``runs.config`` and ``runs.reports_validity``, filled for the runs already stored."""
    _run_all(V6_DDL)(con)
    # config: what earlier versions kept in params_json's "explainer" (dump_config()), if an object
    con.execute(
        """
        UPDATE runs SET config = json_extract(params_json, '$.explainer')
        WHERE config IS NULL
          AND CASE WHEN json_valid(params_json)
                   THEN json_type(params_json, '$.explainer') = 'OBJECT' ELSE false END
        """
    )
    methods = con.execute(
        "SELECT DISTINCT method FROM runs WHERE reports_validity IS NULL ORDER BY method"
    ).fetchall()
    for (method,) in methods:
        reports = _V6_REPORTS_VALIDITY.get(method)
        if reports is not None:
            con.execute(
                "UPDATE runs SET reports_validity = ? "
                "WHERE method = ? AND reports_validity IS NULL",
                [reports, method],
            )


def registry_selects_on(method: str) -> list[str] | None:
    """The tests the registered explainer ``method`` selects on (its default configuration),
    sorted; None for an unknown name."""
    from lcer_core.explainers import METHODS  # lazily: the registry imports torch

    cls = METHODS.get(method)
    return None if cls is None else sorted(cls.selects_on)


def _v8(con: duckdb.DuckDBPyConnection) -> None:
    """Strict metrics and cost columns, ``runs.selects_on``; filled where the rows allow it.

    ``selects_on`` from the run's stored configuration by :func:`_selects_on_of`'s frozen
    rules; the strict metrics of each run's ``explain`` metrics row from its
    stored explanations (their ``found``, ``sufficient``, ``necessary`` and ``length`` are that
    evaluation's); re-evaluations and the cost columns stay NULL (not measured).
    """
    _run_all(V8_DDL)(con)
    runs = con.execute(
        "SELECT run_id, method, config FROM runs WHERE selects_on IS NULL ORDER BY run_id"
    ).fetchall()
    for run_id, method, config in runs:
        tests = _selects_on_of(method, config)
        if tests is not None:
            con.execute("UPDATE runs SET selects_on = ? WHERE run_id = ?", [tests, run_id])
    con.execute(
        """
        UPDATE metrics SET
            strict_ps_pct = s.ps, strict_pn_pct = s.pn, strict_val_pct = s.pn,
            strict_len = s.len,
            strict_fns_pct = CASE WHEN s.ps + s.pn = 0 THEN 0.0
                                  ELSE 2 * s.ps * s.pn / (s.ps + s.pn) END
        FROM (
            SELECT run_id,
                   100.0 * count(*) FILTER (WHERE found AND sufficient) / count(*) AS ps,
                   100.0 * count(*) FILTER (WHERE found AND necessary) / count(*) AS pn,
                   avg(length) FILTER (WHERE found AND necessary) AS len
            FROM explanations GROUP BY run_id
        ) s
        WHERE metrics.run_id = s.run_id AND metrics.kind = 'explain'
          AND metrics.strict_pn_pct IS NULL
        """
    )


def _selects_on_of(method: str, config: str | None) -> list[str] | None:
    """What a built-in ``method`` of schema v8's time selected on with its stored
    configuration: a frozen rule per method, never today's registry (installed plugins must
    not change what a migration does); None for any other name."""
    try:
        fields = json.loads(config) if config else {}
    except ValueError:
        fields = {}
    fields = fields if isinstance(fields, dict) else {}
    if method in ("lcer", "fia"):
        return []
    if method in ("accent", "kaffes"):
        return ["topk"] if fields.get("criterion") == "topk" else []
    if method == "kaffes-topk":
        return ["topk"]
    if method == "lcer-plus":
        tests = ["sufficiency"] if _positive(fields.get("sufficiency", 4.0)) else []
        return tests + (["topk"] if fields.get("select", "topk") == "topk" else [])
    return None


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


#: (version, what it does, how) in order; version N brings a database from N-1 to N.
MIGRATIONS: tuple[tuple[int, str, Callable[[duckdb.DuckDBPyConnection], None]], ...] = (
    (1, "datasets, items, models, runs, recommendations, explanations, metrics", _run_all(V1_DDL)),
    (
        2,
        "runs.kind, metrics.kind (re-evaluation history), explanations.rank_after",
        _run_all(V2_DDL),
    ),
    (
        3,
        "datasets.archive_sha256, datasets.source_json (the bytes a dataset was prepared from)",
        _run_all(V3_DDL),
    ),
    (4, "metrics.calls_per_pair, metrics.s_per_pair (what a run cost)", _run_all(V4_DDL)),
    (5, "shards: where each explanation shard ran (node, device)", _run_all(V5_DDL)),
    (6, "runs.config (the explainer's whole configuration), runs.reports_validity", _v6),
    (7, "runs.plugins (the explainer plugins loaded when the run was stored)", _run_all(V7_DDL)),
    (
        8,
        "metrics: strict metrics over all pairs and cost per pair counted at the recommender "
        "seam; runs.selects_on (the evaluation tests a method chooses its answers with)",
        _v8,
    ),
)

#: The version this code writes and understands.
SCHEMA_VERSION = MIGRATIONS[-1][0]


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version recorded in the database; 0 when it has none (new or foreign file)."""
    [(has_table,)] = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = 'schema_version'"
    ).fetchall()
    if not has_table:
        return 0
    [(version,)] = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
    return int(version)


def apply_migrations(
    con: duckdb.DuckDBPyConnection,
    *,
    upto: int = SCHEMA_VERSION,
    where: str = "the results database",
) -> int:
    """Bring the schema to version ``upto`` in one transaction; returns the version before."""
    before = current_version(con)
    if before > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has schema version {before}, newer than this lcer understands "
            f"({SCHEMA_VERSION}): upgrade lcer to read it"
        )
    if before >= upto:
        return before
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, description VARCHAR, applied_at TIMESTAMP NOT NULL)"
        )
        now = datetime.now(UTC).replace(tzinfo=None)
        for version, description, migrate in MIGRATIONS:
            if before < version <= upto:
                migrate(con)
                con.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    [version, description, now],
                )
        if upto == SCHEMA_VERSION:
            create_views(con)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        with suppress(duckdb.Error):  # a failed COMMIT has no transaction left to roll back
            con.execute("ROLLBACK")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = LcerHomeError if disk_trouble(first) else StoreError
        raise error(f"cannot migrate {where} from version {before} to {upto}: {first}") from None
    return before
