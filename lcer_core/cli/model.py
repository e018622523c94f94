"""``lcer explain``: explain a dataset's test users, or one user in words."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lcer_core.cli import flags
from lcer_core.cli.output import printable
from lcer_core.errors import InvalidParameterError, MissingDataError
from lcer_core.paper import PAPER_RECOMMENDER as DEFAULT_RECOMMENDER

if TYPE_CHECKING:
    from lcer_core.datasets import PreparedDataset
    from lcer_core.explainers import ExplainerConfig
    from lcer_core.explanations import Progress
    from lcer_core.models import TrainedModel

__all__ = ["explain", "ensure_model_and_data"]


def ensure_model_and_data(  # noqa: ANN201
    dataset: str,
    *,
    no_train: bool,
    epochs: int | None = None,
    recommender: str = DEFAULT_RECOMMENDER,
):
    """The latest trained ``recommender`` of ``dataset`` and its prepared data, preparing and
    training what is missing (one line on stderr says so); with ``no_train``, a missing one is
    refused."""
    from lcer_core.cli.progress import epoch_bar
    from lcer_core.datasets import ensure_prepared, is_prepared
    from lcer_core.models import (
        check_model_data,
        check_trainable,
        ensure_model,
        find_model,
        load_model,
        recommender_config,
    )
    from lcer_core.recommender import kind_of

    config = recommender_config(recommender, epochs)
    kind = kind_of(config)
    model = find_model(dataset, recommender=recommender)
    if no_train:
        if model is None and recommender == DEFAULT_RECOMMENDER:
            load_model(dataset)  # the one-line refusal that names `lcer train`
        if model is None:
            raise MissingDataError(
                f"no trained {kind.title} for {dataset!r}: "
                f"run `lcer train {dataset} --recommender {recommender}` first"
            )
        if not is_prepared(dataset):
            raise MissingDataError(
                f"dataset {dataset!r} is not prepared: run `lcer prepare {dataset}` first"
            )
    if model is not None:
        data = ensure_prepared(dataset)
        check_model_data(model, data)
        return model, data
    check_trainable(dataset, config)
    todo = f"training {kind.title}"
    todo = todo if is_prepared(dataset) else f"preparing the data and {todo}"
    typer.echo(
        f"no trained model for {dataset} yet: {todo} ({kind.epochs(config)} epochs) first",
        err=True,
    )
    data = ensure_prepared(dataset)
    with epoch_bar(f"train {kind.title} {dataset}", kind.epochs(config)) as on_epoch:
        model, _ = ensure_model(data, config, on_epoch=on_epoch)
    return model, data


def _progress_bar(label: str):  # noqa: ANN202
    """A transient bar on stderr, only on a terminal: stdout stays clean for --json and pipes."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        transient=True,
        console=console,
        disable=not console.is_terminal,
    )
    return bar


def _explainer_config(
    method: str, dataset: str, sets: list[str] | None, **options: float | int | None
) -> ExplainerConfig:
    """``method``'s config from the shorthand ``options`` it declares (the others do not apply
    to it) and ``--set``, the paper's for ``dataset`` where none is given: one run's planner."""
    from lcer_core.cli.assignments import parse_assignments
    from lcer_core.explainers import get_method
    from lcer_core.runs import explainer_configs, split_options

    budget = options.pop("budget", None)
    fixed, grid = split_options(method, options)
    generic = parse_assignments(sets, get_method(method).config_type, flag="--set", many=False)
    fixed = {**fixed, **{name: values[0] for name, values in grid.items()}, **generic}
    [config] = explainer_configs(method, dataset, fixed, budget=budget)
    return config


