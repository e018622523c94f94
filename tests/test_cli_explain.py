"""`lcer explain`: bad input refused in one line; one user's explanation in words and as data."""

from __future__ import annotations

import json

import pytest
import torch
from dataset_fixtures import run_cli

from lcer_core import models
from lcer_core.datasets import load_prepared


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["explain", "ml-100k", "--alpha", "-1"], "--alpha"),
        (["explain", "ml-100k", "--lam", "-0.5"], "--lam"),
        (["explain", "ml-100k", "--k", "0"], "--k"),
        (["explain", "ml-100k", "--k", "5000"], "k=5000"),
        (["explain", "ml-100k", "--steps", "0"], "--steps"),
        (["explain", "ml-100k", "--users", "0"], "--users"),
        (["explain", "ml-100k", "--method", "magic"], "unknown method"),
        (["explain", "ml-100k", "--user", "no-such-user"], "no-such-user"),
        (["explain", "no-such-data"], "no-such-data"),
    ],
)
def test_bad_input_is_one_line_and_status_2(in_trained_home, capsys, args, needle):
    code, out, err = run_cli(args + ["--steps", "5"] if "--steps" not in args else args, capsys)
    assert code == 2, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_one_user_in_words_and_json_match_the_recommender(in_trained_home, capsys):
    data = load_prepared("ml-100k")
    raw_user = data.users.filter(data.users["split"] == "test")["raw_id"][0]
    code, out, err = run_cli(
        ["explain", "ml-100k", "--user", raw_user, "--k", "5", "--steps", "300", "--json"], capsys
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["user"] == raw_user and len(res["recommendations"]) == 5
    model = models.load_model("ml-100k")
    rec = model.recommender("cpu")
    uid = data.uid_of(raw_user)
    history = data.history(uid)
    found_any = False
    for r in res["recommendations"]:
        assert r["title"] and r["rank_before"] == r["rank"]
        if not r["found"]:
            continue
        found_any = True
        ce = {c["sid"] for c in r["ce"]}
        assert ce <= set(history) and all(0.0 <= c["importance"] <= 1.0 for c in r["ce"])
        # Recompute the rank after removal with the recommender itself.
        kept = [i for i in history if i not in ce]
        x = torch.zeros(1, data.n_items)
        x[0, kept] = 1.0
        scores = rec.scores(x)[0].masked_fill(x[0] > 0, float("-inf"))
        rank = int((scores > scores[r["sid"]]).sum()) + 1
        assert rank == r["rank_after"]
    assert found_any
    code, text, err = run_cli(
        ["explain", "ml-100k", "--user", raw_user, "--k", "5", "--steps", "300"], capsys
    )
    assert code == 0, err
    first = next(r for r in res["recommendations"] if r["found"] and r["necessary"])
    assert (
        f"would not be recommended to you (it would fall from rank {first['rank']} to rank {first['rank_after']})"
        in text
    )
    assert first["title"] in text


@pytest.mark.slow
def test_explain_in_an_empty_home_prepares_trains_and_ends_with_the_explanation(
    lcer_home, http_mirror, monkeypatch, capsys
):
    """`lcer explain ml-100k --user 196` on a fresh LCER_HOME: one line says what it does first,
    the last lines are the explanation; --no-train then finds the model and says nothing more."""
    monkeypatch.setenv("LCER_MIRROR", http_mirror)
    argv = ["explain", "ml-100k", "--user", "196", "--epochs", "3", "--steps", "200"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert err.splitlines() == [
        "no trained model for ml-100k yet: preparing the data and training Mult-VAE (3 epochs) first"
    ]
    lines = out.splitlines()
    assert lines[0] == "User 196 of ml-100k, top-5 by Mult-VAE, explained by lcer:"
    assert len(lines) == 6
    assert all(
        line.startswith(("  If you had not watched ", "  Without ", "  No counterfactual"))
        for line in lines[1:]
    ), out
    assert models.find_model("ml-100k") is not None
    code, again, err = run_cli([*argv, "--no-train"], capsys)
    assert code == 0 and err == "" and again == out
