"""``lcer run``, ``lcer sweep`` and ``lcer train``: the Prefect flows, started from the command line.

With no ``PREFECT_API_URL`` the flows run in Prefect's embedded mode (a temporary local
server whose database lies under ``PREFECT_HOME``, by default ``LCER_HOME/prefect-home``);
with ``PREFECT_API_URL`` set they report to that server. Everything is validated before
Prefect starts, so a bad option costs one line and no server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lcer_core import paths
from lcer_core.cli import flags
from lcer_core.cli.progress import Session, session
from lcer_core.errors import InvalidParameterError
from lcer_core.paper import PAPER_RECOMMENDER as DEFAULT_RECOMMENDER

if TYPE_CHECKING:
    from pathlib import Path

    from prefect import Flow

    from lcer_core.plan import Plan

__all__ = ["run", "run_pipeline", "sweep", "train", "parse_list", "Where"]


def parse_list(text: str | None, kind: Callable[[str], Any], option: str) -> list[Any] | None:
    """``"5,10"`` as ``[5, 10]`` (None stays None); a bad item is a one-line error naming it."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(kind(part))
        except ValueError:
            raise InvalidParameterError(
                f"{option}: {part!r} is not a valid {kind.__name__}"
            ) from None
    if not out:
        raise InvalidParameterError(f"{option} is empty")
    return out


def _check_runner(runner: str, address: str | None) -> None:
    """The runner checks of :mod:`flows.runner` (which imports no Prefect): before Prefect starts."""
    from flows.runner import check_runner

    check_runner(runner, address)


def prefect_environment() -> None:
    """Prefect's settings for the flows (:func:`flows.env.prefect_environment`): before importing a flow."""
    from flows.env import prefect_environment

    prefect_environment()


def _check_storage(storage: str | None) -> None:
    """Refuse a storage URL (``--storage`` or ``LCER_STORAGE``) that cannot be written; the flow
    and the workers it starts then read it from ``LCER_STORAGE``."""
    from lcer_core.remote import STORAGE_ENV, check_storage, storage_url

    url = storage_url(storage)
    if storage is not None and url is None:
        raise InvalidParameterError("--storage is empty")
    if url is not None:
        os.environ[STORAGE_ENV] = check_storage(url)


def _with_runner(
    flow: Flow, runner: str, address: str | None, methods: list[str] | None = None
) -> Flow:
    from flows.runner import make_task_runner

    return flow.with_options(task_runner=make_task_runner(runner, address, methods))


def _print_results(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from lcer_core.store.formatting import cell

    devices = sorted({str(r["device"]) for r in rows if r.get("device")})
    table = Table(title=cell(f"explanation runs (on {', '.join(devices) or 'no device'})"))
    columns = (
        "dataset",
        "method",
        "k",
        "α",
        "λ",
        "pairs",
        "Val %",
        "Len",
        "PS %",
        "PN %",
        "F_NS %",
        "run_id",
    )
    for col in columns:
        left = col in ("dataset", "method", "run_id")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)

    def num(v: Any, fmt: str = ".2f") -> str:
        return "–" if v is None else format(v, fmt)

    for r in rows:
        cells = (
            r["dataset"],
            r["method"],
            str(r["k"]),
            num(r["alpha"], "g"),
            num(r["lam"], "g"),
            str(r["n_pairs"]),
            num(r["val_pct"]),
            num(r["len"], ".3f"),
            num(r["ps_pct"]),
            num(r["pn_pct"]),
            num(r["fns_pct"]),
            r["run_id"],
        )
        table.add_row(*map(cell, cells))  # data, never markup
    console = Console()
    if not console.is_terminal:  # a pipe or a file: no terminal width to fit, keep rows whole
        console = Console(width=200)
    console.print(table)


