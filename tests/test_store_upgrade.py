"""Schema v6: each run's whole explainer configuration and whether it reports validity, in `runs`;
stores written by schema v5 stay readable, are filled in, and are not duplicated by a re-run."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from store_v5 import create_v5, write_v5_run
from test_store import T0, fake_run, write

from lcer_core.errors import InvalidParameterError
from lcer_core.paper import SUBJECT_METHOD, TABLE_ORDER, paper_table2
from lcer_core.store import SCHEMA_VERSION, ResultStore, current_version
from lcer_core.store.views import METHOD_ORDER

# What schema v5's lcer kept in params_json["explainer"] (Explainer.dump_config()).
V5_CONFIGS: dict[str, dict[str, Any]] = {
    "lcer": {
        "alpha": 0.1,
        "lam": 0.01,
        "lr": 0.001,
        "max_pairs": 8192,
        "method": "lcer",
        "min_delta": 0.0,
        "patience": 0,
        "steps": 100,
        "temperature": 1.0,
    },
    "fia": {"chunk_mb": 64.0, "method": "fia"},
    "accent": {"chunk_mb": 64.0, "criterion": "gap", "method": "accent", "stop": "requery"},
    "kaffes": {
        "beam": 5,
        "chunk_mb": 64.0,
        "criterion": "threshold",
        "max_length": None,
        "max_queries": 1000,
        "method": "kaffes",
    },
}
# Every view a reader sees, in a stable row order.
VIEW_QUERIES = {
    "table2": "SELECT * FROM table2",
    "table3": "SELECT * FROM table3",
    "run_results": "SELECT * FROM run_results ORDER BY run_id",
    "seed_results": "SELECT * FROM seed_results ORDER BY run_id",
    "item_explanations": "SELECT * FROM item_explanations ORDER BY run_id, sid",
}


def _v5_runs() -> list[tuple[dict[str, Any], pl.DataFrame, pl.DataFrame, dict[str, Any]]]:
    """Runs of every paper method (two LCER grid points), and one of a method this lcer does not
    know (a plugin's, say) that has no stored configuration."""
    specs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("lcer", {"lam": 0.01}, {"len": 1.5, "fns_pct": 68.57}),
        ("lcer", {"lam": 0.02}, {"len": 2.0, "fns_pct": 70.0}),
        ("fia", {}, {"len": 1.0, "val_pct": 100.0}),
        ("accent", {}, {"len": 1.98, "fns_pct": 50.0}),
        ("kaffes", {}, {"len": 1.52, "fns_pct": 47.0}),
        ("mystery", {}, {"len": 1.49, "val_pct": 90.0, "fns_pct": 45.0}),
    ]
    out = []
    for i, (method, grid, metrics) in enumerate(specs):
        run, recs, expl, m = fake_run(
            method=method, finished_at=T0 + timedelta(minutes=i), metrics=metrics, **grid
        )
        if method in V5_CONFIGS:
            run["params"] = {**run["params"], "explainer": {**V5_CONFIGS[method], **grid}}
        out.append((run, recs, expl, m))
    return out


def _views(con: Any) -> dict[str, pl.DataFrame]:
    return {name: con.sql(sql).pl() for name, sql in VIEW_QUERIES.items()}


