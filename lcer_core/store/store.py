"""The results database: one DuckDB file, written in short transactions, read with SQL.

DuckDB lets one process at a time open a file read-write, and no other process can open it
at all meanwhile (not even read-only). So :class:`ResultStore` holds no connection: every
write opens the file read-write, runs one transaction, checkpoints and closes; every query
opens it read-only. A conflicting lock is retried with back-off up to ``lock_timeout``
seconds, then reported as :class:`~lcer_core.errors.StoreLockedError` in one line.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from lcer_core import paths
from lcer_core.checks import check_k
from lcer_core.errors import (
    InvalidParameterError,
    LcerHomeError,
    MissingDataError,
    QueryTimeoutError,
    StoreError,
    StoreLockedError,
)
from lcer_core.store.migrations import (
    SCHEMA_VERSION,
    apply_migrations,
    current_version,
    disk_trouble,
    registry_plugins,
    registry_reports_validity,
    registry_selects_on,
)
from lcer_core.store.schema import (
    COST_KEYS,
    EXPLANATION_COLUMNS,
    ITEM_COLUMNS,
    KINDS,
    METRIC_KEYS,
    RECOMMENDATION_COLUMNS,
    RUN_COLUMNS,
    SHARD_COLUMNS,
    STATUSES,
    STRICT_KEYS,
    TABLES,
)

__all__ = ["ResultStore", "DEFAULT_LOCK_TIMEOUT", "READ_ONLY_CONFIG"]

log = logging.getLogger(__name__)

#: Seconds a call waits for another process's lock on the database before giving up.
DEFAULT_LOCK_TIMEOUT = 30.0

_LOCK_MARKERS = ("Could not set lock on file", "Conflicting lock is held")
# Raised when this very process holds the file with another configuration (read-only vs
# read-write), e.g. a connection opened outside the store: also worth waiting for.
_CONFIG_MARKER = "different configuration than existing connections"

#: Every read-only connection runs with these settings, so that a query (``lcer sql`` runs the
#: user's text as it is) can read the results database and nothing else: no file or URL read or
#: written outside it (COPY, read_*, glob, ATTACH, EXPORT), no extension installed or loaded,
#: no secret stored, no spilling to disk, and no setting changed (SET, PRAGMA, RESET).
READ_ONLY_CONFIG: dict[str, str | bool] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,
    "python_enable_replacements": False,
    "temp_directory": "",
    "lock_configuration": True,  # last: the settings above can no longer be changed
}
# Session settings of every read-only connection, set before its configuration is locked: no
# progress bar (DuckDB draws it on stdout, into the CSV or JSON of a long `lcer sql`).
_READ_SESSION = ("SET enable_progress_bar = false",)

# DuckDB's words for a statement that the settings above refuse.
_REFUSED_MARKERS = (
    "Permission Error",
    "the configuration has been locked",
    "in read-only mode",
)

_process_locks: dict[str, threading.RLock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(path: Path) -> threading.RLock:
    """One lock per database file and process: DuckDB's file lock does not order threads."""
    with _process_locks_guard:
        return _process_locks.setdefault(str(path), threading.RLock())


def _memory_limit(value: str) -> str:
    """``value`` if DuckDB reads it as a memory size (``2GB``, ``500MiB``), else a one-line error."""
    try:
        duckdb.connect(":memory:", config={"memory_limit": value}).close()
    except duckdb.Error:
        raise InvalidParameterError(
            f"memory_limit must be a size such as 2GB or 500MB, not {value!r}",
            param="memory_limit",
        ) from None
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _timestamp(value: Any, name: str) -> datetime | None:
    """A naive UTC datetime from a datetime, an ISO string or seconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            return _timestamp(datetime.fromisoformat(value), name)
        except ValueError:
            pass
    raise InvalidParameterError(f"{name}={value!r} is not a timestamp")


def _number(value: Any, name: str, kind: type) -> Any:
    """``value`` as ``kind`` (int or float); None and NaN become None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name}={value!r} is not a number") from None
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise InvalidParameterError(f"{name}={value!r} is not finite")
    if kind is int:
        if number != int(number):
            raise InvalidParameterError(f"{name}={value!r} is not an integer")
        return int(number)
    return number