def run(
    datasets: Annotated[
        list[str] | None, typer.Argument(help="Datasets (default: ml-100k).")
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods (default: the paper's lcer,fia,accent,kaffes; also kaffes-topk)."
        ),
    ] = None,
    method: flags.MethodNames = None,
    set_: flags.Sets = None,
    grid: flags.Grids = None,
    plan_file: flags.PlanFile = None,
    k: flags.Ks = None,
    users: flags.Users = None,
    steps: flags.Steps = None,
    budget: flags.Budget = None,
    seed: flags.OptionalSeed = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated seeds: one model trained per seed and explained with it "
            "(replaces --seed)."
        ),
    ] = None,
    split_seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated split seeds: each its own assignment of users to train, "
            "validation and test (data/DATASET/split-SEED/), its own model and runs "
            "(default: the dataset's one split)."
        ),
    ] = None,
    alpha: flags.Alpha = None,
    lam: flags.Lams = None,
    shard_size: flags.ShardSize = None,
    epochs: flags.Epochs = None,
    recommender: flags.Recommender = None,
    recommender_option: flags.RecommenderOptions = None,
    show_plan: flags.ShowPlan = False,
    runner: flags.Runner = "threads",
    address: flags.Address = None,
    storage: flags.Storage = None,
    explain_deployment: flags.ExplainDeployment = None,
    verbose: flags.Verbose = False,
) -> None:
    """Run the whole Prefect pipeline: prepare, train, explain (fanned out), evaluate, store, track."""
    from lcer_core.cli.planning import plan_from_flags

    seed_list = parse_list(seeds, int, "--seeds")
    if seed_list and seed is not None:
        raise InvalidParameterError("--seed and --seeds cannot be combined (--seeds sets both)")
    plan = plan_from_flags(
        plan_file,
        {
            "datasets": datasets or None,
            "ks": parse_list(k, int, "--k"),
            "n_users": users,
            "seed": seed,
            "seeds": seed_list,
            "split_seeds": parse_list(split_seeds, int, "--split-seeds"),
            "shard_size": shard_size,
            "epochs": epochs,
            "budget": budget,
            "recommender": recommender,
            "recommender_options": _recommender_options(recommender, plan_file, recommender_option),
        },
        methods=[*(parse_list(methods, str, "--methods") or []), *(method or [])] or None,
        shorthand={
            "alpha": None if alpha is None else [alpha],
            "lam": parse_list(lam, float, "--lam"),
            "steps": steps,
        },
        sets=set_,
        grids=grid,
    )
    if show_plan:
        typer.echo(plan.model_dump_json(indent=2))
        return
    _check_trainable(plan)
    rows, shown = run_pipeline(
        plan, Where(runner, address, storage, explain_deployment), verbose=verbose
    )
    _print_results(rows)
    pages = [paths.lcer_home() / "work" / "reports" / f"{d}.html" for d in plan.datasets]
    typer.echo(
        shown.summary(f"{len(rows)} explanation runs", [p for p in pages if p.is_file()]), err=True
    )


@dataclass(frozen=True)
class Where:
    """Where the flows run: the task runner, its Ray address and the storage URL."""

    runner: str = "threads"
    address: str | None = None
    storage: str | None = None
    #: Explanations as flow runs of this deployment (another work pool), not on ``runner``.
    explain_deployment: str | None = None


def run_pipeline(
    plan: Plan, where: Where = Where(), *, verbose: bool = False
) -> tuple[list[dict[str, Any]], Session]:
    """Run the pipeline flow on ``plan`` (validated when built), after the runner and storage
    checks; its rows and the display session."""
    return _run_flow("pipeline", plan, where, verbose=verbose)


def _run_flow(
    name: str, plan: Plan, where: Where, *, verbose: bool
) -> tuple[list[dict[str, Any]], Session]:
    """Check where ``plan`` runs, then run the flow ``name`` (pipeline or sweep) on it."""
    _check_runner(where.runner, where.address)
    if where.explain_deployment is not None and where.runner != "threads":
        raise InvalidParameterError(
            "--explain-deployment runs the explanations on that deployment's work pool: "
            "it takes no --runner (set LCER_TASK_RUNNER on that pool's worker instead)"
        )
    _check_storage(where.storage)
    prefect_environment()
    if where.explain_deployment is not None:
        _check_deployment(where.explain_deployment)
    if name == "sweep":
        from flows.sweep import lcer_sweep as chosen
    else:
        from flows.pipeline import lcer_pipeline as chosen

    flow = _with_runner(chosen, where.runner, where.address, plan.methods)
    with session(verbose=verbose, plain_fallback=where.runner != "threads") as shown:
        rows = flow(plan=plan, explain_deployment=where.explain_deployment)
    return rows, shown


