"""The DuckDB results store: schema, idempotent writes, views, migrations, `lcer sql` / `lcer report`."""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from dataset_fixtures import run_cli

from lcer_core.errors import (
    InvalidParameterError,
    LcerHomeError,
    MissingDataError,
    StoreError,
    StoreLockedError,
)
from lcer_core.keys import run_key
from lcer_core.paper import paper_table2
from lcer_core.store import (
    SCHEMA_VERSION,
    TABLE2_COLUMNS,
    TABLE3_COLUMNS,
    ResultStore,
    apply_migrations,
    current_version,
    render,
    table2_report,
)

T0 = datetime(2026, 1, 1, 12, 0, 0)


def fake_run(
    dataset: str = "ml-100k",
    method: str = "lcer",
    k: int = 5,
    *,
    alpha: float | None = None,
    lam: float | None = None,
    n_users: int = 3,
    seed: int = 0,
    model_key: str = "m1",
    finished_at: datetime = T0,
    metrics: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """A small, well-formed run: ``n_users`` users × ``k`` recommendations, CEs of length 1–2."""
    if method == "lcer":
        alpha = 0.1 if alpha is None else alpha
        lam = 0.01 if lam is None else lam
    run = {
        "run_id": run_key(
            dataset=dataset,
            method=method,
            k=k,
            alpha=alpha,
            lam=lam,
            steps=100,
            seed=seed,
            model_version=model_key,
            n_users=n_users,
        ),
        "dataset": dataset,
        "method": method,
        "k": k,
        "alpha": alpha,
        "lam": lam,
        "steps": 100,
        "seed": seed,
        "n_users": n_users,
        "model_key": model_key,
        "device": "cpu",
        "started_at": finished_at - timedelta(minutes=1),
        "finished_at": finished_at,
        "params": {"batch": 64},
    }
    users = [u for u in range(n_users) for _ in range(k)]
    ranks = [r + 1 for _ in range(n_users) for r in range(k)]
    sids = [100 + u + r for u, r in zip(users, ranks, strict=True)]
    recs = pl.DataFrame(
        {
            "uid": users,
            "raw_user": [f"u{u}" for u in users],
            "rank": ranks,
            "sid": sids,
            "raw_item": [f"i{s}" for s in sids],
            "score": [1.0 / r for r in ranks],
        }
    )
    ce = [[s % 7, s % 7 + 10] if r % 2 else [s % 7] for s, r in zip(sids, ranks, strict=True)]
    expl = pl.DataFrame(
        {
            "uid": users,
            "raw_user": [f"u{u}" for u in users],
            "sid": sids,
            "raw_item": [f"i{s}" for s in sids],
            "rank": ranks,
            "ce_items": ce,
            "ce_raw": [[f"i{c}" for c in cs] for cs in ce],
            "ce_importance": [[0.9, 0.6][: len(cs)] for cs in ce],
            "sufficient": [r % 3 != 0 for r in ranks],
            "necessary": [True] * len(users),
            "rank_after": [k + 1] * len(users),
        }
    )
    m = {
        "n_pairs": len(users),
        "val_pct": 100.0,
        "len": 1.5,
        "ps_pct": 60.0,
        "pn_pct": 80.0,
        "fns_pct": 68.57,
    }
    m.update(metrics or {})
    return run, recs, expl, m


@pytest.fixture()
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "home" / "results" / "lcer.duckdb")


def write(store: ResultStore, *args: Any, **kwargs: Any) -> dict[str, Any]:
    run, recs, expl, m = fake_run(*args, **kwargs)
    store.write_run(run, recs, expl, m)
    return run


# ---------------------------------------------------------------------------------- schema


def test_new_store_creates_folders_schema_and_views(store: ResultStore) -> None:
    with store:
        assert store.path.is_file()
        assert store.schema_version() == SCHEMA_VERSION
        names = set(store.query("SELECT table_name FROM duckdb_tables()")["table_name"].to_list())
        assert {
            "runs",
            "recommendations",
            "explanations",
            "metrics",
            "datasets",
            "items",
            "models",
        } <= names
        views = set(
            store.query("SELECT view_name FROM duckdb_views() WHERE NOT internal")["view_name"]
        )
        assert {"table2", "table3", "item_explanations", "explanation_items"} <= views
        assert store.table2().columns == list(TABLE2_COLUMNS)
        assert store.table3().columns == list(TABLE3_COLUMNS)
        assert store.table2().height == 0


