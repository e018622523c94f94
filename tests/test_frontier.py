"""Strict metrics over split seeds and budgets, and the F_NS/seconds frontier (report, HTML)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dataset_fixtures import run_cli
from test_report_html import STATS
from test_store import fake_run

from lcer_core.store import ResultStore
from lcer_core.store.frontier import frontier, frontier_rows, over_splits, strict_points


def _point(method: str, budget: dict, split: int | None, fns: float, seconds: float, k: int = 5):
    run, recs, expl, m = fake_run(method=method, k=k, n_users=4)
    suffix = json.dumps([budget, split], sort_keys=True)
    run["run_id"] = f"{run['run_id'][:8]}{abs(hash(suffix)) % 10**8:08d}"
    run["config"] = {"method": method, **budget}
    run["params"] = {} if split is None else {"split_seed": split}
    m |= {"s_per_pair": seconds, "strict_fns_pct": fns, "strict_ps_pct": fns, "strict_pn_pct": fns}
    return run, recs, expl, m, fns


def _store(home: Path) -> ResultStore:
    store = ResultStore(home / "results" / "lcer.duckdb")
    points = [
        _point("random-prefix", {"orders": 2}, 1, 50, 0.01),
        _point("random-prefix", {"orders": 2}, 2, 50, 0.01),
        _point("random-prefix", {"orders": 8}, 1, 58, 0.03),
        _point("random-prefix", {"orders": 8}, 2, 62, 0.05),
        _point("lcer", {"steps": 3000}, 1, 55, 0.30),
        _point("lcer", {"steps": 3000}, 2, 55, 0.30),
    ]
    items = pl.DataFrame({"sid": list(range(130)), "popularity": [1 + s % 9 for s in range(130)]})
    with store:
        store.upsert_dataset(STATS, items)
        for run, recs, expl, m, _ in points:
            store.write_run(run, recs, expl, m)
    return store


def test_points_average_over_split_seeds_and_mark_the_frontier(tmp_path: Path) -> None:
    store = _store(tmp_path)
    points = strict_points(store, "ml-100k")
    assert points.height == 6
    assert sorted(set(points["budget"].to_list())) == ["orders=2", "orders=8", "steps=3000"]
    summary = over_splits(points)
    assert summary["n_splits"].to_list() == [2, 2, 2]
    eight = summary.filter(pl.col("budget") == "orders=8").row(0, named=True)
    assert eight["s_per_pair"] == pytest.approx(0.04)
    assert eight["s_per_pair_sd"] == pytest.approx(0.0141421, rel=1e-4)
    assert eight["strict_fns_pct"] == 60 and eight["strict_fns_pct_sd"] == pytest.approx(
        2.8284, 1e-4
    )
    # LCER is dearer than random-prefix at 8 orders and scores lower: off the frontier
    marked = frontier(summary)
    assert marked.filter("on_frontier")["budget"].to_list() == ["orders=2", "orders=8"]


def test_a_dearer_point_with_a_better_f_ns_joins_the_frontier() -> None:
    summary = pl.DataFrame(
        {
            "k": [5, 5, 5, 10],
            "method": ["a", "b", "c", "a"],
            "budget": ["", "", "", ""],
            "strict_fns_pct": [50.0, 60.0, 55.0, 40.0],
            "s_per_pair": [0.01, 0.1, 1.0, 0.01],
        }
    )
    marked = frontier(summary)
    on = marked.filter("on_frontier").select("k", "method").rows()
    assert sorted(on) == [(5, "a"), (5, "b"), (10, "a")]


def test_report_and_html_show_the_frontier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LCER_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _store(home)
    code, out, err = run_cli(["report", "ml-100k", "--no-train"], capsys)
    assert code == 0, err
    assert "Strict comparison over split seeds and budgets" in out and "orders=8" in out
    code, out, err = run_cli(["report", "ml-100k", "--no-train", "-f", "json"], capsys)
    rows = json.loads(out)["frontier"]
    assert {r["budget"] for r in rows} == {"orders=2", "orders=8", "steps=3000"}
    assert len(frontier_rows(ResultStore(), "ml-100k").filter("on_frontier")) == 2
    page = tmp_path / "report.html"
    code, out, err = run_cli(["report", "ml-100k", "--no-train", "--html", str(page)], capsys)
    assert code == 0, err
    html = page.read_text()
    assert 'id="frontier-figure"' in html and 'id="frontier-k5"' in html
