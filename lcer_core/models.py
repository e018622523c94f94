"""Trained recommenders under ``LCER_HOME/models``: training, checkpoints, lookup and locking.

A model is keyed by what determines it (:func:`model_key`: the prepared data's content hash,
the recommender, its hyperparameters and the seed); its checkpoint ``model.pt`` holds plain
tensors and values (read back with ``weights_only``), written atomically beside ``train.json``
(how it was trained) and the dataset's ``latest`` pointer (``latest-NAME`` for a recommender
other than the paper's). Consumers see a
:class:`~lcer_core.recommender.base.Recommender` (:meth:`TrainedModel.recommender`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcer_core.datasets import PreparedDataset
from lcer_core.devices import default_device
from lcer_core.errors import DamagedDataError, InvalidParameterError, LcerError, MissingDataError
from lcer_core.fsio import (
    ensure_writable,
    home_error,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from lcer_core.keys import content_key
from lcer_core.paths import models_dir
from lcer_core.recommender import DEFAULT_RECOMMENDER, get_recommender, kind_of
from lcer_core.recommender.base import Recommender
from lcer_core.recommender.registry import RecommenderKind
from lcer_core.recommender.training import EpochReport, evaluate_ranking

__all__ = [
    "MODEL_SEED",
    "TRAIN_JSON",
    "TrainedModel",
    "model_key",
    "check_trainable",
    "recommender_config",
    "recommender_of_key",
    "train_model",
    "fit_model",
    "save_model",
    "checkpoint",
    "model_bytes",
    "model_from_bytes",
    "repair_command",
    "find_model",
    "load_model",
    "training_lock",
    "check_model_data",
    "ensure_model",
]

#: The seed of a model trained without one (``lcer train``'s default).
MODEL_SEED = 98765
TRAIN_JSON = "train.json"  # beside model.pt: the config and seed it was trained with


@dataclass
class TrainedModel:
    """A trained recommender with what determines it and how well it ranks.

    ``config`` is its kind's config: its type says which kind it is (:attr:`recommender_name`)."""

    dataset: str
    key: str
    config: Any
    seed: int
    module: torch.nn.Module
    metrics: dict[str, float]
    path: Path
    #: Content hash of the prepared data it was trained on (None for old checkpoints).
    data_fingerprint: str | None = None

    def recommender(self, device: torch.device | str | None = None) -> Recommender:
        """The model as a :class:`Recommender` on ``device`` (default: CUDA if visible)."""
        return self.kind.recommender(self.module, device or default_device())

    @property
    def kind(self) -> type[RecommenderKind]:
        return kind_of(self.config)

    @property
    def recommender_name(self) -> str:
        """The registry name of its kind."""
        return self.kind.name

    @property
    def n_items(self) -> int:
        return int(self.module.n_items)

    @property
    def version(self) -> str:
        return self.key


def model_key(data: PreparedDataset, config: Any, seed: int) -> str:
    """Key of a model: the data's content hash, the hyperparameters and the seed (and the
    data's split seed, named only when it is not the default split: older keys stay).

    The paper's recommender's keys are what they always were; another kind's key starts with
    its name and names it in the hash too (``ease-3f2a...``), so the key alone says which
    recommender it is (:func:`recommender_of_key`)."""
    kind = kind_of(config)
    split = {} if data.split_seed is None else {"split_seed": data.split_seed}
    payload = {"data": data.fingerprint, "config": kind.dump(config), "seed": seed, **split}
    if kind.name == DEFAULT_RECOMMENDER:
        return content_key(payload)
    return f"{kind.name}-{content_key({**payload, 'recommender': kind.name})}"


def recommender_of_key(key: str) -> str:
    """The recommender a model key belongs to: the name before its ``-``, else the paper's."""
    return key.split("-", 1)[0] if "-" in key else DEFAULT_RECOMMENDER


def check_trainable(dataset: str, config: Any) -> None:
    """Refuse in one line, before any work, a recommender that cannot train on ``dataset`` as it
    is already prepared (EASE on a catalogue too large); nothing to check before preparation."""
    from lcer_core.datasets import is_prepared, load_prepared

    if is_prepared(dataset):
        kind_of(config).check(load_prepared(dataset).n_items, config)


