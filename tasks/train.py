"""Prefect tasks for the recommender: train it (or reuse the checkpoint), register it in MLflow.

A training opens its MLflow run (``train-RECOMMENDER``, RUNNING) before the first epoch and
:func:`register` logs the model into it and closes it: a process killed mid-training leaves
that run RUNNING until the next flow closes it as FAILED (``fail_stale_runs``), and no
checkpoint, since checkpoints are written whole or not at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lcer_core import models
from lcer_core.datasets import PreparedDataset, load_prepared
from lcer_core.devices import device_label, shard_device
from lcer_core.fsio import ensure_writable
from lcer_core.paths import models_dir
from lcer_core.recommender import DEFAULT_RECOMMENDER, kind_of
from lcer_core.recommender.training import EpochReport
from tasks import mlflow_client, progress

__all__ = ["ModelInfo", "Registration", "train", "train_task", "register", "bind_networks"]

_MODEL_KEY_TAG = "lcer.model_key"
_Logger = logging.Logger | logging.LoggerAdapter[Any]  # what get_run_logger returns


@dataclass(frozen=True)
class ModelInfo:
    """A trained recommender as the flows pass it around: where it is and how it was made."""

    dataset: str
    key: str
    trained_now: bool
    params: dict[str, Any]
    metrics: dict[str, float]
    path: str
    history: dict[str, list[float]] = field(default_factory=dict)
    #: The open MLflow run of a training done now (``register`` closes it); None when reused.
    mlflow_run_id: str | None = None
    #: The split seed of the data it was trained on (None: the default split).
    split_seed: int | None = None
    #: Its recommender's registry name.
    recommender: str = DEFAULT_RECOMMENDER


@dataclass(frozen=True)
class Registration:
    """Where the model is in the MLflow registry (``RECOMMENDER-DATASET``)."""

    run_id: str
    model_uri: str
    version: int
    new: bool


def _epoch_reporter(
    dataset: str, epochs: int, history: dict[str, list[float]], logger: _Logger, title: str
) -> Callable[[EpochReport], None]:
    """A callback that records each epoch in ``history``, emits its progress and logs it."""

    def on_epoch(report: EpochReport) -> None:
        history["loss"].append(report.loss)
        history["val_ndcg100"].append(report.val_ndcg100)
        progress.emit(
            "epoch",
            dataset=dataset,
            epoch=report.epoch,
            epochs=epochs,
            val_ndcg100=report.val_ndcg100,
            recommender=title,
        )
        logger.info(
            "epoch %d/%d: loss %.2f, validation NDCG@100 %.4f (best epoch %d)",
            report.epoch,
            epochs,
            report.loss,
            report.val_ndcg100,
            report.best_epoch,
        )

    return on_epoch


def _train_tracked(
    dataset: str,
    data: PreparedDataset,
    config: Any,
    seed: int,
    key: str,
    on_epoch: Callable[[EpochReport], None],
    logger: _Logger,
    on_gpu: bool = False,
) -> tuple[models.TrainedModel, str]:
    """Open the training's MLflow run and train (here, or on a GPU worker of the Ray cluster
    when ``on_gpu``); a failed training marks that run FAILED."""
    kind = kind_of(config)
    mlflow_client.configure()
    run_id = mlflow_client.start_run(
        dataset,
        run_name=mlflow_client.train_run_name(kind.name),
        params={
            "dataset": dataset,
            **_recommender_params(kind.name),
            **kind.dump(config),
            "seed": seed,
            "data_fingerprint": data.fingerprint,
            **_split_params(data),
            **_source_params(data.meta),
            "model_key": key,
        },
        tags={"lcer.kind": "train", _MODEL_KEY_TAG: key},
    )
    logger.info("training model %s (MLflow run %s)", key, run_id)
    try:
        if on_gpu:
            model = _train_on_ray(data, config, seed, logger)
        else:
            model = models.train_model(data, config, seed=seed, on_epoch=on_epoch)
    except BaseException as exc:
        mlflow_client.fail_run(run_id, exc)
        raise
    logger.info("trained model %s: %s", model.key, _fmt(model.metrics))
    return model, run_id


def _fit_elsewhere(data: PreparedDataset, config: Any, seed: int) -> tuple[bytes, str, str]:
    """On a Ray worker: train, and send back the checkpoint's bytes, the node and the device."""
    from tasks.explain import node_name, ray_gpu_ids

    with shard_device() as device:
        blob = models.model_bytes(models.fit_model(data, config, seed=seed, device=device))
    return blob, node_name(), device_label(device, ray_gpu_ids())


