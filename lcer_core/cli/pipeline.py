"""``lcer run``, ``lcer sweep`` and ``lcer train``: the Prefect flows, started from the command line.

With no ``PREFECT_API_URL`` the flows run in Prefect's embedded mode (a temporary local
server whose database lies under ``PREFECT_HOME``, by default ``LCER_HOME/prefect-home``);
with ``PREFECT_API_URL`` set they report to that server. Everything is validated before
Prefect starts, so a bad option costs one line and no server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lcer_core import paths
from lcer_core.cli.progress import Session, session
from lcer_core.errors import InvalidParameterError

if TYPE_CHECKING:
    from prefect import Flow

__all__ = ["run", "run_pipeline", "sweep", "train", "parse_list"]


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
    k: Annotated[
        str | None, typer.Option("--k", help="Comma-separated list lengths K (default: 5,10).")
    ] = None,
    users: Annotated[
        int | None, typer.Option(help="Explain the first N test users (default: all).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="LCER optimisation steps (default: LCER's).")
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            help="Search budget of the methods that have one (random-prefix: orders, "
            "kaffes*: max_queries, lcer-plus: candidates, amortised: budget; default: each "
            "method's)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the explanations.")] = 0,
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
    alpha: Annotated[
        float | None, typer.Option(help="LCER's α (default: the paper's for the dataset).")
    ] = None,
    lam: Annotated[
        str | None,
        typer.Option(help="LCER's λ, or a comma-separated list (default: the paper's)."),
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Test users per explanation task.")] = 25,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Mult-VAE training epochs (when it must be trained; default: Mult-VAE's)."
        ),
    ] = None,
    runner: Annotated[str, typer.Option(help="Task runner: threads or ray.")] = "threads",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (with --runner ray).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Storage URL (fsspec, e.g. file:///shared/folder or s3://bucket/prefix) "
            "through which explanations on another work pool travel; default $LCER_STORAGE."
        ),
    ] = None,
    explain_deployment: Annotated[
        str | None,
        typer.Option(
            help="Run the explanations as a flow run of this deployment (FLOW/DEPLOYMENT, e.g. "
            "lcer-explain/lcer-explain: the gpu work pool) on the server at $PREFECT_API_URL."
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print the full log stream instead of progress bars."),
    ] = False,
) -> None:
    """Run the whole Prefect pipeline: prepare, train, explain (fanned out), evaluate, store, track."""
    rows, shown = run_pipeline(
        list(datasets or ["ml-100k"]),
        methods=methods,
        k=k,
        users=users,
        steps=steps,
        budget=budget,
        seed=seed,
        seeds=seeds,
        split_seeds=split_seeds,
        alpha=alpha,
        lam=lam,
        shard_size=shard_size,
        epochs=epochs,
        runner=runner,
        address=address,
        storage=storage,
        explain_deployment=explain_deployment,
        verbose=verbose,
    )
    _print_results(rows)
    pages = [
        paths.lcer_home() / "work" / "reports" / f"{d}.html"
        for d in dict.fromkeys(datasets or ["ml-100k"])
    ]
    typer.echo(
        shown.summary(f"{len(rows)} explanation runs", [p for p in pages if p.is_file()]), err=True
    )


def run_pipeline(
    names: list[str],
    *,
    methods: str | None = None,
    k: str | None = None,
    users: int | None = None,
    steps: int | None = None,
    budget: int | None = None,
    seed: int = 0,
    seeds: str | None = None,
    split_seeds: str | None = None,
    alpha: float | None = None,
    lam: str | None = None,
    shard_size: int = 25,
    epochs: int | None = None,
    runner: str = "threads",
    address: str | None = None,
    storage: str | None = None,
    explain_deployment: str | None = None,
    verbose: bool = False,
) -> tuple[list[dict[str, Any]], Session]:
    """Validate ``lcer run``'s options, then run the pipeline flow; its rows and the display session."""
    from lcer_core.explainers import PAPER_METHODS
    from lcer_core.runs import DEFAULT_KS

    seed_list = parse_list(seeds, int, "--seeds") if seeds is not None else None
    if seeds is not None and not seed_list:
        raise InvalidParameterError("--seeds must name at least one seed")
    if seed_list and seed != 0:
        raise InvalidParameterError("--seed and --seeds cannot be combined (--seeds sets both)")
    split_list = parse_list(split_seeds, int, "--split-seeds") if split_seeds is not None else None
    ks = parse_list(k, int, "--k") or list(DEFAULT_KS)
    lam_list = parse_list(lam, float, "--lam") if lam is not None else None
    options = {
        "alpha": None if alpha is None else [alpha],
        "lam": lam_list,
        "steps": steps,
        "budget": budget,
    }
    method_list = _validate_explanations(
        names,
        parse_list(methods, str, "--methods") or list(PAPER_METHODS),
        options,
        ks=ks,
        users=users,
        seeds=seed_list or [seed],
        shard_size=shard_size,
        runner=runner,
        address=address,
        split_seeds=split_list or [],
    )
    epochs = _training(epochs)
    if explain_deployment is not None and runner != "threads":
        raise InvalidParameterError(
            "--explain-deployment runs the explanations on that deployment's work pool: "
            "it takes no --runner (set LCER_TASK_RUNNER on that pool's worker instead)"
        )
    _check_storage(storage)
    prefect_environment()
    if explain_deployment is not None:
        _check_deployment(explain_deployment)
    from flows.pipeline import lcer_pipeline

    flow = _with_runner(lcer_pipeline, runner, address, method_list)
    with session(verbose=verbose, plain_fallback=runner != "threads") as shown:
        rows = flow(
            datasets=names,
            methods=method_list,
            ks=ks,
            alphas=options["alpha"],
            lams=lam_list or None,
            n_users=users,
            steps=steps,
            seed=seed,
            shard_size=shard_size,
            epochs=epochs,
            seeds=seed_list,
            budget=budget,
            split_seeds=split_list,
            explain_deployment=explain_deployment,
        )
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