#: Every value column of ``metrics``: Table 2's, the cost per pair, the strict metrics.
_METRIC_COLUMNS = METRIC_KEYS + COST_KEYS + STRICT_KEYS


def _metrics_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Validated metrics: the keys of Table 2, percentages within 0–100."""
    unknown = sorted(set(metrics) - set(_METRIC_COLUMNS))
    if unknown:
        raise InvalidParameterError(
            f"unknown metric(s) {', '.join(unknown)}; expected {', '.join(_METRIC_COLUMNS)}"
        )
    row: dict[str, Any] = {}
    for key in _METRIC_COLUMNS:
        kind = int if key in ("n_pairs", "threads") else float
        value = _number(metrics.get(key), f"metric {key}", kind)
        if value is not None:
            if key.endswith("_pct") and not 0.0 <= value <= 100.0:
                raise InvalidParameterError(
                    f"metric {key}={value!r} is outside 0–100 (percentages, not fractions)"
                )
            if value < 0:
                raise InvalidParameterError(f"metric {key}={value!r} is negative")
        row[key] = value
    return row


def _run_row(run: Mapping[str, Any], *, status: str | None = None) -> dict[str, Any]:
    """Validated ``runs`` row; keys outside the table's columns go to ``params_json``."""
    run = dict(run)
    params = dict(run.pop("params", None) or {})
    if "params_json" in run:
        params.update(json.loads(run.pop("params_json") or "{}"))
    for key in [k for k in run if k not in RUN_COLUMNS]:
        params[key] = run.pop(key)
    for key in ("run_id", "dataset", "method"):
        if not isinstance(run.get(key), str) or not run[key]:
            raise InvalidParameterError(f"run needs a non-empty {key}, got {run.get(key)!r}")
    row: dict[str, Any] = {
        "run_id": run["run_id"],
        "dataset": run["dataset"],
        "method": run["method"],
    }
    row["k"] = check_k(_number(run.get("k"), "k", int))
    for key in ("alpha", "lam"):
        row[key] = _number(run.get(key), key, float)
    for key in ("steps", "seed", "n_users"):
        row[key] = _number(run.get(key), key, int)
    for key in ("model_key", "device", "mlflow_run_id"):
        row[key] = None if run.get(key) is None else str(run[key])
    row["status"] = status or run.get("status") or "finished"
    if row["status"] not in STATUSES:
        raise InvalidParameterError(
            f"run status {row['status']!r} is not one of {', '.join(STATUSES)}"
        )
    row["kind"] = run.get("kind") or "explain"
    if row["kind"] not in KINDS:
        raise InvalidParameterError(f"run kind {row['kind']!r} is not one of {', '.join(KINDS)}")
    row["started_at"] = _timestamp(run.get("started_at"), "started_at")
    row["finished_at"] = _timestamp(run.get("finished_at"), "finished_at")
    # Callers written before schema 6 put the config in params["explainer"] and no validity.
    config = run.get("config")
    row["config"] = _config_json(
        params.get("explainer") if config is None else config, run["method"]
    )
    row["reports_validity"] = run.get("reports_validity")
    if row["reports_validity"] is None:
        row["reports_validity"] = registry_reports_validity(row["method"])
    elif not isinstance(row["reports_validity"], bool):
        raise InvalidParameterError(
            f"run reports_validity must be true or false, got {row['reports_validity']!r}"
        )
    row["selects_on"] = _selects_on(run.get("selects_on"), row["method"])
    row["plugins"] = _plugins_json(run.get("plugins"))
    row["params_json"] = json.dumps(params, sort_keys=True, default=str)
    return row


def _selects_on(value: Any, method: str) -> list[str] | None:
    """The tests a run's method selects on, sorted (the registry's default when not given)."""
    if value is None:
        return registry_selects_on(method)
    if isinstance(value, str) or not all(isinstance(t, str) for t in value):
        raise InvalidParameterError(
            f"run selects_on must be a collection of test names, got {value!r}"
        )
    return sorted(value)


_PLUGIN_KEYS = ("name", "distribution", "version")