def test_a_v5_store_is_migrated_filled_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "v5.duckdb"
    runs = _v5_runs()
    con = duckdb.connect(str(path))
    create_v5(con)
    for run in runs:
        write_v5_run(con, *run)
    before = _views(con)
    assert current_version(con) == 5
    con.close()
    assert before["table2"].height == 5 and before["table3"].height == 3  # the data is meaningful

    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 8
        stored = {r["run_id"]: r for r in store.query("SELECT * FROM runs").iter_rows(named=True)}
        for run, *_ in runs:
            row = stored[run["run_id"]]
            want = run["params"].get("explainer")
            assert (json.loads(row["config"]) if row["config"] else None) == want
            validity = {"fia": False, "mystery": None}.get(run["method"], True)
            assert row["reports_validity"] is validity, run["method"]
            assert json.loads(row["params_json"]) == run["params"]  # kept as it was
            assert row["plugins"] is None  # stored before v7: not known
            # v8: what the method selects on, from the registry (NULL for an unknown method)
            assert row["selects_on"] == (None if run["method"] == "mystery" else []), run
        # v8: the strict metrics of the stored explanations, over all pairs; no cost measured
        strict = store.query(
            "SELECT s.run_id, s.strict_pn_pct, s.strict_val_pct, s.strict_ps_pct, "
            "s.catalogue_per_pair, 100.0 * avg((e.found AND e.necessary)::INT) AS pn, "
            "100.0 * avg((e.found AND e.sufficient)::INT) AS ps "
            "FROM strict s JOIN explanations e USING (run_id) GROUP BY ALL"
        )
        assert strict.height == len(runs)
        for row in strict.iter_rows(named=True):
            assert row["strict_pn_pct"] == pytest.approx(row["pn"])
            assert row["strict_val_pct"] == row["strict_pn_pct"]
            assert row["strict_ps_pct"] == pytest.approx(row["ps"])
            assert row["catalogue_per_pair"] is None  # not measured before v8
        after = {name: store.query(sql) for name, sql in VIEW_QUERIES.items()}
        for name in VIEW_QUERIES:
            # v8 adds columns to run_results and seed_results (strict metrics, cost, selects_on)
            added = set(after[name].columns) - set(before[name].columns)
            assert not added or name in ("run_results", "seed_results"), (name, added)
            old = after[name].select(before[name].columns)
            assert old.equals(before[name]), name
            assert old.schema == before[name].schema, name
        fia = store.table2().filter(pl.col("method") == "fia").row(0, named=True)
        assert fia["val_pct"] is None
        mystery = store.table2().filter(pl.col("method") == "mystery").row(0, named=True)
        assert mystery["val_pct"] == 90.0  # an unknown method's validity shows, as before
        assert set(store.table3()["baseline"]) == {"accent", "kaffes", "mystery"}
        counts = store.counts()

        # The same run, written again by this lcer (the run row as RunSpec.as_row() gives it),
        # replaces its rows: nothing is duplicated, and the migrated config is the same config.
        lcer, recs, expl, metrics = runs[0]
        config = lcer["params"]["explainer"]
        params = {k: v for k, v in lcer["params"].items() if k != "explainer"}
        new = {**lcer, "params": params, "config": config, "reports_validity": True}
        store.write_run(new, recs, expl, metrics)
        assert store.counts() == counts
        row = store.run(lcer["run_id"])
        assert row is not None and json.loads(row["config"]) == config
        for name, sql in VIEW_QUERIES.items():
            assert store.query(sql).select(before[name].columns).equals(before[name]), name
        # ... and so does a run row in version 5's shape (the config only in params).
        store.write_run(lcer, recs, expl, metrics)
        assert store.counts() == counts
        row = store.run(lcer["run_id"])
        assert row is not None and json.loads(row["config"]) == config
        assert row["reports_validity"] is True


