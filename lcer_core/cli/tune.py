"""``lcer tune``: choose a method's options on validation users (never on test users)."""

from __future__ import annotations

import json

import typer

from lcer_core.errors import InvalidParameterError

__all__ = ["tune"]


def tune(
    dataset: str = typer.Argument(..., help="Dataset name, e.g. ml-100k."),
    method: str = typer.Option(..., "--method", "-m", help="The method to tune."),
    grid: list[str] = typer.Option(
        None, "--grid", help="name=a,b,c: values of one declared option to try (repeatable)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="name=value: a declared option held fixed (repeatable)."
    ),
    k: int = typer.Option(5, "--k", help="Length of the recommendation list."),
    users: int = typer.Option(None, "--users", help="The first N validation users (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the explainer's randomness."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    no_train: bool = typer.Option(
        False, "--no-train", help="Refuse (exit 2) instead of preparing data or training a model."
    ),
) -> None:
    """Try every combination of --grid on the validation users of DATASET and choose by strict F_NS.

    Reads the latest trained model and the validation users' histories only: the test users
    that Table 2 reports play no part in the choice.
    """
    from lcer_core import checks
    from lcer_core.cli.assignments import parse_assignments
    from lcer_core.cli.model import ensure_model_and_data
    from lcer_core.datasets import get_spec
    from lcer_core.explainers import get_method
    from lcer_core.tuning import tune as run_tuning
    from lcer_core.tuning import tuning_configs

    config_type = get_method(method).config_type
    grid_values = parse_assignments(grid, config_type, flag="--grid", many=True)
    fixed = parse_assignments(set_, config_type, flag="--set", many=False)
    if not grid_values:
        raise InvalidParameterError("--grid: give at least one option to tune (name=a,b)")
    checks.check_k(k)
    checks.check_seed(seed)
    if users is not None:
        checks.check_users(users)
    get_spec(dataset)
    tuning_configs(method, dataset, grid_values, fixed)  # every combination valid, before work
    model, data = ensure_model_and_data(dataset, no_train=no_train)
    typer.echo(
        f"tuning {method} on the validation users of {dataset}: "
        f"{len(tuning_configs(method, dataset, grid_values, fixed))} configuration(s)",
        err=True,
    )
    frame = run_tuning(
        data,
        model,
        method,
        k=k,
        grid=grid_values,
        fixed=fixed,
        n_users=users,
        seed=seed,
        no_train=no_train,
        notify=lambda line: typer.echo(line, err=True),
    )
    chosen = frame.filter("chosen").row(0, named=True)
    if as_json:
        payload = {
            "dataset": dataset,
            "method": method,
            "k": k,
            "split": "val",
            "chosen": {n: chosen[n] for n in grid_values},
            "rows": frame.to_dicts(),
        }
        typer.echo(json.dumps(payload, default=str))
        return
    from lcer_core.store import print_frame

    print_frame(frame, "table")
    picked = ", ".join(f"{n}={chosen[n]}" for n in grid_values)
    typer.echo(
        f"chosen on {chosen['users']} validation users: {picked} "
        f"(strict F_NS {chosen['strict_fns_pct']:.2f})"
    )
