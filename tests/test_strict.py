"""The strict comparison (issue 24): metrics over all pairs, cost counted the same way for every
method at the recommender seam, and what each method selects on; through the store, SQL,
``lcer report`` and its HTML page."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest
from dataset_fixtures import run_cli
from test_report_html import STATS
from test_store import fake_run

from lcer_core.explainers import METHODS
from lcer_core.explainers.fia import FIA
from lcer_core.explainers.kaffes import KaffesCE, KaffesConfig
from lcer_core.explainers.lcer import LCER, LCERConfig
from lcer_core.explainers.lcer_plus import LCERPlus, LCERPlusConfig
from lcer_core.frames import summarize_frame
from lcer_core.recommender.counting import CountingRecommender
from lcer_core.report_html import build_report
from lcer_core.store import ResultStore
from lcer_core.store.views import STRICT_COLUMNS
from lcer_core.testing import ContractError
from lcer_core.testing.explainer import check_selects_on
from lcer_core.testing.recommenders import small_case

# ------------------------------------------------------------------------- selects on


def test_each_method_declares_what_it_selects_on() -> None:
    declared = {name: set(cls.selects_on) for name, cls in METHODS.items()}
    assert declared["lcer"] == set()  # its own threshold on the factual (K+1)-th score
    assert declared["fia"] == declared["accent"] == declared["kaffes"] == set()
    assert declared["kaffes-topk"] == {"topk"}
    assert declared["lcer-plus"] == {"topk", "sufficiency"}
    for cls in METHODS.values():
        check_selects_on(cls)
    # the configuration at hand decides where an option switches a test on or off
    assert KaffesCE(KaffesConfig(criterion="topk")).selects() == {"topk"}
    plain = LCERPlusConfig(select="threshold", sufficiency=0.0)
    assert LCERPlus(plain).selects() == frozenset()
    assert LCERPlus(replace(plain, sufficiency=1.0)).selects() == {"sufficiency"}


@pytest.mark.parametrize(
    ("selects_on", "message"),
    [
        (frozenset({"topk", "oracle"}), "unknown test"),
        ({"topk"}, "must be a frozenset"),
    ],
)
def test_the_contract_refuses_a_bad_selects_on(selects_on: Any, message: str) -> None:
    class Liar(FIA):
        name: ClassVar[str] = "liar"

    Liar.selects_on = selects_on  # type: ignore[misc]
    with pytest.raises(ContractError, match=message):
        check_selects_on(Liar)


def test_the_contract_refuses_a_declaration_its_default_config_contradicts() -> None:
    class Hider(KaffesCE):
        name: ClassVar[str] = "hider"
        selects_on: ClassVar[frozenset[str]] = frozenset({"topk"})  # but "threshold" by default

    with pytest.raises(ContractError, match=r"selects\(\) is \[\] with the default config"):
        check_selects_on(Hider)


# ------------------------------------------------------------------------------- cost


def test_cost_units_lcer_counts_steps_kaffes_counts_catalogue_rows() -> None:
    rec, pairs = small_case(n_items=30, n_users=8, k=3)
    n, steps = len(pairs), 40
    lcer = CountingRecommender(rec)
    LCER(LCERConfig(steps=steps)).explain(lcer, pairs, seed=0)
    # one gradient step and one target-only scoring per pair and step; no catalogue row
    assert lcer.grad_rows == n * steps and lcer.target_scores == n * steps
    assert lcer.catalogue_rows == 0
    early = CountingRecommender(rec)
    LCER(LCERConfig(steps=steps, patience=10)).explain(early, pairs, seed=0)
    assert early.grad_rows <= n * steps and early.grad_rows == early.target_scores
    kaffes = CountingRecommender(rec)
    KaffesCE().explain(kaffes, pairs, seed=0)
    # a search re-scores the whole catalogue for each candidate set; no gradient
    assert kaffes.catalogue_rows >= n and kaffes.grad_rows == 0
    assert kaffes.catalogue_rows == kaffes.rows  # every input it scored was a whole row
    assert lcer.rows == n * steps  # the older count (inputs scored) is unchanged


def test_the_same_answers_with_the_counting_seam() -> None:
    rec, pairs = small_case()
    for explainer in (LCER(LCERConfig(steps=30)), KaffesCE()):
        bare = explainer.explain(rec, pairs, seed=1)
        counted = explainer.explain(CountingRecommender(rec), pairs, seed=1)
        assert bare.removed.equal(counted.removed)


# ------------------------------------------------------------- through the store and report


def _run(method: str, found: list[bool], cost: dict[str, float] | None) -> tuple[Any, ...]:
    """A stored run of ``method`` whose metrics come from its explanation rows (summarize_frame):
    ``found[i]`` False is a pair without a set."""
    run, recs, expl, _ = fake_run(method=method)
    n = expl.height
    found = (found * n)[:n]
    expl = expl.with_columns(
        ce_items=pl.Series(
            [c if f else [] for c, f in zip(expl["ce_items"].to_list(), found, strict=True)]
        ),
        found=pl.Series(found),
        length=pl.Series(
            [len(c) if f else 0 for c, f in zip(expl["ce_items"].to_list(), found, strict=True)]
        ),
        sufficient=pl.Series(found),
        necessary=pl.Series(found),
    )
    frame = expl.with_columns(
        **{col: pl.lit(v) for col, v in (cost or {}).items()}, threads=pl.lit(2, dtype=pl.Int32)
    )
    metrics = summarize_frame(frame, reports_validity=True)
    expl = expl.drop("found", "length").with_columns(
        ce_raw=pl.Series([[f"i{c}" for c in cs] for cs in expl["ce_items"].to_list()]),
        ce_importance=pl.Series([[0.5] * len(cs) for cs in expl["ce_items"].to_list()]),
    )
    return run, recs, expl, metrics


def test_strict_rows_in_sql_and_in_the_report(
    lcer_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lcer_cost = {"forward_calls": 300.0, "explain_s": 0.01, "catalogue_calls": 0.0,
                 "target_calls": 300.0, "grad_steps": 300.0}  # fmt: skip
    kaffes_cost = {"forward_calls": 40.0, "explain_s": 0.02, "catalogue_calls": 40.0,
                   "target_calls": 0.0, "grad_steps": 0.0}  # fmt: skip
    items = pl.DataFrame({"sid": list(range(130)), "popularity": [1 + s % 9 for s in range(130)]})
    with ResultStore() as store:
        store.upsert_dataset(STATS, items)
        # lcer: a set for every pair; kaffes-topk: one pair in three without a set; lcer-plus:
        # stored without cost (as a run from before the cost was counted)
        store.write_run(*_run("lcer", [True], lcer_cost))
        store.write_run(*_run("kaffes-topk", [True, True, False], kaffes_cost))
        store.write_run(*_run("lcer-plus", [True], None))
        strict = store.query("SELECT * FROM strict ORDER BY method")
        assert tuple(strict.columns) == STRICT_COLUMNS
        rows = {r["method"]: r for r in strict.iter_rows(named=True)}
        assert rows["lcer-plus"]["selects_on"] == ["sufficiency", "topk"]
        assert rows["kaffes-topk"]["selects_on"] == ["topk"]
        assert rows["lcer"]["selects_on"] == []
        chosen = store.query(
            "SELECT method FROM strict WHERE list_contains(selects_on, 'topk') ORDER BY method"
        )["method"].to_list()
        assert chosen == ["kaffes-topk", "lcer-plus"]
        # a pair without a set lowers the strict metrics, not the paper's
        t2 = {r["method"]: r for r in store.table2().iter_rows(named=True)}
        k = rows["kaffes-topk"]
        assert t2["kaffes-topk"]["ps_pct"] == t2["kaffes-topk"]["pn_pct"] == 100.0
        assert k["strict_ps_pct"] == pytest.approx(100 * 10 / 15)
        assert k["strict_pn_pct"] == k["strict_val_pct"] == pytest.approx(100 * 10 / 15)
        assert rows["lcer"]["strict_fns_pct"] == t2["lcer"]["fns_pct"] == 100.0
        # the cost, in its own units; none for the run stored without it
        assert rows["lcer"]["grad_steps_per_pair"] == 300.0
        assert rows["lcer"]["catalogue_per_pair"] == 0.0
        assert k["catalogue_per_pair"] == 40.0 and k["grad_steps_per_pair"] == 0.0
        assert rows["lcer"]["threads"] == 2
        assert rows["lcer-plus"]["catalogue_per_pair"] is None
        page = build_report("ml-100k", store)

    code, out, err = run_cli(["report", "ml-100k", "--no-train"], capsys)
    assert code == 0, err
    table2_at = out.index("Table 2")
    strict_at = out.index("strict metrics over all pairs")
    assert strict_at > table2_at  # printed apart, after the paper's tables
    lines = {ln.split("│")[1].strip(): ln for ln in out[strict_at:].splitlines() if "│" in ln}
    assert "sufficiency+topk" in lines["lcer-plus"] and "topk" in lines["kaffes-topk"]
    assert "none" in lines["lcer"]
    assert "not measured" in lines["lcer-plus"] and "not measured" not in lines["lcer"]
    assert "66.67" in lines["kaffes-topk"]
    assert "whole-catalogue scorings/pair" in out[strict_at:]
    # the HTML page shows the same table
    assert "strict metrics over all pairs" in page["strict_title"]
    html = {row[0]: row for row in page["strict"]}
    assert html["lcer-plus"][-1] == "sufficiency+topk" and html["lcer"][-1] == "none"