# ---------------------------------------------------------------------------------- writes and table2


def test_table2_one_row_per_dataset_method_k_with_null_validity_for_fia(store: ResultStore) -> None:
    with store:
        for k in (5, 10):
            for method in ("fia", "kaffes", "accent", "lcer"):
                write(store, method=method, k=k, metrics={"val_pct": 87.5, "ps_pct": 40.0 + k})
        t2 = store.table2("ml-100k")
    assert t2.columns == list(TABLE2_COLUMNS)
    assert t2.height == 8
    assert t2.select("method", "k").rows() == [
        (m, k) for k in (5, 10) for m in ("fia", "kaffes", "accent", "lcer")
    ]
    for row in t2.iter_rows(named=True):
        assert row["val_pct"] is None if row["method"] == "fia" else row["val_pct"] == 87.5
        assert row["ps_pct"] == 40.0 + row["k"]
        assert row["n_pairs"] == 3 * row["k"]
        assert row["finished_at"] == T0
    lcer = t2.filter(pl.col("method") == "lcer").row(0, named=True)
    assert (lcer["alpha"], lcer["lam"]) == (0.1, 0.01)


def test_rewriting_the_same_run_replaces_its_rows(store: ResultStore) -> None:
    with store:
        write(store, method="lcer")
        write(store, method="accent")
        before = store.counts()
        assert (
            before["runs"] == 2 and before["recommendations"] == 30 and before["explanations"] == 30
        )
        run = write(store, method="lcer", metrics={"fns_pct": 70.0})
        assert store.counts() == before
        row = store.table2().filter(pl.col("method") == "lcer").row(0, named=True)
        assert row["fns_pct"] == 70.0 and row["run_id"] == run["run_id"]
        stored = store.run(run["run_id"])
        assert stored is not None and stored["status"] == "finished"
        assert json.loads(stored["params_json"]) == {"batch": 64}


def test_rows_round_trip_with_ce_lists_and_rank_after(store: ResultStore) -> None:
    run, recs, expl, m = fake_run(k=2, n_users=1)
    expl = expl.with_columns(rank_after=pl.Series([0, 7], dtype=pl.Int32))
    with store:
        store.write_run(run, recs, expl, m)
        got = store.explanations(run["run_id"])
        assert got["ce_items"].to_list() == [[3, 13], [4]]
        assert got["ce_raw"].to_list() == [["i3", "i13"], ["i4"]]
        assert got["ce_importance"].to_list() == [[0.9, 0.6], [0.9]]
        assert got["length"].to_list() == [2, 1]
        assert got["found"].to_list() == [True, True]
        assert got["rank_after"].to_list() == [None, 7]  # 0 ("no rank") becomes NULL
        assert store.recommendations(run["run_id"])["score"].to_list() == [1.0, 0.5]


def test_table2_takes_the_latest_finished_run_and_its_latest_metrics(store: ResultStore) -> None:
    with store:
        old = write(store, method="accent", seed=0, finished_at=T0)
        new = write(store, method="accent", seed=1, finished_at=T0 + timedelta(hours=1))
        assert store.table2()["run_id"].to_list() == [new["run_id"]]
        # A re-run in progress, or a failed one, is not "finished": the other run shows.
        store.begin_run({k: v for k, v in new.items() if k != "finished_at"})
        assert store.table2()["run_id"].to_list() == [old["run_id"]]
        store.mark_run(new["run_id"], "failed")
        assert store.table2()["run_id"].to_list() == [old["run_id"]]
        store.mark_run(new["run_id"], "finished", mlflow_run_id="abc123")
        assert store.table2()["run_id"].to_list() == [new["run_id"]]
        assert store.run(new["run_id"])["mlflow_run_id"] == "abc123"
        # A re-evaluation adds a metrics row; the view reads the newest, history stays.
        store.add_metrics(
            new["run_id"],
            {
                "n_pairs": 15,
                "val_pct": 90.0,
                "len": 2.0,
                "ps_pct": 1.0,
                "pn_pct": 2.0,
                "fns_pct": 1.33,
            },
            evaluated_at=datetime.now(),
        )
        assert store.table2()["val_pct"].to_list() == [90.0]
        hist = store.query(
            "SELECT kind FROM metrics WHERE run_id = ? ORDER BY evaluated_at", [new["run_id"]]
        )
        assert hist["kind"].to_list() == ["explain", "reevaluate"]
        # Rewriting the run replaces its metrics history too (a new explanation).
        write(store, method="accent", seed=1, finished_at=T0 + timedelta(hours=2))
        assert store.counts()["metrics"] == 2
        store.set_mlflow_run_id(new["run_id"], "def456")
        assert store.run(new["run_id"])["mlflow_run_id"] == "def456"


