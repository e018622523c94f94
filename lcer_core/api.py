"""The pipeline's steps as plain functions: what the CLI, the Prefect tasks and a notebook call.

Each step reads and writes files under ``LCER_HOME``; nothing here knows about Prefect or
MLflow. A step that is asked for an invalid value raises an :class:`~lcer_core.errors.LcerError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch

from lcer_core.checks import check_users
from lcer_core.datasets import PreparedDataset, load_prepared, prepare
from lcer_core.errors import DamagedDataError, InvalidParameterError, MissingDataError
from lcer_core.explainers import get_explainer, get_method
from lcer_core.explanations import Explanations
from lcer_core.fsio import ensure_writable, home_error
from lcer_core.keys import content_key
from lcer_core.metrics import PairOutcomes, evaluate_pairs, summarize
from lcer_core.pairs import PairBatch, build_pairs
from lcer_core.paths import models_dir
from lcer_core.recommender.multvae import MultVAE, MultVAEConfig, MultVAERecommender
from lcer_core.recommender.training import EpochReport, evaluate_ranking, fit_multvae

__all__ = [
    "TrainedModel",
    "default_device",
    "resolve_device",
    "ensure_dataset",
    "train_model",
    "save_model",
    "find_model",
    "load_model",
    "checkpoint",
    "model_bytes",
    "model_from_bytes",
    "check_model_data",
    "ensure_model",
    "training_lock",
    "model_key",
    "test_users",
    "make_pairs",
    "explain",
    "evaluate",
    "recommendation_frame",
    "explanation_frame",
    "pairs_from_frame",
    "summarize_frame",
]

MODEL_SEED = 98765
TRAIN_JSON = "train.json"  # beside model.pt: the config and seed it was trained with


def default_device() -> torch.device:
    """CUDA whenever it is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``; None: :func:`default_device`) as a device that
    exists here; anything else is a one-line error."""
    if name is None:
        return default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(
            f"--device must be cpu or cuda[:N], got {str(name)!r}"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InvalidParameterError(f"--device must be cpu or cuda[:N], got {str(name)!r}")
    if not torch.cuda.is_available():
        raise InvalidParameterError(f"--device {name}: no CUDA device is visible here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidParameterError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return dev


def ensure_dataset(name: str) -> PreparedDataset:
    """Prepare ``name`` if needed (idempotent) and load it."""
    prepare(name)
    return load_prepared(name)


# --------------------------------------------------------------------------- models


@dataclass
class TrainedModel:
    """A trained Mult-VAE with what determines it and how well it ranks."""

    dataset: str
    key: str
    config: MultVAEConfig
    seed: int
    module: MultVAE
    metrics: dict[str, float]
    path: Path
    #: Content hash of the prepared data it was trained on (None for old checkpoints).
    data_fingerprint: str | None = None

    def recommender(self, device: torch.device | str | None = None) -> MultVAERecommender:
        return MultVAERecommender(self.module, device or default_device())

    @property
    def version(self) -> str:
        return self.key


def model_key(data: PreparedDataset, config: MultVAEConfig, seed: int) -> str:
    """Key of a model: the data's content hash, the hyperparameters and the seed."""
    return content_key({"data": data.fingerprint, "config": config.dump(), "seed": seed})


