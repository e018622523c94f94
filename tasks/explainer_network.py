"""The amortised explainer's network in MLflow: one training run per network key, registered.

Framework-free but for MLflow (no Prefect): ``lcer train-explainer`` calls it, and so does the
pipeline's ``bind-explainer-networks`` step for each network it binds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lcer_core.amortised_store import network_path
from tasks import mlflow_client

__all__ = ["NetworkRegistration", "register_network"]


@dataclass(frozen=True)
class NetworkRegistration:
    """Where a network is in MLflow (``amortised-DATASET``); ``new``: registered by this call."""

    key: str
    run_id: str
    version: int
    new: bool


def register_network(dataset: str, key: str) -> NetworkRegistration:
    """Log network ``key`` (saved under LCER_HOME) with its training curve and register it,
    unless a finished run of it exists already (then that one)."""
    mlflow_client.configure()
    mlflow_client.ensure_experiment(dataset)
    found = mlflow_client.finished_runs_tagged(
        dataset, mlflow_client.NETWORK_KEY_TAG, key, max_results=1
    )
    name = mlflow_client.registered_network_name(dataset)
    if found:
        run_id = found[0].info.run_id
        versions = mlflow_client.client().search_model_versions(
            f"name = '{name}' and run_id = '{run_id}'"
        )
        if versions:
            version = max(int(v.version) for v in versions)
            return NetworkRegistration(key, run_id, version, new=False)
    folder = network_path(key)
    meta = json.loads((folder / "train.json").read_text())
    curve = json.loads((folder / "curve.json").read_text())["epoch_mean_loss"]
    params = {
        "network_key": key,
        "model_key": meta["model"],
        "data_fingerprint": meta["data_fingerprint"],
        "k": meta["k"],
        "n_items": meta["n_items"],
        "n_train_users": meta["n_train_users"],
        "device": meta["device"],
        **{f"train_{n}": v for n, v in meta["training"].items()},
    }
    out = mlflow_client.log_network(
        dataset,
        key,
        folder,
        params=params,
        curve=curve,
        metrics={"train_seconds": meta["train_seconds"]},
    )
    return NetworkRegistration(key, out["run_id"], out["version"], new=True)
