"""Trained amortised-explainer networks under ``LCER_HOME/explainers/amortised/<key>/``.

A network is keyed by what determines it (:func:`network_key`: the recommender's model key,
the prepared data's fingerprint, K and the training config, seed included). Its folder holds
``network.pt`` (a ``state_dict`` of plain tensors, read back with ``weights_only=True``),
``train.json`` (what it was trained with, its shape, the training time) and ``curve.json``
(the mean loss of each epoch), each written atomically, ``network.pt`` last. Networks trained
or loaded in this process are kept in memory by key, so a shard loads each one once.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lcer_core.errors import DamagedDataError, InvalidParameterError, MissingDataError
from lcer_core.explainers.amortised import (
    KEY_PATTERN,
    AmortisedConfig,
    AmortisedNet,
    AmortisedTraining,
    fit_network,
)
from lcer_core.fsio import write_bytes_atomic, write_json_atomic
from lcer_core.keys import content_key
from lcer_core.paths import lcer_home

if TYPE_CHECKING:
    from lcer_core.datasets import PreparedDataset
    from lcer_core.explainers.base import ExplainerConfig
    from lcer_core.models import TrainedModel
    from lcer_core.pairs import PairBatch
    from lcer_core.recommender.base import Recommender
    from lcer_core.runs import RunSpec

__all__ = [
    "networks_dir",
    "network_key",
    "network_path",
    "remember",
    "load_network",
    "find_network",
    "train_network",
    "training_pairs",
    "ensure_network",
    "bind_network",
    "config_networks",
    "network_bytes",
    "adopt_network",
]

_MEMORY: dict[str, tuple[AmortisedNet, AmortisedTraining]] = {}
#: What the key of each network trained or received in this process was made of (model, data, k).
_MADE_OF: dict[str, dict[str, Any]] = {}


def networks_dir() -> Path:
    return lcer_home() / "explainers" / "amortised"


def network_key(*, model: str, data: str, k: int, training: AmortisedTraining) -> str:
    """The content key of the network trained for recommender ``model`` on data ``data``."""
    return content_key(
        {"kind": "amortised", "model": model, "data": data, "k": k, "training": training.dump()}
    )


def network_path(key: str) -> Path:
    if KEY_PATTERN.fullmatch(key) is None:
        raise InvalidParameterError(f"not a network key: {key!r}", param="network")
    return networks_dir() / key


def remember(key: str, net: AmortisedNet, training: AmortisedTraining) -> None:
    """Keep ``net`` in this process's memory under ``key``."""
    _MEMORY[key] = (net, training)


def find_network(key: str) -> bool:
    """True when the network ``key`` is in memory or saved under LCER_HOME."""
    return key in _MEMORY or (network_path(key) / "network.pt").is_file()


def config_networks(configs: Iterable[ExplainerConfig]) -> list[str]:
    """The keys of the networks ``configs`` read (an amortised run's ``network``, a warm-started
    LCER's ``warm_start``), sorted, each once."""
    found = {getattr(c, field, "") for c in configs for field in ("network", "warm_start")}
    return sorted(k for k in found if k)


def network_bytes(key: str) -> bytes:
    """The network ``key`` (memory, else LCER_HOME) as one weights-only file: its tensors, its
    training config and what its key was made of, for a worker without it
    (:func:`adopt_network`)."""
    net, training = load_network(key)
    meta = _MADE_OF.get(key)
    if meta is None:
        try:
            meta = json.loads((network_path(key) / "train.json").read_text())
        except (OSError, ValueError) as exc:
            raise MissingDataError(
                f"amortised network {key} cannot be sent: what it was trained on is unknown "
                f"({type(exc).__name__})"
            ) from None
    buf = io.BytesIO()
    torch.save(
        {
            "state": net.state_dict(),
            "n_items": net.n_items,
            "training": training.dump(),
            **{f: meta[f] for f in ("model", "data_fingerprint", "k")},
        },
        buf,
    )
    return buf.getvalue()


