"""`lcer bench --json`: the contract's fields, and the two modes giving the same explanations."""

from __future__ import annotations

import json

from dataset_fixtures import run_cli


def test_bench_json_fields_and_agreement(in_trained_home, capsys):
    code, out, err = run_cli(
        [
            "bench",
            "--json",
            "--steps",
            "40",
            "--users",
            "4",
            "--sample",
            "3",
            "--patience",
            "10",
            "--min-delta",
            "0.005",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    for key in (
        "sequential_s_per_pair",
        "batched_s_per_pair",
        "speedup",
        "pairs",
        "steps",
        "device",
        "peak_rss_mb",
    ):
        assert key in res, key
    assert res["pairs"] == 20 and res["steps"] == 40 and res["device"] == "cpu"
    assert (
        res["sequential_s_per_pair"] > 0
        and res["batched_s_per_pair"] > 0
        and res["peak_rss_mb"] > 0
    )
    # Same noise, same optimiser: the sequential loop and the engine find the same sets.
    assert res["same_sets_on_sample_pct"] == 100.0
    assert res["metrics_sequential"] == res["metrics_batched_on_sample"]
    assert set(res["metrics_early_stop"]) == set(res["metrics_batched"])
    assert 0 < res["early_stop_pair_steps_pct"] <= 100
    assert (res["patience"], res["min_delta"]) == (10, 0.005)


def test_bench_on_a_synthetic_catalogue(in_trained_home, capsys):
    code, out, err = run_cli(
        [
            "bench",
            "--json",
            "--steps",
            "10",
            "--users",
            "3",
            "--sample",
            "1",
            "--synthetic-items",
            "3000",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["n_items"] == 3000 and res["source"] == "synthetic-3000"