def _atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` with torch.save so that ``path`` is either complete or absent."""
    buf = io.BytesIO()
    torch.save(obj, buf)  # to memory first: torch reports a failed file write opaquely
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise home_error(path, exc) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise home_error(path, exc) from None


def train_model(
    data: PreparedDataset,
    config: MultVAEConfig | None = None,
    *,
    seed: int = MODEL_SEED,
    device: torch.device | str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainedModel:
    """Train Mult-VAE on the training users, pick the best epoch on validation NDCG@100,
    report NDCG@100 and Recall@20/50 on the test users, and save the checkpoint atomically."""
    cfg = config or MultVAEConfig()
    ensure_writable(models_dir() / data.name)
    dev = device or default_device()
    train = data.rows("train", data.users_of("train"))  # sparse: one dense batch at a time
    val_users = data.users_of("val")
    vtr, vte = data.rows("val_tr", val_users), data.rows("val_te", val_users)
    gen = fit_multvae(train, vtr, vte, config=cfg, seed=seed, device=dev)
    best_epoch = 0
    while True:
        try:
            report = next(gen)
        except StopIteration as stop:
            module: MultVAE = stop.value
            break
        best_epoch = report.best_epoch
        if on_epoch is not None:
            on_epoch(report)
    test = data.users_of("test")
    ttr, tte = data.rows("test_tr", test), data.rows("test_te", test)
    metrics = {**evaluate_ranking(module, ttr, tte), "best_epoch": float(best_epoch)}
    key = model_key(data, cfg, seed)
    model = TrainedModel(
        data.name,
        key,
        cfg,
        seed,
        module,
        metrics,
        models_dir() / data.name / key / "model.pt",
        data.fingerprint,
    )
    return save_model(model, data)


def save_model(model: TrainedModel, data: PreparedDataset) -> TrainedModel:
    """Write ``model``'s checkpoint under ``LCER_HOME/models/DATASET/KEY/`` (atomically) and make it
    the dataset's latest; a write that fails (permissions, full disk) leaves no partial file."""
    path = models_dir() / data.name / model.key / "model.pt"
    model.data_fingerprint = data.fingerprint
    _atomic_save(checkpoint(model), path)
    # How it was trained, beside it: what a damaged checkpoint's error names as its repair.
    _write_text_atomic(
        path.parent / TRAIN_JSON,
        json.dumps({"config": model.config.dump(), "seed": model.seed}) + "\n",
    )
    _write_text_atomic(path.parent.parent / "latest", model.key)
    model.path = path
    model.data_fingerprint = data.fingerprint
    return model


def checkpoint(model: TrainedModel) -> dict[str, Any]:
    """What a model's checkpoint file holds (weights, configuration, metrics), as plain tensors and values."""
    return {
        "state_dict": model.module.state_dict(),
        "config": model.config.dump(),
        "seed": model.seed,
        "n_items": model.module.n_items,
        "metrics": model.metrics,
        "data_fingerprint": model.data_fingerprint,
        "dataset": model.dataset,
    }


def model_bytes(model: TrainedModel) -> bytes:
    """The model's checkpoint as bytes, to send to a worker that cannot read ``LCER_HOME``."""
    buf = io.BytesIO()
    torch.save(checkpoint(model), buf)
    return buf.getvalue()


def model_from_bytes(blob: bytes, dataset: str, key: str) -> TrainedModel:
    """The model of :func:`model_bytes` (weights only: nothing in it is executed)."""
    return _load_checkpoint(dataset, key, io.BytesIO(blob))


def _repair_command(dataset: str, key: str) -> str:
    """The ``lcer train`` command line that trains model ``key`` again (from its train.json)."""
    command = f"lcer train {dataset}"
    try:
        recorded = json.loads((models_dir() / dataset / key / TRAIN_JSON).read_text())
        cfg, seed = MultVAEConfig(**recorded["config"]), int(recorded["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return command
    if cfg != MultVAEConfig(epochs=cfg.epochs):
        return command  # hyperparameters the command line cannot set
    if cfg.epochs != MultVAEConfig().epochs:
        command += f" --epochs {cfg.epochs}"
    if seed != MODEL_SEED:
        command += f" --seed {seed}"
    return command


def _load_checkpoint(dataset: str, key: str, source: io.BytesIO | None = None) -> TrainedModel:
    path = models_dir() / dataset / key / "model.pt"
    try:
        blob = torch.load(path if source is None else source, map_location="cpu", weights_only=True)
        cfg = MultVAEConfig(**blob["config"])
        module = MultVAE(int(blob["n_items"]), cfg)
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
            f"run `{_repair_command(dataset, key)}` again"
        ) from None
    return model


def find_model(
    dataset: str, key: str | None = None, *, damaged_as_absent: bool = False
) -> TrainedModel | None:
    """The model with ``key`` (default: the latest trained) for ``dataset``, or None; a damaged
    checkpoint is a :class:`DamagedDataError`, or None with ``damaged_as_absent`` (training)."""
    if key is None:
        latest = models_dir() / dataset / "latest"
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
def training_lock(
    dataset: str, config: MultVAEConfig | None = None, seed: int = MODEL_SEED
) -> Iterator[None]:
    """Hold the lock of one model (dataset, hyperparameters, seed) across processes: a second
    training of the same model waits here, then finds the first one's checkpoint."""
    cfg = config or MultVAEConfig()
    folder = models_dir() / dataset
    path = folder / f".train-{content_key({'config': cfg.dump(), 'seed': seed})[:16]}.lock"
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
    if model.module.n_items != data.n_items or (
        model.data_fingerprint is not None and model.data_fingerprint != data.fingerprint
    ):
        raise MissingDataError(
            f"the latest model of {data.name!r} ({model.key}) was trained on data prepared "
            f"differently from the current {data.name!r}: run `lcer train {data.name}` again"
        )


def ensure_model(
    data: PreparedDataset,
    config: MultVAEConfig | None = None,
    *,
    seed: int = MODEL_SEED,
    device: torch.device | str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> tuple[TrainedModel, bool]:
    """The model for (data, config, seed), trained only if no checkpoint exists; (model, trained?)."""
    cfg = config or MultVAEConfig()
    with training_lock(data.name, cfg, seed):
        existing = find_model(data.name, model_key(data, cfg, seed), damaged_as_absent=True)
        if existing is not None:
            return existing, False
        return train_model(data, cfg, seed=seed, device=device, on_epoch=on_epoch), True


# --------------------------------------------------------------------------- explanations


def test_users(
    data: PreparedDataset, n_users: int | None = None, *, strict: bool = False
) -> list[int]:
    """The first ``n_users`` test users (all by default), in ascending internal id; with
    ``strict``, asking for more users than the dataset's test users is a one-line error."""
    users = data.users_of("test")
    if n_users is not None:
        check_users(n_users)
        if strict and n_users > len(users):
            raise InvalidParameterError(
                f"--users {n_users} is more than the {len(users)} test users of {data.name!r}"
            )
        users = users[:n_users]
    return users


def make_pairs(
    recommender: MultVAERecommender, data: PreparedDataset, users: list[int], k: int
) -> PairBatch:
    """Top-``k`` pairs of ``users`` with their thresholds g_{K+1}(x_f)."""
    return build_pairs(recommender, data.histories(users), k)


def explain(
    recommender: MultVAERecommender,
    pairs: PairBatch,
    method: str,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **params: Any,
) -> Explanations:
    """Explain ``pairs`` with ``method`` (a registered method, with its config's fields as ``params``)."""
    return get_explainer(method, **params).explain(recommender, pairs, seed=seed, progress=progress)


def evaluate(
    recommender: MultVAERecommender, pairs: PairBatch, explanations: Explanations
) -> PairOutcomes:
    return evaluate_pairs(recommender, pairs, explanations)


def recommendation_frame(
    data: PreparedDataset, pairs: PairBatch, recommender: MultVAERecommender
) -> pl.DataFrame:
    """One row per (user, rank): the top-K list with raw ids and scores."""
    with torch.no_grad():
        scores = recommender.scores_of_sets(
            pairs.items, pairs.mask.float(), pairs.targets[:, None]
        )[:, 0]
    uids = pairs.users.cpu().tolist()
    sids = pairs.targets.cpu().tolist()
    return pl.DataFrame(
        {
            "uid": uids,
            "raw_user": _raw_users(data, uids),
            "rank": pairs.ranks.cpu().tolist(),
            "sid": sids,
            "raw_item": _raw_items(data, sids),
            "score": scores.cpu().double().tolist(),
        }
    )


def _raw_users(data: PreparedDataset, uids: list[int]) -> list[str]:
    lookup = dict(zip(data.users["uid"].to_list(), data.users["raw_id"].to_list(), strict=True))
    return [lookup[u] for u in uids]


def _raw_items(data: PreparedDataset, sids: list[int]) -> list[str]:
    lookup = dict(zip(data.items["sid"].to_list(), data.items["raw_id"].to_list(), strict=True))
    return [lookup[s] for s in sids]


def explanation_frame(
    data: PreparedDataset, pairs: PairBatch, explanations: Explanations, outcomes: PairOutcomes
) -> pl.DataFrame:
    """One row per pair: the CE's items (internal and raw ids), their importance, and the outcomes."""
    items = pairs.items.cpu()
    removed = explanations.removed.cpu()[:, : items.shape[1]]
    imp = explanations.importance.cpu()[:, : items.shape[1]]
    ce_items, ce_imp = [], []
    for row in range(len(pairs)):
        sel = removed[row]
        ce_items.append(items[row][sel].tolist())
        vals = imp[row][sel].double().tolist()
        ce_imp.append([None if math.isnan(v) else v for v in vals])
    uids = pairs.users.cpu().tolist()
    sids = pairs.targets.cpu().tolist()
    raw_item = dict(zip(data.items["sid"].to_list(), data.items["raw_id"].to_list(), strict=True))
    return pl.DataFrame(
        {
            "uid": uids,
            "raw_user": _raw_users(data, uids),
            "sid": sids,
            "raw_item": [raw_item[s] for s in sids],
            "rank": pairs.ranks.cpu().tolist(),
            "found": outcomes.found.cpu().tolist(),
            "ce_items": ce_items,
            "ce_raw": [[raw_item[s] for s in ce] for ce in ce_items],
            "ce_importance": ce_imp,
            "length": outcomes.length.cpu().tolist(),
            "sufficient": outcomes.sufficient.cpu().tolist(),
            "necessary": outcomes.necessary.cpu().tolist(),
            "rank_after": outcomes.rank_after.cpu().tolist(),
        },
        schema_overrides={
            "ce_items": pl.List(pl.Int64),
            "ce_raw": pl.List(pl.String),
            "ce_importance": pl.List(pl.Float64),
        },
    )


def pairs_from_frame(
    data: PreparedDataset, recommender: MultVAERecommender, frame: pl.DataFrame, k: int
) -> tuple[PairBatch, Explanations]:
    """Rebuild pairs (with the *current* model's thresholds) and CEs from stored explanation rows."""
    users = frame["uid"].to_list()
    base = build_pairs(recommender, data.histories(sorted(set(users))), k)
    row_of = {
        (u, s): i
        for i, (u, s) in enumerate(zip(base.users.tolist(), base.targets.tolist(), strict=True))
    }
    hist = data.histories(users)
    dev = recommender.device
    # Thresholds: the (K+1)-th score of the user's current list (same for every pair of a user).
    per_user = {u: float(base.thresholds[i]) for (u, _), i in row_of.items()}
    per_user_rep = {u: int(base.replacements[i]) for (u, _), i in row_of.items()}
    thresholds = torch.tensor([per_user[u] for u in users], device=dev)
    items, mask = hist.items.to(dev), hist.mask.to(dev)
    pairs = PairBatch(
        users=torch.tensor(users, device=dev),
        targets=torch.tensor(frame["sid"].to_list(), device=dev),
        ranks=torch.tensor(frame["rank"].to_list(), device=dev),
        items=items,
        mask=mask,
        thresholds=thresholds,
        replacements=torch.tensor([per_user_rep[u] for u in users], device=dev),
        k=k,
    )
    removed = torch.zeros_like(mask)
    for row, ce in enumerate(frame["ce_items"].to_list()):
        if ce:
            removed[row] = torch.isin(items[row], torch.tensor(ce, device=dev)) & mask[row]
    return pairs, Explanations(removed, torch.full(mask.shape, float("nan"), device=dev))


def summarize_frame(frame: pl.DataFrame, method: str) -> dict[str, float | int | None]:
    """Table-2 metrics from stored per-pair rows (the same code path as :func:`summarize`)."""
    outcomes = PairOutcomes(
        found=torch.tensor(frame["found"].to_list(), dtype=torch.bool),
        length=torch.tensor(frame["length"].to_list(), dtype=torch.long),
        sufficient=torch.tensor(frame["sufficient"].to_list(), dtype=torch.bool),
        necessary=torch.tensor(frame["necessary"].to_list(), dtype=torch.bool),
        rank_after=torch.tensor(frame["rank_after"].fill_null(0).to_list(), dtype=torch.long),
    )
    out = summarize(outcomes, reports_validity=get_method(method).reports_validity)
    # what the run cost per pair, when the shards recorded it (see shards.explain_users)
    for key, column in (("calls_per_pair", "forward_calls"), ("s_per_pair", "explain_s")):
        if column in frame.columns and frame.height and frame[column].null_count() == 0:
            out[key] = float(frame[column].mean())  # type: ignore[arg-type]
    return out


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def config_dict(config: Any) -> dict[str, Any]:
    return asdict(config)