def _train_on_ray(
    data: PreparedDataset, config: Any, seed: int, logger: _Logger
) -> models.TrainedModel:
    """Train on a GPU worker of the Ray cluster (a whole GPU, in a fresh worker process that
    gives its GPU memory back when it ends) and save the checkpoint it sends back here."""
    import ray

    ensure_writable(models_dir() / data.name)  # before the work, not after
    remote = ray.remote(num_cpus=1, num_gpus=1, max_calls=1)(_fit_elsewhere)
    blob, node, device = ray.get(remote.remote(data, config, seed))
    model = models.model_from_bytes(blob, data.name, models.model_key(data, config, seed))
    logger.info("trained on Ray node %s device %s; checkpoint back here", node, device)
    return models.save_model(model, data)


@task(name=mlflow_client.TRAIN_RUN_NAME, cache_policy=NO_CACHE)
def train(
    dataset: str,
    epochs: int | None = None,
    seed: int = models.MODEL_SEED,
    split_seed: int | None = None,
    recommender: str = DEFAULT_RECOMMENDER,
    on_gpu: bool = False,
    options: dict[str, Any] | None = None,
) -> ModelInfo:
    """Train ``recommender`` on ``dataset`` (on its split ``split_seed``), or reuse the checkpoint
    trained on the same data with the same settings; ``epochs`` (None: the recommender's
    default) is ignored by a recommender trained in closed form; with ``on_gpu``, on a GPU
    worker of the flow's Ray cluster; ``options``: fields of the recommender's config."""
    logger = get_run_logger()
    config = models.recommender_config(recommender, epochs, options)
    kind = kind_of(config)
    data = load_prepared(dataset, split_seed)
    history: dict[str, list[float]] = {"loss": [], "val_ndcg100": []}
    on_epoch = _epoch_reporter(dataset, kind.epochs(config), history, logger, kind.title)
    key = models.model_key(data, config, seed)
    model = models.find_model(dataset, key, damaged_as_absent=True)  # a damaged one is retrained
    trained_now, run_id = model is None, None
    if model is not None:
        logger.info(
            "model %s already trained (%s): not training again", model.key, _fmt(model.metrics)
        )
    else:
        model, run_id = _train_tracked(dataset, data, config, seed, key, on_epoch, logger, on_gpu)
    return ModelInfo(
        dataset=dataset,
        key=model.key,
        trained_now=trained_now,
        params={
            **_recommender_params(kind.name),
            **kind.dump(model.config),
            "seed": seed,
            "data_fingerprint": data.fingerprint,
            **_split_params(data),
            **_source_params(data.meta),
        },
        metrics=dict(model.metrics),
        path=str(model.path),
        history=history if trained_now else {},
        mlflow_run_id=run_id,
        split_seed=split_seed,
        recommender=kind.name,
    )


def train_task(recommender: str = DEFAULT_RECOMMENDER) -> Any:
    """:func:`train`, named ``train-RECOMMENDER`` in Prefect as its MLflow run is."""
    if recommender == DEFAULT_RECOMMENDER:
        return train
    return train.with_options(name=mlflow_client.train_run_name(recommender))