def adopt_network(key: str, content: bytes) -> None:
    """Keep in memory the network ``key`` sent as :func:`network_bytes` (read with
    ``weights_only``); content that is not that network's (its key recomputed from what it was
    made of) is a one-line error."""
    try:
        got = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        training = AmortisedTraining(**got["training"])
        made = network_key(
            model=str(got["model"]),
            data=str(got["data_fingerprint"]),
            k=int(got["k"]),
            training=training,
        )
        net = AmortisedNet(int(got["n_items"]), training.dim, training.hidden)
        net.load_state_dict(got["state"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        raise DamagedDataError(
            f"amortised network {key} sent to this worker cannot be read ({type(exc).__name__})"
        ) from None
    if made != key:
        raise DamagedDataError(f"the amortised network sent as {key} is network {made}")
    _MADE_OF[key] = {f: got[f] for f in ("model", "data_fingerprint", "k")}
    remember(key, net.eval(), training)


def load_network(key: str, *, n_items: int | None = None) -> tuple[AmortisedNet, AmortisedTraining]:
    """The network ``key`` (memory, else LCER_HOME) and its training config; a missing one, or
    one for another number of items, is a one-line error."""
    if not key:
        raise MissingDataError(
            "the amortised explainer has no trained network: run `lcer train-explainer DATASET "
            "--k K`, or `lcer explain DATASET --method amortised`, which trains it first"
        )
    if key not in _MEMORY:
        folder = network_path(key)
        if not (folder / "network.pt").is_file():
            raise MissingDataError(
                f"no trained amortised network {key} under {folder.parent}: run "
                "`lcer train-explainer DATASET --k K`"
            )
        try:
            meta = json.loads((folder / "train.json").read_text())
            training = AmortisedTraining(**meta["training"])
            state = torch.load(
                io.BytesIO((folder / "network.pt").read_bytes()),
                map_location="cpu",
                weights_only=True,
            )
            net = AmortisedNet(int(meta["n_items"]), training.dim, training.hidden)
            net.load_state_dict(state)
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            RuntimeError,
            pickle.UnpicklingError,
        ) as exc:
            raise DamagedDataError(
                f"amortised network {key} is damaged ({type(exc).__name__}): run "
                "`lcer train-explainer DATASET --k K --force`"
            ) from None
        _MEMORY[key] = (net.eval(), training)
    net, training = _MEMORY[key]
    if n_items is not None and net.n_items != n_items:
        raise InvalidParameterError(
            f"amortised network {key} was trained for {net.n_items} items, the recommender has "
            f"{n_items}",
            param="network",
        )
    return net, training


def training_pairs(recommender: Recommender, data: PreparedDataset, k: int) -> PairBatch:
    """The top-``k`` pairs of the dataset's training users (never a validation or test user)."""
    from lcer_core.pairs import build_pairs

    return build_pairs(recommender, data.histories(data.users_of("train")), k)


def train_network(
    recommender: Recommender,
    data: PreparedDataset,
    model_key: str,
    k: int,
    training: AmortisedTraining,
    *,
    save: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> str:
    """Train the network of (``model_key``, ``data``, ``k``, ``training``) on the training users'
    pairs, keep it in memory, save it under LCER_HOME (``save``) and return its key."""
    key = network_key(model=model_key, data=data.fingerprint, k=k, training=training)
    start = time.perf_counter()
    net, curve = fit_network(
        recommender, training_pairs(recommender, data, k), training, on_epoch=on_epoch
    )
    seconds = time.perf_counter() - start
    _MADE_OF[key] = {"model": model_key, "data_fingerprint": data.fingerprint, "k": k}
    if save:
        folder = network_path(key)
        meta: dict[str, Any] = {
            "key": key,
            "dataset": data.name,
            "model": model_key,
            "data_fingerprint": data.fingerprint,
            "k": k,
            "n_items": net.n_items,
            "training": training.dump(),
            "n_train_users": len(data.users_of("train")),
            "train_seconds": seconds,
            "device": str(recommender.device),
        }
        write_json_atomic(folder / "curve.json", {"epoch_mean_loss": curve})
        write_json_atomic(folder / "train.json", meta)
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        write_bytes_atomic(folder / "network.pt", buf.getvalue())
    remember(key, net, training)
    return key


def ensure_network(
    model: TrainedModel,
    data: PreparedDataset,
    k: int,
    training: AmortisedTraining | None = None,
    *,
    no_train: bool = False,
    notify: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> str:
    """The key of the network for ``model``, ``data`` and ``k``, training it first if it is
    missing (``notify`` gets one line saying so); with ``no_train`` a missing one is refused."""
    training = training or AmortisedTraining()
    key = network_key(model=model.key, data=data.fingerprint, k=k, training=training)
    if find_network(key):
        return key
    if no_train:
        raise MissingDataError(
            f"no trained amortised network for {data.name} k={k}: run "
            f"`lcer train-explainer {data.name} --k {k}` first"
        )
    if notify is not None:
        notify(
            f"no amortised network for {data.name} k={k} yet: training it on the "
            f"{len(data.users_of('train'))} training users first ({training.epochs} epochs)"
        )
    rec = model.recommender()
    return train_network(rec, data, model.key, k, training, on_epoch=on_epoch)


def bind_network(
    config: ExplainerConfig,
    model: TrainedModel,
    data: PreparedDataset,
    k: int,
    *,
    no_train: bool = False,
    notify: Callable[[str], None] | None = None,
) -> ExplainerConfig:
    """``config`` with its network bound, for an amortised config without one (trained first
    where missing, see :func:`ensure_network`); any other config unchanged."""
    if not isinstance(config, AmortisedConfig) or config.network:
        return config
    key = ensure_network(model, data, k, no_train=no_train, notify=notify)
    return dataclasses.replace(config, network=key)


def needs_network(config: ExplainerConfig) -> bool:
    """Whether ``config`` is an amortised configuration with no network bound yet."""
    return isinstance(config, AmortisedConfig) and not config.network


def bind_runs(
    specs: list[RunSpec],
    model: TrainedModel,
    data: PreparedDataset,
    *,
    notify: Callable[[str], None] | None = None,
) -> list[RunSpec]:
    """``specs`` with every amortised run's network bound (trained first where missing, on the
    training users of ``data``), re-keyed: the network is part of what determines the run."""
    from lcer_core.runs import run_spec

    out = []
    for spec in specs:
        config = bind_network(spec.config, model, data, spec.k, notify=notify)
        if config is spec.config:
            out.append(spec)
            continue
        out.append(
            run_spec(
                dataset=spec.dataset,
                method=spec.method,
                k=spec.k,
                seed=spec.seed,
                n_users=spec.n_users,
                model_key=spec.model_key,
                config=config,
                split_seed=spec.split_seed,
            )
        )
    return out