def test_unknown_run_is_a_clear_error(store: ResultStore) -> None:
    with store:
        with pytest.raises(StoreError, match="no run 'nope'"):
            store.mark_run("nope", "finished")
        with pytest.raises(StoreError, match="no run 'nope'"):
            store.add_metrics("nope", {"len": 1.0})
        with pytest.raises(InvalidParameterError, match="status 'done'"):
            store.mark_run("nope", "done")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r, rc, e, m: (r, rc.drop("sid"), e, m), "recommendations lacks column.*sid"),
        (lambda r, rc, e, m: (r, rc, e.with_columns(extra=pl.lit(1)), m), "unknown column.*extra"),
        (
            lambda r, rc, e, m: (r, rc, e, {**m, "val_pct": 0.8 * 200}),
            "val_pct=160.0 is outside 0–100",
        ),
        (lambda r, rc, e, m: (r, rc, e, {**m, "validity": 0.8}), "unknown metric.*validity"),
        (lambda r, rc, e, m: ({**r, "k": 0}, rc, e, m), "k must be a positive integer"),
        (lambda r, rc, e, m: ({**r, "run_id": ""}, rc, e, m), "non-empty run_id"),
        (
            lambda r, rc, e, m: (r, pl.concat([rc, rc.head(1)]), e, m),
            "duplicate rows for \\(uid=0, rank=1\\)",
        ),
        (
            lambda r, rc, e, m: (r, rc, e.with_columns(length=pl.lit(5)), m),
            "length 5 differs from the CE's 2 items",
        ),
        (
            lambda r, rc, e, m: (r, rc, e.with_columns(ce_importance=pl.lit([0.5, 0.5, 0.5])), m),
            "ce_importance is not aligned",
        ),
        (lambda r, rc, e, m: (r, rc, e.with_columns(sid=pl.lit("x")), m), "wrong type"),
    ],
)
def test_malformed_runs_are_refused_and_nothing_is_written(
    store: ResultStore, change: Any, message: str
) -> None:
    with store:
        write(store)
        before = store.counts()
        with pytest.raises(InvalidParameterError, match=message):
            store.write_run(*change(*fake_run(method="accent")))
        assert store.counts() == before


def test_nan_metrics_are_stored_as_null(store: ResultStore) -> None:
    with store:
        write(store, method="kaffes", metrics={"ps_pct": math.nan, "fns_pct": None})
        row = store.table2().row(0, named=True)
        assert row["ps_pct"] is None and row["fns_pct"] is None and row["pn_pct"] == 80.0


def test_upsert_dataset_and_model_are_idempotent(store: ResultStore) -> None:
    stats = {
        "dataset": "ml-100k",
        "users": 938,
        "items": 1447,
        "interactions": 55361,
        "density_pct": 4.079,
    }
    items = pl.DataFrame({"sid": [0, 1], "raw_id": ["1", "2"], "title": ["Toy Story", "GoldenEye"]})
    with store:
        for _ in range(2):
            store.upsert_dataset(stats, items)
            store.upsert_model(
                model_key="m1", dataset="ml-100k", version=1, ndcg100=0.41, path="/x"
            )
        assert store.counts()["datasets"] == 1 and store.counts()["items"] == 2
        assert store.counts()["models"] == 1
        store.upsert_dataset({**stats, "users": 939}, items.head(1))
        assert store.query("SELECT users FROM datasets")["users"].to_list() == [939]
        assert store.query("SELECT title FROM items")["title"].to_list() == ["Toy Story"]
        assert store.query("SELECT ndcg100, version FROM models").row(0) == (0.41, "1")
        with pytest.raises(InvalidParameterError, match="dataset name"):
            store.upsert_dataset({"users": 1})


# ---------------------------------------------------------------------------------- table3