def _recommender_params(name: str) -> dict[str, str]:
    """The recommender as a param, for any but the paper's (whose params stay as they were)."""
    return {} if name == DEFAULT_RECOMMENDER else {"recommender": name}


def _split_params(data: PreparedDataset) -> dict[str, int]:
    """The data's split seed as a run param, when it is not the default split."""
    return {} if data.split_seed is None else {"split_seed": data.split_seed}


def _source_params(meta: dict[str, Any]) -> dict[str, str]:
    """The digests of the bytes the data was prepared from, as run params (empty if unknown)."""
    source = meta.get("source") or {}
    out: dict[str, str] = {}
    if isinstance(source.get("archive_sha256"), str):
        out["data_archive_sha256"] = source["archive_sha256"]
    if isinstance(source.get("members_sha256"), dict):
        out["data_members_sha256"] = json.dumps(source["members_sha256"], sort_keys=True)
    return out


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _existing_registration(dataset: str, key: str) -> Registration | None:
    """The registry entry of the model with ``key`` if an earlier run already logged it."""
    runs = mlflow_client.finished_runs_tagged(dataset, _MODEL_KEY_TAG, key, max_results=1)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    versions = mlflow_client.client().search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        return None
    mv = max(versions, key=lambda v: int(v.version))
    return Registration(run_id, mv.source, int(mv.version), new=False)


@task(name="register-model", cache_policy=NO_CACHE)
def register(info: ModelInfo) -> Registration:
    """Log the model to MLflow (PyTorch flavour) and register it as ``RECOMMENDER-DATASET``, once per model key."""
    logger = get_run_logger()
    mlflow_client.configure()
    mlflow_client.ensure_experiment(info.dataset)
    found = _existing_registration(info.dataset, info.key)
    if found is not None:
        logger.info("model %s already registered as version %d", info.key, found.version)
        if info.mlflow_run_id is not None:  # trained again (checkpoint lost): close its run
            mlflow_client.end_run(info.mlflow_run_id, "FINISHED")
        return found
    model = models.load_model(info.dataset, info.key)
    data = load_prepared(info.dataset, info.split_seed)
    _, example = data.matrix("test_tr", data.users_of("test")[:1])
    out = mlflow_client.log_model(
        model.module,
        info.dataset,
        params={**info.params, "model_key": info.key},
        metrics={**info.metrics, **info.history},
        input_example=example.numpy(),
        tags={_MODEL_KEY_TAG: info.key},
        run_id=info.mlflow_run_id,
        recommender=info.recommender,
    )
    logger.info(
        "registered %s version %s (MLflow run %s)",
        mlflow_client.registered_model_name(info.dataset, info.recommender),
        out["version"],
        out["run_id"],
    )
    return Registration(out["run_id"], out["model_uri"], int(out["version"]), new=True)


@task(name="bind-explainer-networks", cache_policy=NO_CACHE)
def bind_networks(specs: list[Any], split_seed: int | None = None) -> list[Any]:
    """The runs with each amortised run's explainer network bound (trained on the training
    users first where missing, one log line each), re-keyed, and every network they read
    registered in MLflow (``amortised-DATASET``, once per key); other runs unchanged."""
    from lcer_core.amortised_store import bind_runs, config_networks, needs_network, network_path
    from tasks.explainer_network import register_network

    if not any(needs_network(s.config) for s in specs):
        return specs
    logger = get_run_logger()
    first = specs[0]
    data = load_prepared(first.dataset, split_seed)
    model = models.load_model(first.dataset, first.model_key)
    bound = bind_runs(specs, model, data, notify=logger.info)
    for key in config_networks(s.config for s in bound):
        if (network_path(key) / "train.json").is_file():
            reg = register_network(first.dataset, key)
            logger.info(
                "explainer network %s %s as version %d of %s (MLflow run %s)",
                key,
                "registered" if reg.new else "already registered",
                reg.version,
                mlflow_client.registered_network_name(first.dataset),
                reg.run_id,
            )
    return bound
