"""``lcer train-explainer``: train the amortised explainer's network once, on training users."""

from __future__ import annotations

import json

import typer

__all__ = ["train_explainer"]


def train_explainer(
    dataset: str = typer.Argument(..., help="Dataset name, e.g. ml-100k."),
    k: int = typer.Option(5, "--k", help="Length of the recommendation list it explains."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs (default: 8)."),
    max_pairs: int = typer.Option(
        None, "--max-pairs", help="Train on a seeded sample of this many pairs (default: all)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the network's initialisation and noise."),
    force: bool = typer.Option(False, "--force", help="Train again even if it is saved."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    no_train: bool = typer.Option(
        False,
        "--no-train",
        help="Refuse (exit 2) instead of preparing data or training a recommender.",
    ),
) -> None:
    """Train the amortised explainer's network for DATASET and K on the training users' pairs
    (never a validation or test user) with LCER's objective, save it under LCER_HOME and
    register it in MLflow (amortised-DATASET, its loss per epoch as train_loss)."""
    from dataclasses import replace

    from lcer_core import checks
    from lcer_core.amortised_store import (
        find_network,
        network_key,
        network_path,
        train_network,
    )
    from lcer_core.cli.model import ensure_model_and_data
    from lcer_core.datasets import get_spec
    from lcer_core.explainers.amortised import AmortisedTraining

    checks.check_k(k)
    checks.check_seed(seed)
    training = AmortisedTraining(seed=seed, max_pairs=max_pairs)
    if epochs is not None:
        training = replace(training, epochs=epochs)
    get_spec(dataset)
    model, data = ensure_model_and_data(dataset, no_train=no_train)
    key = network_key(model=model.key, data=data.fingerprint, k=k, training=training)
    trained = force or not find_network(key)
    if trained:
        train_network(
            model.recommender(),
            data,
            model.key,
            k,
            training,
            on_epoch=lambda e, loss: typer.echo(f"epoch {e}: mean loss {loss:.4f}", err=True),
        )
    from tasks.explainer_network import register_network

    reg = register_network(dataset, key)
    folder = network_path(key)
    meta = json.loads((folder / "train.json").read_text())
    curve = json.loads((folder / "curve.json").read_text())["epoch_mean_loss"]
    registered = {"run_id": reg.run_id, "name": f"amortised-{dataset}", "version": reg.version}
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **meta,
                    "trained_now": trained,
                    "curve": curve,
                    "path": str(folder),
                    "mlflow": registered,
                }
            )
        )
        return
    typer.echo(
        f"amortised network {key} for {dataset} k={k} ({'trained' if trained else 'already saved'}"
        f" in {meta['train_seconds']:.1f} s, final mean loss {curve[-1]:.4f}): {folder}; "
        f"registered as amortised-{dataset} version {reg.version}"
    )