def _check_deployment(name: str) -> None:
    """``--explain-deployment``: a server to reach, and a deployment there that runs this code."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise InvalidParameterError(
            "--explain-deployment needs the Prefect server its work pools use: set PREFECT_API_URL"
        )
    from flows.deploy import check_deployment_code

    check_deployment_code(name)


def sweep(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    alphas: Annotated[
        str | None, typer.Option(help="Comma-separated α values (default: the paper's grid).")
    ] = None,
    lams: Annotated[
        str | None, typer.Option(help="Comma-separated λ values (default: the paper's grid).")
    ] = None,
    k: flags.K = 5,
    users: flags.Users = None,
    steps: flags.Steps = None,
    seed: flags.Seed = 0,
    shard_size: flags.ShardSize = None,
    epochs: flags.Epochs = None,
    runner: flags.Runner = "threads",
    address: flags.Address = None,
    verbose: flags.Verbose = False,
) -> None:
    """The α/λ grid of LCER over one trained model: one MLflow child run per grid point under a parent run."""
    from lcer_core.plan import sweep_plan

    given = {"shard_size": shard_size, "epochs": epochs}
    plan = sweep_plan(
        dataset,
        grid={
            "alpha": parse_list(alphas, float, "--alphas"),
            "lam": parse_list(lams, float, "--lams"),
        },
        fixed={} if steps is None else {"steps": steps},
        ks=[k],
        n_users=users,
        seed=seed,
        **{n: v for n, v in given.items() if v is not None},
    )
    rows, shown = _run_flow("sweep", plan, Where(runner, address), verbose=verbose)
    _print_results(rows)
    typer.echo(shown.summary(f"{len(rows)} explanation runs"), err=True)


def _recommender_options(
    recommender: str | None, plan_file: Path | None, given: list[str] | None
) -> dict[str, Any] | None:
    """``--recommender-option name=value ...`` typed by the recommender's config (the plan
    file's recommender when ``--recommender`` is not given); None when there are none."""
    if not given:
        return None
    from lcer_core.cli.assignments import parse_assignments
    from lcer_core.plan import load_plan
    from lcer_core.recommender.registry import get_recommender

    name = recommender or (load_plan(plan_file) if plan_file else {}).get("recommender")
    kind = get_recommender(name or DEFAULT_RECOMMENDER)
    return parse_assignments(given, kind.config_type, flag="--recommender-option", many=False)


def _check_trainable(plan: Plan) -> None:
    """A prepared dataset of ``plan`` its recommender cannot train on (EASE above its catalogue
    limit) is one line here, before Prefect starts."""
    from lcer_core.models import check_trainable, recommender_config

    config = recommender_config(
        plan.recommender, plan.training_options().get("epochs"), plan.recommender_fields()
    )
    for dataset in plan.datasets:
        check_trainable(dataset, config)


def _training(
    epochs: int | None, recommender: str = DEFAULT_RECOMMENDER, datasets: Sequence[str] = ()
) -> int:
    """``--epochs`` (None: the default recommender's), checked by ``recommender``'s config; an
    unknown recommender, or a prepared dataset it cannot train on, is one line here."""
    from lcer_core.models import check_trainable, recommender_config

    config = recommender_config(recommender, epochs)
    for dataset in datasets:
        check_trainable(dataset, config)
    return epochs if epochs is not None else recommender_config().epochs


def train(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: the recommender's own).")
    ] = None,
    recommender: flags.Recommender = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the model's initialisation and batches.")
    ] = None,
    verbose: flags.Verbose = False,
) -> None:
    """Train the recommender on DATASET (unless the same model exists) and register it in MLflow as RECOMMENDER-DATASET."""
    from lcer_core.checks import check_seed
    from lcer_core.datasets import get_spec
    from lcer_core.models import MODEL_SEED

    get_spec(dataset)
    recommender = recommender or DEFAULT_RECOMMENDER
    epochs = _training(epochs, recommender, [dataset])
    model_seed = check_seed(MODEL_SEED if seed is None else seed)
    prefect_environment()
    from flows.train import lcer_train

    with session(verbose=verbose) as shown:
        out = lcer_train(dataset=dataset, epochs=epochs, seed=model_seed, recommender=recommender)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in out["metrics"].items() if k != "best_epoch")
    verb = "trained" if out["trained_now"] else "already trained"
    typer.echo(
        f"{dataset}: model {out['model_key']} {verb} ({metrics}); registered {out['registered_model']}"
    )
    typer.echo(shown.summary("done"), err=True)
