"""``lcer report`` over seeds: mean ± std, per-seed rows, methods beyond the paper, λ vs the paper."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from dataset_fixtures import run_cli
from test_store import T0, write

from lcer_core.store import ResultStore, table2_report
from lcer_core.store.report import lam_report

COST = {"calls_per_pair": 3000.0, "s_per_pair": 0.05}


def _fill(store: ResultStore) -> None:
    for seed, fns in ((1, 60.0), (2, 62.0), (3, 64.0)):
        write(
            store, method="lcer", seed=seed, model_key=f"m{seed}", metrics={"fns_pct": fns, **COST}
        )
    for seed, fns in ((1, 80.0), (2, 82.0)):
        write(
            store, method="lcer-plus", alpha=0.1, lam=0.01, seed=seed, model_key=f"m{seed}",
            metrics={"fns_pct": fns, "calls_per_pair": 3040.0 + seed, "s_per_pair": 0.06},
        )  # fmt: skip
    write(store, method="kaffes-topk", seed=1, model_key="m1", metrics={"fns_pct": 66.0})
    # an older run of another configuration (other users) is not averaged in
    write(store, method="lcer", seed=4, n_users=9, finished_at=T0 - timedelta(hours=1))


def test_table2_report_averages_the_seeds_of_the_latest_configuration(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.duckdb") as store:
        _fill(store)
        rows = {(r["k"], r["method"]): r for r in table2_report(store, "ml-100k").to_dicts()}
    lcer = rows[(5, "lcer")]
    assert lcer["n_seeds"] == 3 and lcer["seeds"] == [1, 2, 3]
    assert lcer["fns_pct"] == pytest.approx(62.0) and lcer["fns_pct_std"] == pytest.approx(2.0)
    assert lcer["paper_fns_pct"] == 58.34 and lcer["calls_per_pair"] == 3000.0
    plus = rows[(5, "lcer-plus")]
    assert plus["fns_pct"] == pytest.approx(81.0) and plus["calls_per_pair"] == 3041.5
    assert plus["paper_fns_pct"] is None
    top = rows[(5, "kaffes-topk")]
    assert top["n_seeds"] == 1 and top["fns_pct_std"] is None and top["calls_per_pair"] is None


def test_cli_report_prints_mean_std_beyond_the_paper_and_per_seed(
    lcer_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ResultStore() as store:
        _fill(store)
    code, out, _ = run_cli(["report", "ml-100k", "--per-seed"], capsys)
    assert code == 0
    paper_part, beyond = out.split("Beyond the paper")
    assert "62.00 ± 2.00" in paper_part and "58.34" in paper_part
    assert "lcer-plus" not in paper_part and "81.00 ± 1.41" in beyond
    assert "3042 ± 1" in beyond and "Per seed" in beyond
    code, out, _ = run_cli(["report", "ml-100k", "--format", "json", "--per-seed"], capsys)
    payload = json.loads(out)
    assert sorted((r["method"], r["seed"]) for r in payload["per_seed"] if r["k"] == 5) == [
        ("kaffes-topk", 1),
        ("lcer", 1),
        ("lcer", 2),
        ("lcer", 3),
        ("lcer-plus", 1),
        ("lcer-plus", 2),
    ]
    assert payload["lcer_by_lam"] == []


def test_lam_report_says_which_lam_matches_the_paper(tmp_path: Path) -> None:
    # the paper's K = 10 row: Val 88.5, Len 3.361, PS 66.63, PN 51.89, F_NS 58.34
    near = {"val_pct": 89.0, "len": 3.4, "ps_pct": 66.0, "pn_pct": 52.0, "fns_pct": 58.5}
    far = {"val_pct": 100.0, "len": 6.0, "ps_pct": 55.0, "pn_pct": 66.0, "fns_pct": 60.0}
    with ResultStore(tmp_path / "r.duckdb") as store:
        for seed in (1, 2):
            for lam, metrics in ((0.01, far), (0.04, near), (0.05, far)):
                write(
                    store, method="lcer", k=10, lam=lam, seed=seed, model_key=f"m{seed}",
                    metrics=metrics, finished_at=T0 + timedelta(minutes=100 * lam),
                )  # fmt: skip
        frame = lam_report(store, "ml-100k")
    assert frame["lam"].to_list() == [0.01, 0.04, 0.05]
    assert frame.filter("closest")["lam"].to_list() == [0.04]
    assert frame["n_seeds"].to_list() == [2, 2, 2]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--seeds", "1,x"], "error: --seeds: 'x' is not a valid int"),
        (["--seeds", "1", "--seed", "3"], "error: --seed and --seeds cannot be combined"),
        (["--lam", "0.1,nan"], "error: --lam must be a finite number in [0, 1e6), got nan"),
    ],
)
def test_run_refuses_bad_seeds_and_lams_in_one_line(
    lcer_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    from lcer_core.cli import pipeline  # noqa: F401  (registers `run`)

    code, out, err = run_cli(["run", "ml-100k", *argv], capsys)
    assert code == 2 and err.strip().startswith(line) and len(err.strip().splitlines()) == 1
    assert not any(lcer_home.iterdir())  # refused before any work
