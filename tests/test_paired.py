"""The paired comparison: strict metrics on common pairs, a bootstrap interval over users."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dataset_fixtures import run_cli
from test_store import fake_run

from lcer_core.errors import InvalidParameterError
from lcer_core.paired import paired_comparison


def _rows(found: list[bool], suff: list[bool], nec: list[bool], k: int = 2) -> pl.DataFrame:
    n = len(found)
    return pl.DataFrame(
        {
            "uid": [i // k for i in range(n)],
            "sid": [i % k for i in range(n)],
            "found": found,
            "sufficient": suff,
            "necessary": nec,
        }
    )


def test_a_pair_without_a_set_counts_as_a_failure() -> None:
    # A: 4 pairs, all found, 2 sufficient and 4 necessary; B: the same sets but 2 pairs unfound
    a = _rows([True] * 4, [True, False, True, False], [True] * 4)
    b = _rows([True, True, False, False], [True, False, False, False], [True, True, False, False])
    out = paired_comparison(a, b, resamples=200)
    assert (out.ps_a, out.pn_a) == (50.0, 100.0)
    assert (out.ps_b, out.pn_b) == (25.0, 50.0)  # over all 4 pairs, not the 2 found
    assert out.fns_a == pytest.approx(2 * 50 * 100 / 150)
    assert out.d_fns == pytest.approx(out.fns_a - out.fns_b)


def test_identical_runs_differ_by_zero_with_a_zero_interval() -> None:
    rows = _rows([True, False, True, True] * 5, [True, False, False, True] * 5, [True] * 20)
    out = paired_comparison(rows, rows, resamples=300)
    assert out.d_fns == 0 and out.d_fns_ci == (0.0, 0.0) and out.users == 10


def test_the_interval_covers_the_difference_and_is_seeded() -> None:
    a = _rows([True] * 40, [i % 3 != 0 for i in range(40)], [i % 2 == 0 for i in range(40)])
    b = _rows([True] * 40, [i % 4 != 0 for i in range(40)], [i % 5 != 0 for i in range(40)])
    one = paired_comparison(a, b, resamples=500, seed=1)
    assert one.d_fns_ci[0] <= one.d_fns <= one.d_fns_ci[1]
    assert one.d_fns_ci[0] < one.d_fns_ci[1]
    assert paired_comparison(a, b, resamples=500, seed=1) == one


def test_runs_on_other_pairs_are_refused_in_one_line() -> None:
    a = _rows([True] * 4, [True] * 4, [True] * 4)
    with pytest.raises(InvalidParameterError, match="do not explain the same pairs"):
        paired_comparison(a, a.head(3))
    with pytest.raises(InvalidParameterError, match="resamples"):
        paired_comparison(a, a, resamples=0)


def test_report_compare_prints_the_paired_table_and_refuses_bad_input(
    lcer_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lcer_core.store import ResultStore

    with ResultStore() as store:
        for method in ("kaffes", "accent"):
            for k in (5, 10):
                run, recs, expl, m = fake_run(method=method, k=k, n_users=6)
                if method == "accent":  # a pair without a set: strict PS/PN drop
                    unfound = pl.col("rank") == 1
                    expl = expl.with_columns(
                        ce_items=pl.when(unfound)
                        .then(pl.lit([], pl.List(pl.Int64)))
                        .otherwise("ce_items"),
                        ce_raw=pl.when(unfound)
                        .then(pl.lit([], pl.List(pl.String)))
                        .otherwise("ce_raw"),
                        ce_importance=pl.when(unfound)
                        .then(pl.lit([], pl.List(pl.Float64)))
                        .otherwise("ce_importance"),
                    )
                store.write_run(run, recs, expl, m)
    code, out, err = run_cli(
        ["report", "ml-100k", "--no-train", "--compare", "kaffes,accent", "-f", "json"], capsys
    )
    assert code == 0, err
    paired = json.loads(out)["paired"]
    assert [r["k"] for r in paired] == [5, 10]
    assert all(r["pairs"] == 6 * r["k"] and r["users"] == 6 for r in paired)
    assert all(r["d_pn"] > 0 and r["d_fns_ci"][0] <= r["d_fns"] <= r["d_fns_ci"][1] for r in paired)
    code, out, err = run_cli(
        ["report", "ml-100k", "--no-train", "--compare", "kaffes,accent"], capsys
    )
    assert code == 0 and "Paired comparison" in out and "kaffes − accent" in out
    for bad, line in (("kaffes", "--compare takes two"), ("kaffes,nope", "unknown method")):
        code, out, err = run_cli(["report", "ml-100k", "--compare", bad], capsys)
        assert code == 2 and line in err and len(err.strip().splitlines()) == 1