def _plugins_json(plugins: Any) -> str:
    """The loaded explainer plugins as JSON (None: this process's), each ``{name, distribution,
    version}``."""
    plugins = registry_plugins() if plugins is None else plugins
    if isinstance(plugins, str | bytes) or not isinstance(plugins, Sequence):
        raise InvalidParameterError(
            f"run plugins must be a list of {{name, distribution, version}}, not {plugins!r}"
        )
    rows = []
    for plugin in plugins:
        if not isinstance(plugin, Mapping) or set(plugin) != set(_PLUGIN_KEYS):
            raise InvalidParameterError(
                f"run plugin must have exactly {', '.join(_PLUGIN_KEYS)}, got {plugin!r}"
            )
        rows.append({k: None if plugin[k] is None else str(plugin[k]) for k in _PLUGIN_KEYS})
    return json.dumps(rows, sort_keys=True, separators=(",", ":"))


def _config_json(config: Any, method: str) -> str | None:
    """The explainer configuration ``{"method": ..., field: value}`` as compact, sorted JSON."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise InvalidParameterError(
            f"run config must be a mapping of the explainer's fields, not {type(config).__name__}"
        )
    named = config.get("method", method)
    if named != method:
        raise InvalidParameterError(f"run config is of method {named!r}, not {method!r}")
    try:
        return json.dumps(
            dict(config), sort_keys=True, separators=(",", ":"), allow_nan=False, default=str
        )
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"run config cannot be stored as JSON: {exc}") from None


def _conform(
    frame: pl.DataFrame, spec: Mapping[str, tuple[pl.DataType, bool]], name: str
) -> pl.DataFrame:
    """``frame`` with exactly the columns of ``spec``, cast; missing optional columns are null."""
    if not isinstance(frame, pl.DataFrame):
        raise InvalidParameterError(
            f"{name} must be a polars DataFrame, not {type(frame).__name__}"
        )
    missing = [c for c, (_, required) in spec.items() if required and c not in frame.columns]
    if missing:
        raise InvalidParameterError(f"{name} lacks column(s) {', '.join(missing)}")
    unknown = [c for c in frame.columns if c not in spec and c != "run_id"]
    if unknown:
        raise InvalidParameterError(
            f"{name} has unknown column(s) {', '.join(unknown)}; expected {', '.join(spec)}"
        )
    exprs = []
    for column, (dtype, _) in spec.items():
        if column in frame.columns:
            exprs.append(pl.col(column).cast(dtype, strict=True))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(column))
    try:
        return frame.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise InvalidParameterError(
            f"{name}: a column has the wrong type ({_first_line(exc)})"
        ) from None


def _check_run_id(frame: pl.DataFrame, run_id: str, name: str) -> None:
    if "run_id" in frame.columns and frame.height:
        other = frame.filter(pl.col("run_id") != run_id)
        if other.height:
            raise InvalidParameterError(
                f"{name} has rows of run {other['run_id'][0]!r}, not {run_id!r}"
            )


def _check_unique(frame: pl.DataFrame, keys: Sequence[str], name: str) -> None:
    if frame.height and frame.select(pl.struct(list(keys)).is_duplicated().any()).item():
        dup = frame.filter(pl.struct(list(keys)).is_duplicated()).row(0, named=True)
        where = ", ".join(f"{k}={dup[k]}" for k in keys)
        raise InvalidParameterError(f"{name} has duplicate rows for ({where})")


def _recommendations_frame(frame: pl.DataFrame, run_id: str) -> pl.DataFrame:
    _check_run_id(frame, run_id, "recommendations")
    out = _conform(frame, RECOMMENDATION_COLUMNS, "recommendations")
    if out.height and out["rank"].min() < 1:  # type: ignore[operator]
        raise InvalidParameterError("recommendations: rank starts at 1")
    _check_unique(out, ("uid", "rank"), "recommendations")
    return out


def _explanations_frame(frame: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """Conformed explanations; ``length`` and ``found`` derived from the CE where not given."""
    _check_run_id(frame, run_id, "explanations")
    out = _conform(frame, EXPLANATION_COLUMNS, "explanations")
    ce_len = pl.col("ce_items").list.len().fill_null(0).cast(pl.Int32)
    bad = out.filter(pl.col("length").is_not_null() & (pl.col("length") != ce_len))
    if bad.height:
        row = bad.row(0, named=True)
        raise InvalidParameterError(
            f"explanations: length {row['length']} differs from the CE's {len(row['ce_items'] or [])} "
            f"items (uid={row['uid']}, sid={row['sid']})"
        )
    misaligned = out.filter(
        pl.col("ce_importance").is_not_null()
        & (pl.col("ce_importance").list.len() != pl.col("ce_items").list.len())
    )
    if misaligned.height:
        row = misaligned.row(0, named=True)
        raise InvalidParameterError(
            f"explanations: ce_importance is not aligned with ce_items (uid={row['uid']}, sid={row['sid']})"
        )
    out = out.with_columns(
        length=pl.coalesce(pl.col("length"), ce_len),
        found=pl.coalesce(pl.col("found"), ce_len > 0),
        # The metrics code says 0 for "no rank" (no CE, or the item was an input): NULL here.
        rank_after=pl.when(pl.col("rank_after") >= 1).then(pl.col("rank_after")),
    )
    _check_unique(out, ("uid", "sid"), "explanations")
    return out


def _shards_frame(frame: pl.DataFrame | None, run_id: str) -> pl.DataFrame:
    """Conformed shard placements (one row per shard); none given is an empty frame."""
    if frame is None:
        frame = pl.DataFrame(schema={c: t for c, (t, _) in SHARD_COLUMNS.items()})
    _check_run_id(frame, run_id, "shards")
    out = _conform(frame, SHARD_COLUMNS, "shards")
    _check_unique(out, ("shard",), "shards")
    return out


def _upsert_sql(
    table: str, columns: Sequence[str], key: Sequence[str], keep: Sequence[str] = ()
) -> str:
    """INSERT ... ON CONFLICT DO UPDATE; ``keep`` columns keep their value when the new one is NULL."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(
        f"{c} = coalesce(excluded.{c}, {table}.{c})" if c in keep else f"{c} = excluded.{c}"
        for c in columns
        if c not in key
    )
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_RUN_TABLE_COLUMNS = (*RUN_COLUMNS, "params_json")
# Columns of ``runs`` a rewrite without them (NULL) leaves as they were: the MLflow link, and
# what the run key already determines (its configuration; whether its method reports validity).
_KEEP = ("mlflow_run_id", "config", "reports_validity", "selects_on")


