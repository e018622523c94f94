"""The amortised explainer: trained on training users only, deterministic, saved as weights only,
bound by the command line (trained on first use, refused with --no-train)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from dataset_fixtures import run_cli

from lcer_core import amortised_store as store
from lcer_core.datasets import PreparedDataset, ensure_prepared, load_prepared
from lcer_core.errors import DamagedDataError, InvalidParameterError, MissingDataError
from lcer_core.explainers import LCERConfig, get_explainer
from lcer_core.explainers.amortised import AmortisedConfig, AmortisedTraining, prefix_lengths
from lcer_core.pairs import make_pairs
from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender

SMALL = AmortisedTraining(epochs=1, batch=64, max_pairs=150, dim=4, hidden=8)


def _recommender(n_items: int) -> MultVAERecommender:
    torch.manual_seed(0)
    return MultVAERecommender(MultVAE(n_items, MultVAEConfig(hidden=16, latent=8)), "cpu")


def _train_only(data: PreparedDataset) -> PreparedDataset:
    """``data`` with every validation and test user removed (their rows and their ids)."""
    train = data.users_of("train")
    parts = {
        name: (df if name == "train" else df.clear())
        for name, df in (
            (n, data.part(n)) for n in ("train", "val_tr", "val_te", "test_tr", "test_te")
        )
    }
    return dataclasses.replace(
        data, users=data.users.filter(pl.col("uid").is_in(train)), _parts=parts
    )


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory, http_mirror: str) -> PreparedDataset:
    import os

    saved = {k: os.environ.get(k) for k in ("LCER_HOME", "LCER_MIRROR")}
    os.environ["LCER_HOME"] = str(tmp_path_factory.mktemp("amortised-home"))
    os.environ["LCER_MIRROR"] = http_mirror
    try:
        return ensure_prepared("ml-100k")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _weights(key: str) -> dict[str, torch.Tensor]:
    net, _ = store.load_network(key)
    return net.state_dict()


def test_training_never_sees_a_validation_or_test_user(ml100k: PreparedDataset) -> None:
    rec = _recommender(ml100k.n_items)
    key = store.train_network(rec, ml100k, "m", 3, SMALL, save=False)
    stripped = _train_only(ml100k)
    assert not stripped.users_of("val") and not stripped.users_of("test")
    again = store.fit_network(rec, store.training_pairs(rec, stripped, 3), SMALL)[0]
    first = _weights(key)
    assert first.keys() == again.state_dict().keys()
    for name, w in again.state_dict().items():
        assert torch.equal(w, first[name]), name


def test_same_seed_same_network_and_answers_another_seed_another(
    ml100k: PreparedDataset, lcer_home: Path
) -> None:
    rec = _recommender(ml100k.n_items)
    pairs = make_pairs(rec, ml100k, ml100k.users_of("val")[:6], 3)
    keys = [store.train_network(rec, ml100k, "m", 3, SMALL) for _ in range(2)]
    assert keys[0] == keys[1]
    other = store.train_network(rec, ml100k, "m", 3, dataclasses.replace(SMALL, seed=1))
    assert other != keys[0]
    a = get_explainer("amortised", network=keys[0]).explain(rec, pairs, seed=0)
    store._MEMORY.clear()  # from disk now: a state_dict read with weights_only
    b = get_explainer("amortised", network=keys[0]).explain(rec, pairs, seed=5)
    assert torch.equal(a.removed, b.removed)
    assert torch.equal(a.importance.nan_to_num(-1), b.importance.nan_to_num(-1))
    folder = store.network_path(keys[0])
    curve = json.loads((folder / "curve.json").read_text())["epoch_mean_loss"]
    assert len(curve) == SMALL.epochs
    meta = json.loads((folder / "train.json").read_text())
    assert meta["k"] == 3 and meta["training"] == SMALL.dump()
    assert not any(folder.parent.glob("*/.tmp*"))


def test_warm_started_lcer_starts_from_the_network(
    ml100k: PreparedDataset, lcer_home: Path
) -> None:
    rec = _recommender(ml100k.n_items)
    pairs = make_pairs(rec, ml100k, ml100k.users_of("val")[:4], 3)
    key = store.train_network(rec, ml100k, "m", 3, SMALL, save=False)
    cold = get_explainer("lcer", steps=1).explain(rec, pairs)
    warm = get_explainer("lcer", steps=1, warm_start=key).explain(rec, pairs)
    assert not torch.equal(cold.importance.nan_to_num(0), warm.importance.nan_to_num(0))
    assert LCERConfig().non_default() == {}  # run keys of existing LCER runs are unchanged


def test_missing_or_bad_network_is_one_clear_error(lcer_home: Path) -> None:
    rec = _recommender(30)
    from lcer_core.pairs import build_pairs
    from lcer_core.testing import small_histories

    pairs = build_pairs(rec, small_histories(30, 4), 3)
    with pytest.raises(MissingDataError, match="train-explainer"):
        get_explainer("amortised").explain(rec, pairs)
    with pytest.raises(MissingDataError, match="no trained amortised network"):
        get_explainer("amortised", network="0123456789abcdef").explain(rec, pairs)
    for bad in ("../../etc", "0123456789ABCDEF", "x" * 16):
        with pytest.raises(InvalidParameterError, match="network"):
            AmortisedConfig(network=bad)
    with pytest.raises(InvalidParameterError, match="warm_start"):
        LCERConfig(warm_start="../x")


class _Payload:
    """Stands for any object a pickle could smuggle in."""


def test_a_network_file_holding_objects_is_refused_not_unpickled(
    ml100k: PreparedDataset, lcer_home: Path
) -> None:
    rec = _recommender(ml100k.n_items)
    key = store.train_network(rec, ml100k, "m", 3, SMALL)
    store._MEMORY.clear()
    torch.save({"item.weight": _Payload()}, store.network_path(key) / "network.pt")
    with pytest.raises(DamagedDataError, match=f"amortised network {key} is damaged"):
        store.load_network(key)


def test_prefix_lengths_stay_within_budget() -> None:
    assert prefix_lengths(8, 16) == [1, 2, 3, 5, 7, 10, 16] or len(prefix_lengths(8, 16)) <= 8
    assert prefix_lengths(20, 5) == [1, 2, 3, 4, 5]
    assert prefix_lengths(1, 16) == [1]
    for b, m in ((3, 100), (8, 16), (5, 5)):
        ls = prefix_lengths(b, m)
        assert len(ls) <= b and ls[0] == 1 and ls[-1] == m and ls == sorted(set(ls))


def test_no_train_without_a_network_is_one_line_status_2(in_trained_home, capsys) -> None:
    data = load_prepared("ml-100k")
    user = data.users.filter(pl.col("split") == "test")["raw_id"][0]
    code, out, err = run_cli(
        ["explain", "ml-100k", "--method", "amortised", "--user", user, "--no-train"], capsys
    )
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "train-explainer" in lines[0], err
    assert "Traceback" not in err


def test_train_explainer_then_explain_a_user(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    home = tmp_path / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("mlflow", "*.lock"))
    monkeypatch.setenv("LCER_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store._MEMORY.clear()
    args = ["train-explainer", "ml-100k", "--k", "3", "--epochs", "1", "--max-pairs", "100"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    meta = json.loads(out)
    assert meta["trained_now"] and meta["n_train_users"] == len(
        load_prepared("ml-100k").users_of("train")
    )
    assert (Path(meta["path"]) / "network.pt").is_file() and len(meta["curve"]) == 1
    # registered in MLflow: its run holds the training config, the curve and the files
    from tasks import mlflow_client

    c = mlflow_client.client()
    run = c.get_run(meta["mlflow"]["run_id"])
    assert run.info.run_name == "train-amortised-k3" and run.info.status == "FINISHED"
    assert run.data.params["network_key"] == meta["key"] and run.data.params["k"] == "3"
    assert run.data.params["train_max_pairs"] == "100"
    losses = c.get_metric_history(run.info.run_id, "train_loss")
    assert [m.value for m in losses] == pytest.approx(meta["curve"])
    assert {f.path for f in c.list_artifacts(run.info.run_id, "network")} >= {
        "network/network.pt",
        "network/curve.json",
    }
    [version] = c.search_model_versions("name = 'amortised-ml-100k'")
    assert version.run_id == run.info.run_id and version.tags["key"] == meta["key"]
    code, out, _ = run_cli([*args, "--json"], capsys)
    assert code == 0 and not json.loads(out)["trained_now"]
    assert json.loads(out)["mlflow"] == meta["mlflow"]  # registered once per key
    # explain binds the default network: trained on first use, one line on stderr says so
    data = load_prepared("ml-100k")
    user = data.users.filter(pl.col("split") == "test")["raw_id"][0]
    code, out, err = run_cli(
        ["explain", "ml-100k", "--method", "amortised", "--user", user, "--k", "3", "--json"],
        capsys,
    )
    assert code == 0, err
    assert [x for x in err.splitlines() if "training it on the" in x], err
    res = json.loads(out)
    assert len(res["recommendations"]) == 3
    for r in res["recommendations"]:
        if r["found"]:
            assert r["rank_after"] > 3 and r["necessary"]
    # and its options are tuned on validation users with the same network
    code, out, err = run_cli(
        ["tune", "ml-100k", "--method", "amortised", "--grid", "budget=2,4", "--k", "3"]
        + ["--users", "5", "--no-train", "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["split"] == "val" and len(json.loads(out)["rows"]) == 2


def test_a_bundle_carries_the_network_to_a_worker_without_it(
    in_trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose LCER_HOME holds no network explains ``amortised`` and warm-started
    ``lcer`` from the bundle exactly as here; a bundle lacking it, or with another, is refused."""
    from lcer_core import models, remote, shards
    from lcer_core.runs import run_spec

    data = load_prepared("ml-100k")
    model = models.load_model("ml-100k")
    key = store.train_network(model.recommender("cpu"), data, model.key, 3, SMALL, save=False)
    users = data.users_of("test")[:3]
    common = {"dataset": "ml-100k", "k": 3, "seed": 0, "n_users": 3, "model_key": model.key}
    specs = [
        run_spec(method="amortised", config=AmortisedConfig(network=key), **common),
        run_spec(method="lcer", config=LCERConfig(steps=5, warm_start=key), **common),
    ]
    here = [shards.explain_users(data, model, s, users, device="cpu") for s in specs]
    bundle = remote.make_bundle(data, model, users, [key])
    base = remote.put_bundle((tmp_path / "store").as_uri(), "b", bundle)
    assert remote.get_bundle(base) == bundle

    store._MEMORY.clear()
    store._MADE_OF.clear()
    monkeypatch.setenv("LCER_HOME", str(tmp_path / "worker"))
    data2, model2 = remote.open_bundle(remote.get_bundle(base))
    for spec, frame in zip(specs, here, strict=True):
        there = shards.explain_users(data2, model2, spec, users, device="cpu")
        timing = [c for c in frame.columns if c.endswith("_s")]
        assert there.drop(timing).equals(frame.drop(timing)), spec.method
    assert not (tmp_path / "worker" / "explainers").exists()

    entry = f"network-{key}.pt"
    without = {n: v for n, v in bundle.items() if n != entry}
    assert remote.bundle_digests(without) != remote.bundle_digests(bundle)
    with pytest.raises(MissingDataError, match=f"lack {entry}"):
        remote.open_bundle(without)
    other = store.train_network(
        model.recommender("cpu"), data, model.key, 3, dataclasses.replace(SMALL, seed=1),
        save=False,
    )  # fmt: skip
    swapped = {**bundle, entry: store.network_bytes(other)}
    with pytest.raises(DamagedDataError, match=f"sent as {key} is network {other}"):
        remote.open_bundle(swapped)