def test_table3_pairs_each_baseline_with_the_closest_lcer_within_005(store: ResultStore) -> None:
    with store:
        write(store, method="kaffes", metrics={"len": 1.306, "fns_pct": 47.52})
        write(store, method="accent", metrics={"len": 1.527, "fns_pct": 50.03})
        write(store, method="fia", metrics={"len": 1.0})
        write(store, method="lcer", alpha=0.1, lam=0.05, metrics={"len": 1.315, "fns_pct": 55.06})
        write(store, method="lcer", alpha=0.1, lam=0.04, metrics={"len": 1.34, "fns_pct": 60.0})
        write(store, method="lcer", alpha=0.1, lam=0.02, metrics={"len": 1.535, "fns_pct": 57.55})
        write(store, method="lcer", alpha=0.1, lam=0.01, metrics={"len": 2.5, "fns_pct": 70.0})
        write(store, method="lcer", alpha=0.1, lam=0.03, metrics={"len": 1.0})
        # Another model's LCER run of exactly the right length must not be paired.
        write(store, method="lcer", alpha=0.2, lam=0.01, model_key="m2", metrics={"len": 1.306})
        t3 = store.table3("ml-100k")
    assert t3.columns == list(TABLE3_COLUMNS)
    got = {r["baseline"]: r for r in t3.iter_rows(named=True)}
    assert set(got) == {"kaffes", "accent"}  # FIA's explanations are not CEs
    assert (got["kaffes"]["lcer_len"], got["kaffes"]["lam"]) == (1.315, 0.05)
    assert (got["accent"]["lcer_len"], got["accent"]["lam"]) == (1.535, 0.02)
    assert got["kaffes"]["baseline_fns_pct"] == 47.52 and got["kaffes"]["lcer_fns_pct"] == 55.06


# ---------------------------------------------------------------------------------- section 4.3