def test_config_and_reports_validity_are_stored_from_the_run_row(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.duckdb") as store:
        run, recs, expl, metrics = fake_run(method="kaffes")
        config = {"method": "kaffes", "beam": 3, "max_length": None, "chunk_mb": 64.0}
        store.begin_run({**run, "config": config, "reports_validity": True})
        begun = store.run(run["run_id"])
        assert begun is not None and begun["status"] == "running"
        assert json.loads(begun["config"]) == config and begun["reports_validity"] is True
        assert "config" not in json.loads(begun["params_json"])
        # a finishing write that does not repeat them keeps them (the run key determines both)
        store.write_run(run, recs, expl, metrics)
        done = store.run(run["run_id"])
        assert done is not None and json.loads(done["config"]) == config
        assert done["reports_validity"] is True
        assert store.query("SELECT config->>'beam' AS beam FROM runs")["beam"].to_list() == ["3"]
        # without either: the config from params["explainer"], validity from the registry
        fia = write(store, method="fia")
        row = store.run(fia["run_id"])
        assert row is not None and row["config"] is None and row["reports_validity"] is False
        run, recs, expl, metrics = fake_run(method="accent")
        config = {"method": "accent", "stop": "requery"}
        run.update(config=None, params={"explainer": config})
        store.write_run(run, recs, expl, metrics)
        row = store.run(run["run_id"])
        assert row is not None and json.loads(row["config"]) == config
        assert row["reports_validity"] is True


def test_views_follow_reports_validity_not_the_method_name(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.duckdb") as store:
        for method, validity in (("fia", True), ("kaffes", False), ("accent", None)):
            run, recs, expl, metrics = fake_run(method=method, metrics={"val_pct": 80.0})
            if validity is not None:
                run["reports_validity"] = validity
            store.write_run(run, recs, expl, metrics)
        write(store, method=SUBJECT_METHOD, metrics={"len": 1.5})
        t2 = {r["method"]: r["val_pct"] for r in store.table2().iter_rows(named=True)}
        assert t2 == {"fia": 80.0, "kaffes": None, "accent": 80.0, SUBJECT_METHOD: 100.0}
        # Table 3's baselines: methods that report validity, the subject excepted
        assert sorted(store.table3()["baseline"]) == ["accent", "fia"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"config": "lr=0.1"}, "run config must be a mapping of the explainer's fields, not str"),
        ({"config": {"method": "fia"}}, "run config is of method 'fia', not 'lcer'"),
        ({"config": {"lr": float("nan")}}, "run config cannot be stored as JSON"),
        ({"reports_validity": "yes"}, "run reports_validity must be true or false, got 'yes'"),
    ],
)
def test_malformed_config_is_refused_and_nothing_is_written(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    with ResultStore(tmp_path / "r.duckdb") as store:
        run, recs, expl, metrics = fake_run()
        with pytest.raises(InvalidParameterError, match="^" + message.replace("(", r"\(")):
            store.write_run({**run, **extra}, recs, expl, metrics)
        assert store.counts()["runs"] == 0


def test_paper_facts_give_the_row_order_and_the_subject() -> None:
    assert METHOD_ORDER == TABLE_ORDER == ("fia", "kaffes", "accent", "lcer")
    assert SUBJECT_METHOD in TABLE_ORDER
    k5 = paper_table2("ml-100k").filter(pl.col("k") == 5)["method"].to_list()
    assert tuple(k5) == TABLE_ORDER


def test_the_core_reads_shard_columns_without_duckdb() -> None:
    """Shards (the science core) need the frame columns, not the store: no DuckDB imported."""
    code = (
        "import sys; sys.modules['duckdb'] = None\n"
        "import lcer_core.shards, lcer_core.paper\n"
        "from lcer_core.columns import EXPLANATION_COLUMNS\n"
        "assert not [m for m in sys.modules if m.startswith('lcer_core.store')]\n"
        "print(len(EXPLANATION_COLUMNS))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "13"


def test_best_baseline_of_the_sweep_figures_is_the_best_method_but_the_subject(
    lcer_home: Path,
) -> None:
    from tasks.tracking import _best_baseline

    with ResultStore() as store:
        write(store, method=SUBJECT_METHOD, metrics={"fns_pct": 90.0})
        write(store, method="accent", metrics={"fns_pct": 50.0, "len": 3.0})
        write(store, method="fia", metrics={"fns_pct": 60.0, "len": 1.0})
    best = _best_baseline("ml-100k", 5, SUBJECT_METHOD)
    assert best == {"val_pct": None, "len": 1.0, "ps_pct": 60.0, "pn_pct": 80.0, "fns_pct": 60.0}
    assert _best_baseline("ml-100k", 10, SUBJECT_METHOD) is None
