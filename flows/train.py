"""``lcer-train``: prepare a dataset, train its recommender (unless already trained), register it in MLflow and DuckDB."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.env import check_environment
from flows.runner import train_on_gpu
from lcer_core.models import MODEL_SEED, recommender_config, training_lock
from lcer_core.recommender import DEFAULT_RECOMMENDER
from tasks.data import prepare
from tasks.store import store_dataset, store_model
from tasks.tracking import fail_stale
from tasks.train import ModelInfo, Registration, register, train_task

__all__ = ["lcer_train", "prepare_and_train"]

#: The default recommender's training epochs: its config's default (the reference protocol's).
DEFAULT_EPOCHS = recommender_config().epochs


def prepare_and_train(
    dataset: str,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = MODEL_SEED,
    split_seed: int | None = None,
    recommender: str = DEFAULT_RECOMMENDER,
    options: dict[str, Any] | None = None,
) -> tuple[ModelInfo, Registration]:
    """The first steps of every flow: prepare → train ``recommender`` (skipped when the model
    exists; on a GPU worker of the Ray cluster when it has one, :func:`flows.runner.train_on_gpu`)
    → register. With ``split_seed`` the model is trained on that split (the default one is
    prepared too: the dataset's statistics and items are recorded from it). ``options``: fields
    of the recommender's config (EASE's ``lam``)."""
    # an unknown name or option: one line, before any work
    config = recommender_config(recommender, epochs, options)
    fail_stale(dataset)
    prepare(dataset)
    store_dataset(dataset)
    if split_seed is not None:
        prepare(dataset, split_seed)
    # One training per model at a time: a second process waits, then reuses the model and
    # its registry version.
    with training_lock(dataset, config, seed):
        info = train_task(recommender)(
            dataset, epochs, seed, split_seed, recommender, on_gpu=train_on_gpu(), options=options
        )
        registration = register(info)
        store_model(info, registration)
    return info, registration


@flow(name="lcer-train")
def lcer_train(
    dataset: str = "ml-100k",
    epochs: int = DEFAULT_EPOCHS,
    seed: int = MODEL_SEED,
    recommender: str = DEFAULT_RECOMMENDER,
) -> dict[str, Any]:
    """Train (or reuse) the ``recommender`` of ``dataset`` and register it; its key, metrics and whether it was trained now."""
    check_environment()
    info, registration = prepare_and_train(dataset, epochs, seed, recommender=recommender)
    return {
        "dataset": info.dataset,
        "recommender": info.recommender,
        "model_key": info.key,
        "trained_now": info.trained_now,
        "metrics": info.metrics,
        "path": info.path,
        "registered_model": f"{registration.model_uri} (version {registration.version})",
    }