def test_section_43_questions_with_one_query_each(store: ResultStore) -> None:
    items = pl.DataFrame(
        {
            "sid": list(range(8)),
            "raw_id": [str(s) for s in range(8)],
            "title": [f"movie {s}" for s in range(8)],
            "popularity": [50, 40, 30, 20, 10, 5, 2, 1],
        }
    )
    run = {"run_id": "r", "dataset": "toy", "method": "lcer", "k": 2, "finished_at": T0}
    recs = pl.DataFrame({"uid": [0, 0, 1, 1, 2, 2], "rank": [1, 2] * 3, "sid": [5, 6, 5, 7, 5, 6]})
    expl = pl.DataFrame(
        {
            "uid": [0, 0, 1, 1, 2, 2],
            "sid": [5, 6, 5, 7, 5, 6],
            "ce_items": [[0, 1], [0], [0, 2], [], [1], [0, 1, 2]],
            "ce_importance": [[0.9, 0.6], [0.8], [0.7, 0.55], [], [0.95], [0.6, 0.7, 0.9]],
        }
    )
    metrics = {
        "n_pairs": 6,
        "val_pct": 83.3,
        "len": 1.8,
        "ps_pct": 50.0,
        "pn_pct": 50.0,
        "fns_pct": 50.0,
    }
    with store:
        store.upsert_dataset({"dataset": "toy", "users": 3, "items": 8}, items)
        store.write_run(run, recs, expl, metrics)
        # Which items appear most often in CEs, with their popularity and mean importance.
        top = store.query(
            "SELECT sid, popularity, explanation_count, mean_importance FROM item_explanations "
            "WHERE dataset = 'toy' AND method = 'lcer' AND k = 2 "
            "ORDER BY explanation_count DESC, sid LIMIT 3"
        )
        assert top.select("sid", "popularity", "explanation_count").rows() == [
            (0, 50, 4),
            (1, 40, 3),
            (2, 30, 2),
        ]
        assert top["mean_importance"].to_list() == pytest.approx(
            [0.75, (0.6 + 0.95 + 0.7) / 3, 0.725]
        )
        # How that relates to popularity: one correlation row per (dataset, method, k).
        corr = store.query(
            "SELECT dataset, method, k, corr(explanation_count, popularity) AS r_explanations, "
            "corr(recommendation_count, popularity) AS r_recommendations "
            "FROM item_explanations GROUP BY ALL"
        )
        assert corr.height == 1 and corr["r_explanations"][0] > 0.8
        # How often each item is recommended (every item of the dataset, zeros included).
        recs_count = store.query(
            "SELECT sid, recommendation_count FROM item_explanations "
            "WHERE dataset = 'toy' AND method = 'lcer' AND k = 2 ORDER BY recommendation_count DESC, sid"
        )
        assert recs_count.rows() == [(5, 3), (6, 2), (7, 1), (0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]


# ---------------------------------------------------------------------------------- queries


def test_query_is_read_only_and_sql_errors_are_one_line(store: ResultStore) -> None:
    with store:
        write(store)
        with pytest.raises(StoreError, match="^SQL error: .*read-only") as err:
            store.query("DELETE FROM runs")
        assert "\n" not in str(err.value)
        with pytest.raises(StoreError, match="^SQL error: Parser Error") as err:
            store.query("SELEC * FROM runs")
        assert "\n" not in str(err.value)
        with pytest.raises(StoreError, match="nonexistent"):
            store.query("SELECT * FROM nonexistent")
        assert store.counts()["runs"] == 1


def test_formats_render_lists_nulls_and_timestamps() -> None:
    frame = pl.DataFrame(
        {"m": ["fia", "lcer"], "val": [None, 87.5], "ce": [[1, 2], [3]], "t": [T0, T0]}
    )
    assert json.loads(render(frame, "json")) == [
        {"m": "fia", "val": None, "ce": [1, 2], "t": "2026-01-01T12:00:00"},
        {"m": "lcer", "val": 87.5, "ce": [3], "t": "2026-01-01T12:00:00"},
    ]
    csv = render(frame, "csv").splitlines()
    assert csv[0] == "m,val,ce,t"
    assert csv[1].startswith('fia,,"[1, 2]",2026-01-01')
    table = render(frame, "table")
    assert (
        "NULL" in table and "87.5" in table and "[1, 2]" in table and "2026-01-01 12:00:00" in table
    )


# ---------------------------------------------------------------------------------- migrations and bad files


def test_migrates_a_version_1_database_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    assert apply_migrations(con, upto=1) == 0
    con.execute(
        "INSERT INTO runs (run_id, dataset, method, k, status, finished_at) "
        "VALUES ('old', 'ml-100k', 'accent', 5, 'finished', TIMESTAMP '2025-01-01')"
    )
    con.execute(
        "INSERT INTO metrics (run_id, dataset, method, k, n_pairs, val_pct, len, ps_pct, pn_pct, "
        "fns_pct, evaluated_at) VALUES ('old', 'ml-100k', 'accent', 5, 500, 87.8, 3.431, 39.64, "
        "60.82, 47.99, TIMESTAMP '2025-01-01')"
    )
    assert current_version(con) == 1
    con.close()
    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.query("SELECT kind FROM runs")["kind"].to_list() == ["explain"]
        assert store.table2().select("method", "val_pct", "len").rows() == [("accent", 87.8, 3.431)]
        assert "rank_after" in store.query("SELECT * FROM explanations").columns
        versions = store.query("SELECT version FROM schema_version ORDER BY version")["version"]
        assert versions.to_list() == list(range(1, SCHEMA_VERSION + 1))


def test_migrates_a_version_0_file_with_foreign_tables(tmp_path: Path) -> None:
    path = tmp_path / "v0.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE notes (txt VARCHAR)")
    con.execute("INSERT INTO notes VALUES ('keep me')")
    con.close()
    with ResultStore(path) as store:
        write(store)
        assert store.query("SELECT txt FROM notes")["txt"].to_list() == ["keep me"]
        assert store.table2().height == 1


def test_a_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    with ResultStore(path) as store:
        write(store)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (99, 'from the future', now()::TIMESTAMP)")
    con.close()
    for attempt in (lambda s: s.query("SELECT 1"), lambda s: write(s)):
        with pytest.raises(StoreError, match="schema version 99, newer than this lcer understands"):
            attempt(ResultStore(path))
    con = duckdb.connect(str(path), read_only=True)
    assert con.sql("SELECT count(*) FROM runs").fetchall() == [(1,)]  # untouched
    con.close()


def test_unwritable_home_and_foreign_files_are_one_line_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(LcerHomeError, match="cannot create"):
        ResultStore(blocker / "lcer.duckdb").schema_version()
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(StoreError, match="cannot open the results database") as err:
        ResultStore(junk).query("SELECT 1")
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidParameterError):
        ResultStore(junk, lock_timeout=-1)


def test_report_of_a_dataset_without_results_is_missing_data(store: ResultStore) -> None:
    with store:
        write(store, dataset="ml-100k")
        with pytest.raises(MissingDataError, match="no finished runs for dataset 'ml-1m'"):
            table2_report(store, "ml-1m")
        report = table2_report(store, "ml-100k")
    assert report.height == 8  # our one LCER row joined into the paper's eight
    assert report.filter(pl.col("run_id").is_not_null())["method"].to_list() == ["lcer"]


