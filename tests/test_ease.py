"""EASE and the recommender registry: the closed form against numpy, the refusal of a catalogue
too large, keys and files that carry the recommender's name (Mult-VAE's unchanged)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pytest
import torch

from lcer_core import models
from lcer_core.errors import InvalidParameterError
from lcer_core.keys import content_key
from lcer_core.recommender import RECOMMENDERS, get_recommender
from lcer_core.recommender.ease import (
    EASE,
    EASEConfig,
    EASEKind,
    EASERecommender,
    check_catalogue,
    ease_weights,
)
from lcer_core.recommender.multvae import MultVAEConfig
from lcer_core.store.report import RECOMMENDER_OF_KEY


def _interactions(n_users: int = 40, n_items: int = 12, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n_users, n_items)) < 0.3).astype(np.float64)


def test_closed_form_matches_a_numpy_reference() -> None:
    x, lam = _interactions(), 3.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    expected = np.eye(x.shape[1]) - p / np.diag(p)[None, :]  # Steck (2019), eq. 8
    got = ease_weights(torch.from_numpy(x.T @ x), lam).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.all(np.diag(got) == 0)


def test_fit_reports_one_epoch_and_scores_are_x_times_b() -> None:
    x = torch.from_numpy(_interactions()).float()
    gen = EASEKind.fit(x[:30], x[30:], x[30:], config=EASEConfig(lam=2.0), seed=0, device="cpu")
    reports = []
    while True:
        try:
            reports.append(next(gen))
        except StopIteration as stop:
            module = stop.value
            break
    assert [r.epoch for r in reports] == [1] and np.isfinite(reports[0].loss)
    rec = EASERecommender(module, "cpu")
    np.testing.assert_allclose(rec.scores(x[:3]).numpy(), (x[:3] @ module.weight).numpy())


def test_a_catalogue_too_large_is_refused_in_one_line() -> None:
    check_catalogue(16_384)  # the largest that fits
    with pytest.raises(InvalidParameterError) as info:
        check_catalogue(115_798)  # Epinions
    message = str(info.value)
    assert "EASE" in message and "115,798 items" in message and "16,384" in message
    assert "\n" not in message
    with pytest.raises(InvalidParameterError, match="lam must be > 0"):
        EASEConfig(lam=0.0)


def test_training_refuses_before_any_work(
    in_trained_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lcer_core.datasets import load_prepared
    from lcer_core.recommender import ease

    monkeypatch.setattr(ease, "MAX_BYTES", 1000)
    before = sorted(p.name for p in (in_trained_home / "models" / "ml-100k").iterdir())
    with pytest.raises(InvalidParameterError, match="EASE needs an item × item matrix"):
        models.train_model(load_prepared("ml-100k"), EASEConfig(), device="cpu")
    with pytest.raises(InvalidParameterError, match="over its limit"):
        models.check_trainable("ml-100k", EASEConfig())
    assert sorted(p.name for p in (in_trained_home / "models" / "ml-100k").iterdir()) == before


def test_registry_names_and_refuses_unknown_ones() -> None:
    assert {"multvae", "ease"} <= set(RECOMMENDERS)
    assert get_recommender("ease").config() == EASEConfig()
    assert get_recommender("multvae").config(3) == MultVAEConfig(epochs=3)
    with pytest.raises(InvalidParameterError, match=r"unknown recommender 'nope'; known: ease"):
        get_recommender("nope")


def test_keys_carry_the_recommender_and_multvae_keys_stay() -> None:
    data = SimpleNamespace(fingerprint="f" * 16, split_seed=None)
    cfg = MultVAEConfig()
    old = content_key({"data": data.fingerprint, "config": cfg.dump(), "seed": 1})
    assert models.model_key(data, cfg, 1) == old  # what every earlier version computed
    ease_key = models.model_key(data, EASEConfig(), 1)
    assert ease_key.startswith("ease-") and ease_key != models.model_key(
        data, EASEConfig(lam=100.0), 1
    )
    keys = [old, ease_key, "m1"]
    assert [models.recommender_of_key(k) for k in keys] == ["multvae", "ease", "multvae"]
    sql = f"SELECT {RECOMMENDER_OF_KEY} AS r FROM (SELECT unnest(?) AS model_key)"
    assert [r for (r,) in duckdb.execute(sql, [keys]).fetchall()] == ["multvae", "ease", "multvae"]


def test_checkpoints_name_ease_and_not_multvae() -> None:
    module = EASE(5)
    model = models.TrainedModel("d", "ease-k", EASEConfig(), 1, module, {}, Path("x"))
    assert models.checkpoint(model)["recommender"] == "ease"
    back = models.model_from_bytes(models.model_bytes(model), "d", "ease-k")
    assert back.recommender_name == "ease" and isinstance(back.module, EASE)
    mult = models.TrainedModel(
        "d",
        "k",
        MultVAEConfig(hidden=4, latent=2),
        1,
        RECOMMENDERS["multvae"].build(5, MultVAEConfig(hidden=4, latent=2)),
        {},
        Path("x"),
    )
    assert "recommender" not in models.checkpoint(mult)  # Mult-VAE's files as they were


def test_a_recommender_option_is_checked_and_reaches_the_key() -> None:
    """A plan's recommender options are fields of its config: checked in one line, part of
    the model key (``--recommender-option lam=250``)."""
    from lcer_core.plan import make_plan

    default = models.recommender_config("ease")
    chosen = models.recommender_config("ease", None, {"lam": 250.0})
    assert chosen == EASEConfig(lam=250.0) and default == EASEConfig()
    data = SimpleNamespace(fingerprint="f" * 64, split_seed=None)
    assert models.model_key(data, chosen, 1) != models.model_key(data, default, 1)
    plan = make_plan({}, recommender="ease", recommender_options={"lam": 250.0}, epochs=3)
    assert plan.recommender_fields() == {"lam": 250.0}  # epochs: ignored by a closed form
    for options, message in (
        ({"lamb": 1.0}, "recommender 'ease' has no option 'lamb' (options: lam)"),
        ({"lam": -1.0}, "recommender 'ease': lam must be > 0, got -1.0"),
    ):
        with pytest.raises(InvalidParameterError) as exc:
            make_plan({}, recommender="ease", recommender_options=options)
        assert str(exc.value) == message