def explain(
    dataset: str = typer.Argument(..., help="Dataset name, e.g. ml-100k."),
    method: str = typer.Option(
        "lcer",
        "--method",
        "-m",
        help="lcer, fia, accent, kaffes, kaffes-topk, lcer-plus or amortised.",
    ),
    k: flags.K = 5,
    alpha: flags.Alpha = None,
    lam: flags.Lam = None,
    users: flags.Users = None,
    steps: flags.Steps = None,
    budget: flags.Budget = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="name=value: an option of the method (repeatable)."),
    ] = None,
    seed: flags.Seed = 0,
    user: str = typer.Option(
        None, "--user", help="Explain this user (id of the raw file), in words."
    ),
    item: str = typer.Option(
        None, "--item", help="With --user: only this recommended item (raw id)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    no_train: bool = typer.Option(
        False, "--no-train", help="Refuse (exit 2) instead of preparing data or training a model."
    ),
    epochs: flags.Epochs = None,
    recommender: str = typer.Option(
        DEFAULT_RECOMMENDER,
        help="The recommender whose latest model is explained, by its registry name (default: the paper's).",
    ),
) -> None:
    """Explain recommendations with METHOD on the latest trained model (prepared and trained first if needed)."""
    from lcer_core import checks
    from lcer_core.datasets import get_spec
    from lcer_core.models import recommender_config
    from lcer_core.pairs import test_users as first_test_users

    if budget is not None:
        from lcer_core.explainers import get_method

        if not get_method(method).config_type.budget_option:
            raise InvalidParameterError(f"--budget: method {method} has no search budget")
    config = _explainer_config(
        method, dataset, set_, alpha=alpha, lam=lam, steps=steps, budget=budget
    )
    checks.check_k(k)
    if users is not None:
        checks.check_users(users)
    checks.check_seed(seed)
    if item is not None and user is None:
        raise InvalidParameterError("--item needs --user")
    get_spec(dataset)  # an unknown name fails here
    recommender_config(recommender, epochs)  # an unknown name or a bad --epochs fails here
    model, data = ensure_model_and_data(
        dataset, no_train=no_train, epochs=epochs, recommender=recommender
    )
    from lcer_core.amortised_store import bind_network

    config = bind_network(
        config, model, data, k, no_train=no_train, notify=lambda line: typer.echo(line, err=True)
    )
    if user is not None:  # unknown ids fail here, before the progress bar starts
        data.uid_of(user)
        if item is not None:
            data.sid_of(item)
    else:
        test_users = first_test_users(data, users, strict=True)
    bar = _progress_bar(f"{method} {dataset}")
    with bar:
        task = bar.add_task("explain", total=1)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if user is not None:
            from lcer_core.explain_user import explain_one_user

            result = explain_one_user(
                data,
                model,
                user,
                k=k,
                method=method,
                item=item,
                seed=seed,
                progress=progress,
                config=config,
            )
        else:
            result = _explain_test_users(
                data,
                model,
                test_users,
                method=method,
                config=config,
                k=k,
                seed=seed,
                progress=progress,
            )
    title = f"User {user} of {dataset}, top-{k} by {model.kind.title}, explained by {method}:"
    _print_result(result, as_json=as_json, title=None if user is None else title)


def _explain_test_users(
    data: PreparedDataset,
    model: TrainedModel,
    users: list[int],
    *,
    method: str,
    config: ExplainerConfig,
    k: int,
    seed: int,
    progress: Progress,
) -> dict[str, Any]:
    """Explain the top-``k`` of ``users`` with ``method`` configured by ``config``: what was
    run (its declared options included) and Table 2's metrics, as one dict."""
    from lcer_core.explainers import get_method
    from lcer_core.frames import explanation_frame, summarize_frame
    from lcer_core.metrics import evaluate_pairs
    from lcer_core.pairs import make_pairs

    explainer_type = get_method(method)
    rec = model.recommender()
    pairs = make_pairs(rec, data, users, k)
    expl = explainer_type(config).explain(rec, pairs, seed=seed, progress=progress)
    frame = explanation_frame(data, pairs, expl, evaluate_pairs(rec, pairs, expl))
    return {
        "dataset": data.name,
        "method": method,
        "k": k,
        "model": model.key,
        **{name: getattr(config, name) for name in config.options},
        "seed": seed,
        **summarize_frame(frame, explainer_type.reports_validity),
    }


def _print_result(result: dict[str, Any], *, as_json: bool, title: str | None) -> None:
    """``result`` as JSON, as sentences under ``title`` (one user), or as Table 2's metrics."""
    if as_json:
        typer.echo(
            json.dumps(
                result,
                indent=2,
                default=lambda v: None if isinstance(v, float) and math.isnan(v) else v,
            )
        )
    elif title is not None:
        from lcer_core.explain_user import sentences

        typer.echo(printable(title))
        for line in sentences(result):
            typer.echo(f"  {printable(line)}")
    else:
        for key in ("n_pairs", "val_pct", "len", "ps_pct", "pn_pct", "fns_pct"):
            v = result[key]
            typer.echo(
                f"{key:>8}: {'–' if v is None else (f'{v:.3f}' if isinstance(v, float) else v)}"
            )