def _training(epochs: int | None) -> int:
    """``--epochs`` (None: Mult-VAE's default), checked by Mult-VAE's config."""
    from lcer_core.recommender.multvae import MultVAEConfig

    return (MultVAEConfig() if epochs is None else MultVAEConfig(epochs=epochs)).epochs


def _validate_explanations(
    datasets: list[str],
    methods: list[str],
    options: dict[str, Any],
    *,
    ks: list[int],
    users: int | None,
    seeds: list[int],
    shard_size: int,
    runner: str,
    address: str | None,
    split_seeds: list[int] | None = None,
) -> list[str]:
    """The prologue of ``lcer run`` and ``lcer sweep``: the plan checked by the core function
    the flows use (every explainer configuration built once), then the runner; the methods."""
    from lcer_core.runs import validate_plan

    method_list = validate_plan(
        datasets,
        methods,
        options,
        ks=ks,
        seeds=seeds,
        n_users=users,
        shard_size=shard_size,
        split_seeds=split_seeds or [],
    )
    _check_runner(runner, address)
    return method_list


def sweep(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    alphas: Annotated[
        str | None, typer.Option(help="Comma-separated α values (default: the paper's grid).")
    ] = None,
    lams: Annotated[
        str | None, typer.Option(help="Comma-separated λ values (default: the paper's grid).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="List length K.")] = 5,
    users: Annotated[
        int | None, typer.Option(help="Explain the first N test users (default: all).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="LCER optimisation steps (default: LCER's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the explanations.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Test users per explanation task.")] = 25,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Mult-VAE training epochs (when it must be trained; default: Mult-VAE's)."
        ),
    ] = None,
    runner: Annotated[str, typer.Option(help="Task runner: threads or ray.")] = "threads",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (with --runner ray).")
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print the full log stream instead of progress bars."),
    ] = False,
) -> None:
    """The α/λ grid of LCER over one trained model: one MLflow child run per grid point under a parent run."""
    from lcer_core.explainers import PAPER_SWEEP_METHOD

    alpha_list = parse_list(alphas, float, "--alphas")
    lam_list = parse_list(lams, float, "--lams")
    methods = _validate_explanations(
        [dataset],
        [PAPER_SWEEP_METHOD],
        {"alpha": alpha_list, "lam": lam_list, "steps": steps},
        ks=[k],
        users=users,
        seeds=[seed],
        shard_size=shard_size,
        runner=runner,
        address=address,
    )
    epochs = _training(epochs)
    prefect_environment()
    from flows.sweep import lcer_sweep

    flow = _with_runner(lcer_sweep, runner, address, methods)
    with session(verbose=verbose, plain_fallback=runner != "threads") as shown:
        rows = flow(
            dataset=dataset,
            alphas=alpha_list,
            lams=lam_list,
            k=k,
            n_users=users,
            steps=steps,
            seed=seed,
            shard_size=shard_size,
            epochs=epochs,
        )
    _print_results(rows)
    typer.echo(shown.summary(f"{len(rows)} explanation runs"), err=True)


def train(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: Mult-VAE's).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the model's initialisation and batches.")
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print the full log stream instead of progress bars."),
    ] = False,
) -> None:
    """Train Mult-VAE on DATASET (unless the same model exists) and register it in MLflow as multvae-DATASET."""
    from lcer_core.checks import check_seed
    from lcer_core.datasets import get_spec
    from lcer_core.models import MODEL_SEED

    get_spec(dataset)
    epochs = _training(epochs)
    model_seed = check_seed(MODEL_SEED if seed is None else seed)
    prefect_environment()
    from flows.train import lcer_train

    with session(verbose=verbose) as shown:
        out = lcer_train(dataset=dataset, epochs=epochs, seed=model_seed)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in out["metrics"].items() if k != "best_epoch")
    verb = "trained" if out["trained_now"] else "already trained"
    typer.echo(
        f"{dataset}: model {out['model_key']} {verb} ({metrics}); registered {out['registered_model']}"
    )
    typer.echo(shown.summary("done"), err=True)