def test_threads_of_one_process_write_in_turn(store: ResultStore) -> None:
    runs = [fake_run(method=m) for m in ("fia", "kaffes", "accent", "lcer")]
    errors: list[BaseException] = []

    def work(args: Any) -> None:
        try:
            ResultStore(store.path).write_run(*args)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["runs"] == 4 and store.table2().height == 4


def test_a_foreign_connection_in_this_process_is_reported(store: ResultStore) -> None:
    store.schema_version()
    con = duckdb.connect(str(store.path))  # read-write, outside the store
    try:
        with pytest.raises(StoreLockedError, match="held open by this process"):
            ResultStore(store.path, lock_timeout=0.2).query("SELECT 1")
    finally:
        con.close()
    assert ResultStore(store.path).query("SELECT 1 AS one")["one"].to_list() == [1]


def test_default_path_is_under_lcer_home(lcer_home: Path) -> None:
    with ResultStore() as store:
        assert store.path == lcer_home / "results" / "lcer.duckdb"
        assert store.path.is_file()


# ---------------------------------------------------------------------------------- CLI


def test_cli_sql_formats_and_errors(lcer_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultStore() as store:
        for method in ("fia", "lcer"):
            write(store, method=method)
    code, out, _ = run_cli(
        ["sql", "SELECT method, k, val_pct, len FROM table2", "--format", "json"], capsys
    )
    assert code == 0
    assert json.loads(out) == [
        {"method": "fia", "k": 5, "val_pct": None, "len": 1.5},
        {"method": "lcer", "k": 5, "val_pct": 100.0, "len": 1.5},
    ]
    code, out, _ = run_cli(["sql", "SELECT method, val_pct FROM table2", "--format", "csv"], capsys)
    assert code == 0 and out.splitlines() == ["method,val_pct", "fia,", "lcer,100.0"]
    code, out, _ = run_cli(["sql", "SELECT * FROM table2"], capsys)
    assert code == 0
    assert all(c in out for c in TABLE2_COLUMNS) and "lcer" in out and "NULL" in out
    code, out, err = run_cli(["sql", "SELECT nope FROM table2"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: SQL error:") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["sql", "SELECT 1", "--format", "xml"], capsys)
    assert code == 2


def test_cli_report_prints_table2_beside_the_paper(
    lcer_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["report", "ml-100k", "--no-train"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no finished runs for dataset 'ml-100k'" in err

    with ResultStore() as store:
        for k in (5, 10):
            for method in ("fia", "accent", "lcer"):
                write(store, method=method, k=k, metrics={"fns_pct": 12.34 + k})
        write(store, method="kaffes", metrics={"len": 1.52})
        write(
            store,
            method="lcer",
            lam=0.05,
            finished_at=T0 - timedelta(hours=1),
            metrics={"len": 1.54},
        )
    code, out, _ = run_cli(["report", "ml-100k", "--format", "json"], capsys)
    assert code == 0
    payload = json.loads(out)
    rows = {(r["k"], r["method"]): r for r in payload["table2"]}
    assert set(rows) == {(k, m) for k in (5, 10) for m in ("fia", "kaffes", "accent", "lcer")}
    paper = paper_table2("ml-100k")
    lcer5 = paper.filter((pl.col("method") == "lcer") & (pl.col("k") == 5)).row(0, named=True)
    assert rows[(5, "lcer")]["paper_fns_pct"] == lcer5["fns_pct"] == 58.34
    assert rows[(5, "lcer")]["fns_pct"] == 17.34
    assert rows[(10, "kaffes")]["fns_pct"] is None and rows[(10, "kaffes")]["paper_fns_pct"] == 46.2
    assert rows[(5, "fia")]["val_pct"] is None and rows[(5, "fia")]["paper_val_pct"] is None
    assert [(r["k"], r["baseline"]) for r in payload["table3"]] == [
        (5, "kaffes"),
        (5, "accent"),
        (10, "accent"),
    ]

    code, out, _ = run_cli(["report", "ml-100k"], capsys)
    assert code == 0
    assert "top-5" in out and "top-10" in out and "Table 3" in out
    assert "58.34" in out and "17.34" in out and "not run" in out