def recommender_config(
    name: str = DEFAULT_RECOMMENDER,
    epochs: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The config of recommender ``name``: its defaults, ``epochs`` (its training epochs, if it
    has any) and ``options`` (fields of its config); an unknown name or option is a one-line
    error naming the known ones, a bad value the config's own one line."""
    kind = get_recommender(name)
    config = kind.config(epochs)
    if not options:
        return config
    fields = list(kind.config_type.__dataclass_fields__)
    unknown = [n for n in options if n not in fields]
    if unknown:
        raise InvalidParameterError(
            f"recommender {name!r} has no option {unknown[0]!r} (options: {', '.join(fields)})",
            param="recommender_options",
        )
    try:
        return dataclasses.replace(config, **options)
    except InvalidParameterError as exc:  # the config's own line, about a recommender option
        raise InvalidParameterError(f"recommender {name!r}: {exc}") from None


def train_model(
    data: PreparedDataset,
    config: Any = None,
    *,
    seed: int = MODEL_SEED,
    device: torch.device | str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainedModel:
    """Train the recommender of ``config`` (default: the paper's) on the training users, keep the
    best epoch on validation NDCG@100, report NDCG@100 and Recall@20/50 on the test users,
    and save the checkpoint atomically."""
    cfg = config or recommender_config()
    kind_of(cfg).check(data.n_items, cfg)
    ensure_writable(models_dir() / data.name)
    model = fit_model(data, cfg, seed=seed, device=device, on_epoch=on_epoch)
    return save_model(model, data)


def fit_model(
    data: PreparedDataset,
    config: Any = None,
    *,
    seed: int = MODEL_SEED,
    device: torch.device | str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainedModel:
    """:func:`train_model` without saving (its module is back on the CPU): what a worker
    that shares no ``LCER_HOME`` with the flow trains and sends back (:func:`model_bytes`)."""
    cfg = config or recommender_config()
    kind = kind_of(cfg)
    kind.check(data.n_items, cfg)
    dev = device or default_device()
    train = data.rows("train", data.users_of("train"))  # sparse: one dense batch at a time
    val_users = data.users_of("val")
    vtr, vte = data.rows("val_tr", val_users), data.rows("val_te", val_users)
    gen = kind.fit(train, vtr, vte, config=cfg, seed=seed, device=dev)
    best_epoch = 0
    while True:
        try:
            report = next(gen)
        except StopIteration as stop:
            module: torch.nn.Module = stop.value
            break
        best_epoch = report.best_epoch
        if on_epoch is not None:
            on_epoch(report)
    test = data.users_of("test")
    ttr, tte = data.rows("test_tr", test), data.rows("test_te", test)
    metrics = {**evaluate_ranking(module, ttr, tte), "best_epoch": float(best_epoch)}
    key = model_key(data, cfg, seed)
    return TrainedModel(
        data.name,
        key,
        cfg,
        seed,
        module,
        metrics,
        models_dir() / data.name / key / "model.pt",
        data.fingerprint,
    )


def save_model(model: TrainedModel, data: PreparedDataset) -> TrainedModel:
    """Write ``model``'s checkpoint under ``LCER_HOME/models/DATASET/KEY/`` (atomically) and make it
    the dataset's latest (a model of a split seed's data never is: ``lcer explain`` explains the
    default split); a write that fails (permissions, full disk) leaves no partial file."""
    path = models_dir() / data.name / model.key / "model.pt"
    model.data_fingerprint = data.fingerprint
    write_bytes_atomic(path, model_bytes(model))
    # How it was trained, beside it: what a damaged checkpoint's error names as its repair.
    write_json_atomic(
        path.parent / TRAIN_JSON,
        {"config": model.kind.dump(model.config), "seed": model.seed, **_named(model)},
        indent=None,
    )
    if data.split_seed is None:
        write_text_atomic(path.parent.parent / _latest(model.recommender_name), model.key)
    model.path = path
    return model


def checkpoint(model: TrainedModel) -> dict[str, Any]:
    """What a model's checkpoint file holds (weights, configuration, metrics), as plain tensors and values."""
    return {
        "state_dict": model.module.state_dict(),
        "config": model.kind.dump(model.config),
        "seed": model.seed,
        "n_items": model.n_items,
        "metrics": model.metrics,
        "data_fingerprint": model.data_fingerprint,
        "dataset": model.dataset,
        **_named(model),
    }


def _named(model: TrainedModel) -> dict[str, str]:
    """``{"recommender": NAME}`` for a kind other than the paper's (whose files stay as they were)."""
    name = model.recommender_name
    return {} if name == DEFAULT_RECOMMENDER else {"recommender": name}


def _latest(recommender: str) -> str:
    """The file naming a dataset's latest model of ``recommender``: ``latest`` for the paper's."""
    return "latest" if recommender == DEFAULT_RECOMMENDER else f"latest-{recommender}"


def model_bytes(model: TrainedModel) -> bytes:
    """The model's checkpoint as bytes: the file's content, or what a worker that cannot read
    ``LCER_HOME`` is sent (serialised in memory: torch reports a failed file write opaquely)."""
    buf = io.BytesIO()
    torch.save(checkpoint(model), buf)
    return buf.getvalue()


def model_from_bytes(blob: bytes, dataset: str, key: str) -> TrainedModel:
    """The model of :func:`model_bytes` (weights only: nothing in it is executed)."""
    return _load_checkpoint(dataset, key, io.BytesIO(blob))


def repair_command(dataset: str, key: str) -> str:
    """The ``lcer train`` command line that trains model ``key`` again (from its train.json)."""
    command = f"lcer train {dataset}"
    try:
        recorded = json.loads((models_dir() / dataset / key / TRAIN_JSON).read_text())
        name = str(recorded.get("recommender", DEFAULT_RECOMMENDER))
        kind = get_recommender(name)
        cfg, seed = kind.config_type(**recorded["config"]), int(recorded["seed"])
    except (OSError, ValueError, KeyError, TypeError, LcerError):
        return command
    if name != DEFAULT_RECOMMENDER:
        command += f" --recommender {name}"
    epochs = getattr(cfg, "epochs", None)
    if cfg != kind.config(epochs):
        return command  # hyperparameters the command line cannot set
    if epochs is not None and epochs != kind.config().epochs:
        command += f" --epochs {epochs}"
    if seed != MODEL_SEED:
        command += f" --seed {seed}"
    return command


def _load_checkpoint(dataset: str, key: str, source: io.BytesIO | None = None) -> TrainedModel:
    path = models_dir() / dataset / key / "model.pt"
    try:
        blob = torch.load(path if source is None else source, map_location="cpu", weights_only=True)
        kind = get_recommender(blob.get("recommender", DEFAULT_RECOMMENDER))
        cfg = kind.config_type(**blob["config"])
        module = kind.build(int(blob["n_items"]), cfg)
        module.load_state_dict(blob["state_dict"])
        model = TrainedModel(
            dataset,
            key,
            cfg,
            int(blob["seed"]),
            module.eval(),
            dict(blob["metrics"]),
            path,
            blob.get("data_fingerprint"),
        )
    except Exception as exc:  # noqa: BLE001  any failure to read it (truncated, a pickle payload
        # that weights_only refuses, wrong contents) means the file is damaged
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        if source is not None:
            raise DamagedDataError(
                f"the model {key} sent to this worker cannot be read ({reason})"
            ) from None
        raise DamagedDataError(
            f"the model checkpoint {path} cannot be read ({reason}): "
            f"run `{repair_command(dataset, key)}` again"
        ) from None
    return model


def find_model(
    dataset: str,
    key: str | None = None,
    *,
    damaged_as_absent: bool = False,
    recommender: str = DEFAULT_RECOMMENDER,
) -> TrainedModel | None:
    """The model with ``key`` (default: the latest trained of ``recommender``) for ``dataset``, or
    None; a damaged checkpoint is a :class:`DamagedDataError`, or None with ``damaged_as_absent``."""
    if key is None:
        latest = models_dir() / dataset / _latest(recommender)
        if not latest.is_file():
            return None
        key = latest.read_text().strip()
    if not (models_dir() / dataset / key / "model.pt").is_file():
        return None
    try:
        return _load_checkpoint(dataset, key)
    except DamagedDataError:
        if damaged_as_absent:
            return None
        raise


@contextlib.contextmanager
def training_lock(dataset: str, config: Any = None, seed: int = MODEL_SEED) -> Iterator[None]:
    """Hold the lock of one model (dataset, recommender, hyperparameters, seed) across processes:
    a second training of the same model waits here, then finds the first one's checkpoint."""
    cfg = config or recommender_config()
    kind = kind_of(cfg)
    named = {} if kind.name == DEFAULT_RECOMMENDER else {"recommender": kind.name}
    folder = models_dir() / dataset
    token = content_key({"config": kind.dump(cfg), "seed": seed, **named})[:16]
    path = folder / f".train-{token}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise home_error(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def load_model(dataset: str, key: str | None = None) -> TrainedModel:
    """Like :func:`find_model`, but a missing model is a one-line error."""
    found = find_model(dataset, key)
    if found is None:
        raise MissingDataError(
            f"no trained model for {dataset!r}: run `lcer train {dataset}` first"
        )
    return found


def check_model_data(model: TrainedModel, data: PreparedDataset) -> None:
    """A model trained on other data than ``data`` (re-prepared with another seed, another file)
    would explain the wrong users: a one-line error that says to train again."""
    if model.n_items != data.n_items or (
        model.data_fingerprint is not None and model.data_fingerprint != data.fingerprint
    ):
        raise MissingDataError(
            f"the latest model of {data.name!r} ({model.key}) was trained on data prepared "
            f"differently from the current {data.name!r}: run `lcer train {data.name}` again"
        )


def ensure_model(
    data: PreparedDataset,
    config: Any = None,
    *,
    seed: int = MODEL_SEED,
    device: torch.device | str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> tuple[TrainedModel, bool]:
    """The model for (data, config, seed), trained only if no checkpoint exists; (model, trained?)."""
    cfg = config or recommender_config()
    with training_lock(data.name, cfg, seed):
        existing = find_model(data.name, model_key(data, cfg, seed), damaged_as_absent=True)
        if existing is not None:
            return existing, False
        return train_model(data, cfg, seed=seed, device=device, on_epoch=on_epoch), True