class ResultStore:
    """The DuckDB results database of ``lcer`` (default ``$LCER_HOME/results/lcer.duckdb``).

    Use it as a context manager (``with ResultStore() as store: ...``); entering opens the
    file once, creating or migrating the schema. No connection is held in between calls,
    so other processes (``lcer sql`` during a pipeline run) only wait for one transaction.
    """

    def __init__(
        self, path: Path | str | None = None, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        if not lock_timeout >= 0:
            raise InvalidParameterError(f"lock_timeout={lock_timeout!r} must be >= 0 seconds")
        self.path = Path(path).expanduser().absolute() if path is not None else paths.results_db()
        self.lock_timeout = float(lock_timeout)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def __enter__(self) -> ResultStore:
        self.schema_version()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    # ------------------------------------------------------------------ connections

    def _connect_raw(
        self, *, read_only: bool, settings: Mapping[str, str] | None = None
    ) -> duckdb.DuckDBPyConnection:
        """``duckdb.connect`` with back-off on lock conflicts, errors mapped to one line.

        Read-only connections get :data:`READ_ONLY_CONFIG`: they reach this file and nothing else;
        ``settings`` (e.g. ``memory_limit``) are set before the configuration is locked.
        """
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        config: dict[str, str | bool] = {}
        if read_only:  # locked below, once the session settings are made
            config = {k: v for k, v in READ_ONLY_CONFIG.items() if k != "lock_configuration"}
            config |= dict(settings or {})
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only, config=config)
                if read_only:
                    try:
                        for statement in (*_READ_SESSION, "SET lock_configuration = true"):
                            con.execute(statement)
                    except BaseException:
                        con.close()
                        raise
                return con
            except duckdb.Error as exc:
                message = str(exc)
                if not (any(m in message for m in _LOCK_MARKERS) or _CONFIG_MARKER in message):
                    if disk_trouble(message):
                        raise LcerHomeError(
                            f"cannot open the results database {self.path}: {_first_line(exc)}"
                        ) from None
                    raise StoreError(
                        f"cannot open the results database {self.path}: {_first_line(exc)}"
                    ) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    if _CONFIG_MARKER in message:
                        raise StoreLockedError(
                            f"the results database {self.path} is held open by this process with "
                            f"another configuration (a duckdb connection outside ResultStore?); "
                            f"gave up after {self.lock_timeout:g} s"
                        ) from None
                    holder = re.search(r"\(PID (\d+)\)", message)
                    by = f" (PID {holder.group(1)})" if holder else ""
                    raise StoreLockedError(
                        f"the results database {self.path} is locked by another process{by}; "
                        f"gave up after {self.lock_timeout:g} s"
                    ) from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)

    def _open_write(self) -> duckdb.DuckDBPyConnection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LcerHomeError(
                f"cannot create {self.path.parent}: {exc.strerror or type(exc).__name__}"
            ) from None
        created = not self.path.exists()
        con = self._connect_raw(read_only=False)
        try:
            if current_version(con) != SCHEMA_VERSION:
                apply_migrations(con, where=f"the results database {self.path}")
        except BaseException:
            con.close()
            if created:  # a database this call began and could not finish: leave no husk
                for leftover in (self.path, self.path.with_name(self.path.name + ".wal")):
                    leftover.unlink(missing_ok=True)
            raise
        return con

    def _open_read(self, settings: Mapping[str, str] | None = None) -> duckdb.DuckDBPyConnection:
        if not self.path.exists():
            self._open_write().close()
        con = self._connect_raw(read_only=True, settings=settings)
        try:
            version = current_version(con)
        except BaseException:
            con.close()
            raise
        if version == SCHEMA_VERSION:
            return con
        con.close()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the results database {self.path} has schema version {version}, newer than this "
                f"lcer understands ({SCHEMA_VERSION}): upgrade lcer to read it"
            )
        self._open_write().close()  # migrate, then read
        return self._connect_raw(read_only=True, settings=settings)

    @contextmanager
    def _connection(
        self, *, write: bool, settings: Mapping[str, str] | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        with _process_lock(self.path):
            con = self._open_write() if write else self._open_read(settings)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def _transaction(self, action: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """One read-write connection and transaction, then a checkpoint."""
        with self._connection(write=True) as con, self._transaction_on(con, action):
            yield con

    @contextmanager
    def _transaction_on(self, con: duckdb.DuckDBPyConnection, action: str) -> Iterator[None]:
        """BEGIN ... COMMIT on ``con``, then CHECKPOINT (so no WAL is left behind).

        Staging frames are registered on ``con`` before: registering is DDL, kept out of
        the transaction. DuckDB errors become one-line StoreErrors.
        """
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                yield
            except BaseException:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        except duckdb.Error as exc:
            error = LcerHomeError if disk_trouble(str(exc)) else StoreError
            raise error(f"cannot {action} in {self.path}: {_first_line(exc)}") from None
        try:
            con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.warning("checkpoint of %s failed: %s", self.path, _first_line(exc))

    # ------------------------------------------------------------------ reads

    def query(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        create: bool = True,
        timeout: float | None = None,
        memory_limit: str | None = None,
    ) -> pl.DataFrame:
        """Run read-only SQL on this database alone; its result as a polars frame.

        The connection can read this file and nothing else (:data:`READ_ONLY_CONFIG`), whatever
        the text: a statement that would write, reach another file or change a setting is a
        one-line StoreError. With ``create=False`` a missing database is a MissingDataError
        instead of being created (``lcer sql`` never leaves an empty database behind).
        ``timeout`` (seconds) stops the query (``con.interrupt()``) with a QueryTimeoutError;
        ``memory_limit`` (DuckDB's setting, e.g. ``"2GB"``) bounds its memory. The file is
        read-locked only while the query runs: writers wait at most that long.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidParameterError("the SQL query is empty")
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise InvalidParameterError(
                f"timeout must be a positive number of seconds, not {timeout!r}", param="timeout"
            )
        settings = {} if memory_limit is None else {"memory_limit": _memory_limit(memory_limit)}
        if not create and not self.path.is_file():
            raise MissingDataError(
                f"no results database at {self.path} yet: "
                "`lcer run` and `lcer sweep` store results there"
            )
        stopped = threading.Event()
        with self._connection(write=False, settings=settings) as con:

            def stop() -> None:
                stopped.set()
                con.interrupt()

            timer = None if timeout is None else threading.Timer(timeout, stop)
            try:
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                relation = con.sql(sql, params=list(params) if params is not None else None)
                return pl.DataFrame() if relation is None else relation.pl()
            except duckdb.Error as exc:
                line = _first_line(exc)
                if stopped.is_set():
                    raise QueryTimeoutError(
                        f"the query ran longer than {timeout:g} s and was stopped"
                    ) from None
                if "Out of Memory" in line and memory_limit is not None:
                    raise StoreError(
                        f"SQL error: {line} (the query may use {memory_limit})"
                    ) from None
                if any(marker in line for marker in _REFUSED_MARKERS):
                    raise StoreError(
                        f"SQL error: refused, a query may only read the results database ({line})"
                    ) from None
                raise StoreError(f"SQL error: {line}") from None
            finally:
                if timer is not None:
                    timer.cancel()

    def schema_version(self) -> int:
        """The schema version of the file (creating or migrating it first)."""
        with self._connection(write=False) as con:
            return current_version(con)

    def table2(self, dataset: str | None = None) -> pl.DataFrame:
        """The ``table2`` view, for one dataset or all."""
        if dataset is None:
            return self.query("SELECT * FROM table2")
        return self.query("SELECT * FROM table2 WHERE dataset = ?", [dataset])

    def table3(self, dataset: str | None = None) -> pl.DataFrame:
        """The ``table3`` view, for one dataset or all."""
        if dataset is None:
            return self.query("SELECT * FROM table3")
        return self.query("SELECT * FROM table3 WHERE dataset = ?", [dataset])

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The ``runs`` row of ``run_id`` as a dict, or None."""
        rows = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return rows.row(0, named=True) if rows.height else None

    def recommendations(self, run_id: str) -> pl.DataFrame:
        return self.query(
            "SELECT * FROM recommendations WHERE run_id = ? ORDER BY uid, rank", [run_id]
        )

    def explanations(self, run_id: str) -> pl.DataFrame:
        return self.query(
            "SELECT * FROM explanations WHERE run_id = ? ORDER BY uid, rank, sid", [run_id]
        )

    def counts(self) -> dict[str, int]:
        """Row count of every table (what a re-run must leave unchanged)."""
        union = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in TABLES)
        frame = self.query(union)
        return dict(zip(frame["t"].to_list(), frame["n"].to_list(), strict=True))

    # ------------------------------------------------------------------ writes

    def write_run(
        self,
        run: Mapping[str, Any],
        recommendations: pl.DataFrame,
        explanations: pl.DataFrame,
        metrics: Mapping[str, Any],
        *,
        shards: pl.DataFrame | None = None,
    ) -> str:
        """Store a finished run as a whole, replacing any earlier rows of the same run id.

        ``run`` holds the ``runs`` columns (``run_id``, ``dataset``, ``method``, ``k`` required;
        ``config`` the explainer's ``dump_config()``, else ``params["explainer"]``;
        ``reports_validity`` a bool, else the registry's; ``params`` a dict; other keys join
        ``params``); the frames hold the columns of
        :data:`~lcer_core.store.schema.RECOMMENDATION_COLUMNS` and
        :data:`~lcer_core.store.schema.EXPLANATION_COLUMNS`; ``metrics`` the keys of Table 2;
        ``shards`` where each shard ran (:data:`~lcer_core.store.schema.SHARD_COLUMNS`).
        One transaction: a crash leaves the previous rows of the run in place.
        """
        row = _run_row(run, status="finished")
        row["finished_at"] = row["finished_at"] or _utcnow()
        run_id = row["run_id"]
        recs = _recommendations_frame(recommendations, run_id).to_arrow()
        expl = _explanations_frame(explanations, run_id).to_arrow()
        placed = _shards_frame(shards, run_id).to_arrow()
        shard_cols = ", ".join(SHARD_COLUMNS)
        metric = _metrics_row(metrics)
        evaluated_at = row["finished_at"] or _utcnow()
        rec_cols = ", ".join(RECOMMENDATION_COLUMNS)
        exp_cols = ", ".join(EXPLANATION_COLUMNS)
        with self._connection(write=True) as con:
            con.register("_lcer_recs", recs)
            con.register("_lcer_expl", expl)
            con.register("_lcer_shards", placed)
            try:
                with self._transaction_on(con, f"write run {run_id}"):
                    for table in ("recommendations", "explanations", "metrics", "shards"):
                        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                    columns = list(_RUN_TABLE_COLUMNS)
                    con.execute(
                        _upsert_sql("runs", columns, ("run_id",), keep=_KEEP + ("started_at",)),
                        [row[c] for c in columns],
                    )
                    con.execute(
                        f"INSERT INTO recommendations (run_id, {rec_cols}) "
                        f"SELECT ?, {rec_cols} FROM _lcer_recs",
                        [run_id],
                    )
                    con.execute(
                        f"INSERT INTO explanations (run_id, {exp_cols}) "
                        f"SELECT ?, {exp_cols} FROM _lcer_expl",
                        [run_id],
                    )
                    con.execute(
                        f"INSERT INTO shards (run_id, {shard_cols}) "
                        f"SELECT ?, {shard_cols} FROM _lcer_shards",
                        [run_id],
                    )
                    self._insert_metrics(con, row, metric, evaluated_at, "explain")
            finally:
                con.unregister("_lcer_recs")
                con.unregister("_lcer_expl")
                con.unregister("_lcer_shards")
        return run_id

    @staticmethod
    def _insert_metrics(
        con: duckdb.DuckDBPyConnection,
        run: Mapping[str, Any],
        metric: Mapping[str, Any],
        evaluated_at: datetime,
        kind: str,
    ) -> None:
        keys = _METRIC_COLUMNS
        columns = ["run_id", "dataset", "method", "k", *keys, "evaluated_at", "kind"]
        values = [run["run_id"], run["dataset"], run["method"], run["k"]]
        values += [metric[k] for k in keys] + [evaluated_at, kind]
        con.execute(_upsert_sql("metrics", columns, ("run_id", "evaluated_at")), values)

    def begin_run(self, run: Mapping[str, Any]) -> str:
        """Record a run as ``running`` (before its explanations exist); its rows are untouched."""
        row = _run_row(run, status="running")
        row["started_at"] = row["started_at"] or _utcnow()
        row["finished_at"] = None
        columns = list(_RUN_TABLE_COLUMNS)
        with self._transaction(f"start run {row['run_id']}") as con:
            con.execute(
                _upsert_sql("runs", columns, ("run_id",), keep=_KEEP),
                [row[c] for c in columns],
            )
        return row["run_id"]

    def mark_run(self, run_id: str, status: str, mlflow_run_id: str | None = None) -> None:
        """Set a run's status (``finished``/``failed`` also stamp ``finished_at``)."""
        if status not in STATUSES:
            raise InvalidParameterError(
                f"run status {status!r} is not one of {', '.join(STATUSES)}"
            )
        with self._transaction(f"mark run {run_id}") as con:
            [(changed,)] = con.execute(
                "UPDATE runs SET status = ?, "
                "finished_at = CASE WHEN ? = 'running' THEN finished_at ELSE ? END, "
                "mlflow_run_id = coalesce(?, mlflow_run_id) WHERE run_id = ?",
                [status, status, _utcnow(), mlflow_run_id, run_id],
            ).fetchall()
            if not changed:
                raise StoreError(f"no run {run_id!r} in the results database {self.path}")

    def set_mlflow_run_id(self, run_id: str, mlflow_run_id: str) -> None:
        """Link a stored run to its MLflow run."""
        with self._transaction(f"link run {run_id} to MLflow") as con:
            [(changed,)] = con.execute(
                "UPDATE runs SET mlflow_run_id = ? WHERE run_id = ?", [mlflow_run_id, run_id]
            ).fetchall()
            if not changed:
                raise StoreError(f"no run {run_id!r} in the results database {self.path}")

    def add_metrics(
        self,
        run_id: str,
        metrics: Mapping[str, Any],
        kind: str = "reevaluate",
        evaluated_at: datetime | str | float | None = None,
    ) -> None:
        """Append a timestamped metrics row to a run (history is kept; views read the newest)."""
        if kind not in KINDS:
            raise InvalidParameterError(f"metrics kind {kind!r} is not one of {', '.join(KINDS)}")
        metric = _metrics_row(metrics)
        when = _timestamp(evaluated_at, "evaluated_at") or _utcnow()
        with self._transaction(f"add metrics to run {run_id}") as con:
            rows = con.execute(
                "SELECT run_id, dataset, method, k FROM runs WHERE run_id = ?", [run_id]
            ).fetchall()
            if not rows:
                raise StoreError(f"no run {run_id!r} in the results database {self.path}")
            run = dict(zip(("run_id", "dataset", "method", "k"), rows[0], strict=True))
            self._insert_metrics(con, run, metric, when, kind)

    def upsert_dataset(
        self,
        stats: Mapping[str, Any],
        items: pl.DataFrame | None = None,
        *,
        dataset: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a prepared dataset's Table 1 statistics, the digests of the bytes it was
        prepared from (``source``: ``archive_sha256``, ``members_sha256``, ...) and (replacing
        them) its items."""
        name = dataset or stats.get("dataset")
        if not isinstance(name, str) or not name:
            raise InvalidParameterError("upsert_dataset needs a dataset name (stats['dataset'])")
        row = {"dataset": name}
        for key in ("users", "items", "interactions", "train_users", "val_users", "test_users"):
            row[key] = _number(stats.get(key), key, int)
        row["density_pct"] = _number(stats.get("density_pct"), "density_pct", float)
        row["stats_json"] = json.dumps(dict(stats), sort_keys=True, default=str)
        row["prepared_at"] = _timestamp(stats.get("prepared_at"), "prepared_at") or _utcnow()
        digest = (source or {}).get("archive_sha256")
        row["archive_sha256"] = digest if isinstance(digest, str) else None
        row["source_json"] = (
            None if source is None else json.dumps(dict(source), sort_keys=True, default=str)
        )
        frame = None
        if items is not None:
            frame = _conform(items, ITEM_COLUMNS, "items")
            _check_unique(frame, ("sid",), "items")
            frame = frame.to_arrow()
        columns = list(row)
        item_cols = ", ".join(ITEM_COLUMNS)
        with self._connection(write=True) as con:
            if frame is not None:
                con.register("_lcer_items", frame)
            try:
                with self._transaction_on(con, f"write dataset {name}"):
                    con.execute(
                        _upsert_sql("datasets", columns, ("dataset",)), [row[c] for c in columns]
                    )
                    if frame is not None:
                        con.execute("DELETE FROM items WHERE dataset = ?", [name])
                        con.execute(
                            f"INSERT INTO items (dataset, {item_cols}) SELECT ?, {item_cols} FROM _lcer_items",
                            [name],
                        )
            finally:
                if frame is not None:
                    con.unregister("_lcer_items")

    def upsert_model(
        self,
        *,
        model_key: str,
        dataset: str,
        version: str | int | None = None,
        params: Mapping[str, Any] | None = None,
        ndcg100: float | None = None,
        recall20: float | None = None,
        recall50: float | None = None,
        path: Path | str | None = None,
        mlflow_model_uri: str | None = None,
        created_at: datetime | str | float | None = None,
    ) -> None:
        """Record a trained recommender (its key, validation metrics and where it lives)."""
        if not model_key or not dataset:
            raise InvalidParameterError("upsert_model needs a model_key and a dataset")
        row = {
            "model_key": model_key,
            "dataset": dataset,
            "version": None if version is None else str(version),
            "params_json": json.dumps(dict(params or {}), sort_keys=True, default=str),
            "ndcg100": _number(ndcg100, "ndcg100", float),
            "recall20": _number(recall20, "recall20", float),
            "recall50": _number(recall50, "recall50", float),
            "path": None if path is None else str(path),
            "mlflow_model_uri": mlflow_model_uri,
            "created_at": _timestamp(created_at, "created_at") or _utcnow(),
        }
        columns = list(row)
        with self._transaction(f"write model {model_key}") as con:
            con.execute(
                _upsert_sql("models", columns, ("model_key",), keep=("mlflow_model_uri",)),
                [row[c] for c in columns],
            )
