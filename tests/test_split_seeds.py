"""Split seeds: other assignments of users to train/validation/test beside the default split,
keyed apart only when non-default (the default split, its data and its keys are unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dataset_fixtures import run_cli

from lcer_core.datasets import load_prepared, prepare_dataset
from lcer_core.keys import run_key
from lcer_core.models import model_key
from lcer_core.pairs import PAIRS_VERSION
from lcer_core.recommender.multvae import MultVAEConfig
from lcer_core.runs import RunSpec, run_spec
from lcer_core.store import ResultStore

#: The content hash of ML 100K's default preparation before split seeds existed.
DEFAULT_FINGERPRINT = "fd3adf11bb9dde1c961acfb800d32d31b1bb77ccfd68c284f7a7a1afb30d22a5"


def _test_users(data) -> set[str]:
    return set(data.users.filter(pl.col("split") == "test")["raw_id"].to_list())


def test_split_seeds_assign_other_users_and_leave_the_default_split_alone(
    lcer_home: Path, http_mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LCER_MIRROR", http_mirror)
    default = load_prepared(prepare_dataset("ml-100k").name)
    assert default.fingerprint == DEFAULT_FINGERPRINT and default.split_seed is None
    pointer = (lcer_home / "data" / "ml-100k" / "current").read_text()

    splits = {s: prepare_dataset("ml-100k", split_seed=s) for s in (1, 2)}
    assert {s: r.path for s, r in splits.items()} == {
        s: lcer_home / "data" / "ml-100k" / f"split-{s}" for s in (1, 2)
    }
    data = {s: load_prepared("ml-100k", s) for s in (1, 2)}
    users = _test_users(default)
    for s, d in data.items():
        assert d.split_seed == s and d.meta["seed"] == s
        assert d.stats["test_users"] == default.stats["test_users"] == len(_test_users(d))
        assert set(d.users["raw_id"].to_list()) == set(default.users["raw_id"].to_list())
        assert len(_test_users(d) & users) < len(users) // 2  # another assignment
    assert len(_test_users(data[1]) & _test_users(data[2])) < len(users) // 2

    # idempotent and deterministic; the default preparation was not touched
    again = prepare_dataset("ml-100k", split_seed=1)
    assert not again.did_work and load_prepared("ml-100k", 1).fingerprint == data[1].fingerprint
    assert (lcer_home / "data" / "ml-100k" / "current").read_text() == pointer
    assert load_prepared("ml-100k").fingerprint == DEFAULT_FINGERPRINT

    # the model key names the split seed only when it is not the default
    cfg = MultVAEConfig()
    from lcer_core.keys import content_key

    assert model_key(default, cfg, 1) == content_key(
        {"data": default.fingerprint, "config": cfg.dump(), "seed": 1}
    )
    assert len({model_key(d, cfg, 1) for d in (default, *data.values())}) == 3


def test_the_run_key_names_a_split_seed_only_when_it_is_not_the_default() -> None:
    common = {"dataset": "ml-100k", "method": "kaffes", "k": 5, "seed": 0, "n_users": 3}
    plain = run_spec(**common, model_key="m")
    legacy = run_key(
        **{k: v for k, v in common.items() if k != "n_users"},
        alpha=None, lam=None, steps=None, model_version="m", n_users=3,
        pairs_version=PAIRS_VERSION,
    )  # fmt: skip
    assert plain.run_id == legacy and plain.split_seed is None
    assert "split_seed" not in plain.to_payload() and plain.params() == {}
    split = {s: run_spec(**common, model_key="m", split_seed=s) for s in (1, 2)}
    assert len({plain.run_id, *(s.run_id for s in split.values())}) == 3
    again = RunSpec.from_payload(split[2].to_payload())
    assert again == split[2] and again.params() == {"split_seed": 2}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prepare", "ml-100k", "--split-seed", "-1"], "--split-seed must be an integer in"),
        (["prepare", "ml-100k", "--split-seed", str(2**31)], "--split-seed must be an integer in"),
        (["prepare", "ml-100k", "--split-seed", "1", "--seed", "2"], "cannot be combined"),
        (["run", "ml-100k", "--split-seeds", "1,-1"], "--split-seeds must be an integer in"),
        (["run", "ml-100k", "--split-seeds", str(2**31)], "--split-seeds must be an integer in"),
    ],
)
def test_a_split_seed_out_of_range_is_one_line(
    argv: list[str], message: str, lcer_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (lcer_home / "data").exists()


def test_lcer_run_stores_runs_per_split_seed_with_distinct_keys(
    lcer_home: Path,
    http_mirror: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.setenv("LCER_MIRROR", http_mirror)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LCER_TASK_RUNNER", raising=False)
    for name, value in {  # what the command line sets, restored after the test
        "PREFECT_HOME": str(lcer_home / "prefect-home"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }.items():
        monkeypatch.setenv(name, value)
    argv = ["run", "ml-100k", "--methods", "random-prefix", "--k", "5", "--users", "2"]
    argv += ["--epochs", "1", "--split-seeds", "1,2"]
    with prefect_test_harness(server_startup_timeout=90):
        code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    store = ResultStore()
    runs = store.query(
        "SELECT run_id, model_key, params_json FROM runs WHERE method = 'random-prefix'"
    )
    split_seeds = sorted(json.loads(p).get("split_seed") for p in runs["params_json"])
    assert split_seeds == [1, 2]
    assert runs["run_id"].n_unique() == 2 and runs["model_key"].n_unique() == 2
    assert load_prepared("ml-100k").fingerprint == DEFAULT_FINGERPRINT
