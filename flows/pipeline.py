"""``lcer-pipeline``: per dataset prepare → train → register → explain (fan-out) → evaluate → store → track.

The flow takes one parameter saying what to do, a :class:`lcer_core.plan.Plan` (Prefect
validates it and shows it as a form), and one saying where (``explain_deployment``).
Explanation runs are every (method, configuration, k) of the plan: one configuration per
combination of a method's grid (LCER's α and λ; a baseline without a grid runs once per k). Each run fans out over shards of test users; each shard is a
task writing one Parquet file (the file, keyed in its metadata, is its record), so a re-run after a crash only explains the shards
that had not finished. Then, per run: evaluate (concatenate its shards, Table 2 metrics) →
store (one DuckDB transaction) → track (one MLflow run), and the run's MLflow id goes back
into DuckDB.

Killed at any point (kill -9), a re-run of the same flow redoes only what had not finished:
the model is trained unless its checkpoint (written whole or not at all) exists, finished
shards are reused, a run's rows are replaced in one transaction (never duplicated, never
half-written), and MLflow runs left RUNNING by the dead process are closed as FAILED. An
explanation run's MLflow run is opened before its shards are computed for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from flows.deploy import check_deployment_code
from flows.env import check_environment
from flows.explain import (
    keep_finished_shards,
    resolve_shards,
    shard_paths,
    submit_shards,
    upload_bundle,
    write_shard_bytes,
)
from flows.runner import ShardsStranded, default_task_runner
from flows.train import DEFAULT_EPOCHS, prepare_and_train
from lcer_core import remote
from lcer_core.code_version import code_version
from lcer_core.datasets import load_prepared
from lcer_core.errors import OrchestrationError
from lcer_core.models import MODEL_SEED, load_model
from lcer_core.plan import Plan, make_plan
from lcer_core.runs import RunSpec
from lcer_core.shards import (
    shard_is_complete,
    shard_key,
    shard_path,
    split_users,
)
from tasks.data import test_users
from tasks.report import html_report
from tasks.runs import RunOutcome, begin, finish_run, first_error
from tasks.tracking import close_sweep, item_figures, open_sweep, sweep_figures
from tasks.train import bind_networks

__all__ = ["lcer_pipeline", "explain_runs", "run_plan", "sweep_runs", "DEFAULT_PLAN"]

#: The plan of ``lcer run`` with no arguments (the paper's Table 2 on ML 100K).
DEFAULT_PLAN = make_plan()


def _paths_from_deployment(
    deployment: str, specs: Sequence[RunSpec], users: Sequence[int], shard_size: int
) -> dict[str, list[str]]:
    """Run the explanations as a flow run of ``deployment`` (the ``gpu`` pool) and find their shard files.

    With a storage URL (``LCER_STORAGE``) the model and data go there for the other pool, and
    the shard files come back from there; without, both pools must share ``LCER_HOME``. Runs
    whose shard files are all here already (an earlier, interrupted pipeline fetched them)
    start no flow run; the other pool's flow skips the shards it finds under the storage URL.
    """
    chunks = split_users(list(users), shard_size)
    if all(_shards_here(spec, chunks) for spec in specs):
        return {spec.run_id: [str(shard_path(spec.run_id, i)) for i in range(len(chunks))]
                for spec in specs}  # fmt: skip
    storage = remote.storage_url()
    if storage:
        storage = remote.check_storage(storage)
        bundles, digests = _upload_bundles(storage, specs, users)
        specs = [spec.bound(*digests[spec.model_key]) for spec in specs]
    parameters: dict[str, Any] = {
        "specs": [s.to_payload() for s in specs],
        "users": list(users),
        "shard_size": shard_size,
        "code_version": code_version(),
    }
    if storage:
        parameters |= {"storage": storage, "bundles": bundles}
    flow_run = run_deployment(deployment, parameters=parameters, timeout=None, poll_interval=2)
    state = flow_run.state
    if state is None or not state.is_completed():
        raise OrchestrationError(
            f"explanation flow run {flow_run.name} of {deployment} ended {state.name if state else 'unknown'}"
        )
    return {spec.run_id: _fetch_shards(deployment, storage, spec, chunks) for spec in specs}


def _shards_here(spec: RunSpec, chunks: Sequence[Sequence[int]]) -> bool:
    return all(
        shard_is_complete(shard_path(spec.run_id, i), chunk, shard_key(spec, i, chunk))
        for i, chunk in enumerate(chunks)
    )


def _upload_bundles(
    storage: str, specs: Sequence[RunSpec], users: Sequence[int]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Upload the model and data of every model of ``specs`` once; their URLs and their
    digests (what the runs are bound to), by model key."""
    bundles: dict[str, str] = {}
    digests: dict[str, tuple[str, str]] = {}
    for spec in specs:
        if spec.model_key not in bundles:
            data = load_prepared(spec.dataset, spec.split_seed)
            model = load_model(spec.dataset, spec.model_key)
            bundle = remote.make_bundle(data, model, users)
            digests[spec.model_key] = remote.bundle_digests(bundle)
            bundles[spec.model_key] = upload_bundle(storage, spec.model_key, users, bundle)
    return bundles, digests


def _fetch_shards(
    deployment: str, storage: str | None, spec: RunSpec, chunks: Sequence[Sequence[int]]
) -> list[str]:
    """A run's shard files here, copied from the storage URL when one is set (only if explained
    from the bundle ``spec`` is bound to); a missing one raises."""
    paths = [shard_path(spec.run_id, i) for i in range(len(chunks))]
    for index, (path, chunk) in enumerate(zip(paths, chunks, strict=True)):
        key = shard_key(spec, index, chunk)
        if storage and not shard_is_complete(path, chunk, key):
            data = remote.get_bytes(remote.shard_url(storage, spec.run_id, index))
            write_shard_bytes(data, path, key, len(chunk) * spec.k, spec)
        if not shard_is_complete(path, chunk, key):
            raise OrchestrationError(f"{deployment} finished but shard {path} is missing here")
    return [str(p) for p in paths]


def _explain(
    specs: Sequence[RunSpec], users: Sequence[int], shard_size: int, deployment: str | None
) -> tuple[dict[str, list[str]], dict[str, BaseException]]:
    """The shard files of every run (here, or by ``deployment``), and the error of each run
    whose explanation failed."""
    if deployment:
        try:
            return _paths_from_deployment(deployment, specs, users, shard_size), {}
        except Exception as exc:
            return {}, {spec.run_id: exc for spec in specs}
    futures = submit_shards(specs, users, shard_size)
    stranded: ShardsStranded | None = None
    try:
        resolve_shards(futures)
    except ShardsStranded as exc:  # a node died: keep what finished, fail the runs it leaves
        stranded = exc
    chunks = split_users(list(users), shard_size)
    paths: dict[str, list[str]] = {}
    failures: dict[str, BaseException] = {}
    for spec in specs:
        if stranded is not None and any(run == spec.run_id for run, _ in stranded.shards):
            keep_finished_shards(spec, chunks, futures[spec.run_id], stranded)
            failures[spec.run_id] = stranded
            continue
        try:
            paths[spec.run_id] = shard_paths(spec, chunks, futures[spec.run_id])
        except Exception as exc:
            failures[spec.run_id] = exc
    return paths, failures


def explain_runs(
    specs: Sequence[RunSpec],
    users: Sequence[int],
    shard_size: int,
    *,
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    explain_deployment: str | None = None,
) -> list[RunOutcome]:
    """Explain, evaluate, store and track every run of ``specs``; how each ended, in order.

    A run whose explanation fails is marked failed and the others go on; the first error is
    raised at the end.
    """
    run_params = {"shard_size": shard_size, **(params or {})}
    tracked = begin(specs, run_params, parent_run_id)
    paths, failures = _explain(specs, users, shard_size, explain_deployment)
    outcomes = [
        finish_run(
            spec,
            paths.get(spec.run_id),
            run_params,
            parent_run_id=parent_run_id,
            tracked=tracked.get(spec.run_id),
            error=failures.get(spec.run_id),
        )
        for spec in specs
    ]
    error = first_error(failures, outcomes)
    if error is not None:
        raise error
    return outcomes


def _explain_model(
    plan: Plan,
    dataset: str,
    model_key: str,
    seeds: tuple[int, int],
    split_seed: int | None,
    *,
    explain_deployment: str | None,
    sweep: bool,
) -> list[dict[str, Any]]:
    """Every explanation run of ``plan`` on one trained model (``seeds``: the model's and the
    explainers'; ``split_seed``: its data's); their Table 2 rows. In a ``sweep`` the runs are
    children of one parent MLflow run, which gets the sweep's figures."""
    logger = get_run_logger()
    model_seed, explain_seed = seeds
    users = test_users(dataset, plan.n_users, split_seed)
    specs = bind_networks(plan.runs(dataset, model_key, explain_seed, split_seed), split_seed)
    logger.info(
        "%s%s (model seed %d, explainer seed %d): %d explanation runs over %d test users",
        dataset,
        "" if split_seed is None else f" split seed {split_seed}",
        model_seed,
        explain_seed,
        len(specs),
        len(users),
    )
    if sweep:
        grid = {**plan.grid_params(), "seed": explain_seed, "model_key": model_key}
        outcomes = sweep_runs(dataset, grid, specs, users, plan.shard_size, explain_deployment)
    else:
        outcomes = explain_runs(
            specs, users, plan.shard_size, explain_deployment=explain_deployment
        )
    return [outcome.summary() for outcome in outcomes]


def sweep_runs(
    dataset: str,
    grid: dict[str, Any],
    specs: Sequence[RunSpec],
    users: Sequence[int],
    shard_size: int,
    explain_deployment: str | None = None,
) -> list[RunOutcome]:
    """Run ``specs`` as children of one parent MLflow run (``grid``: its params), closed
    FINISHED with the sweep's figures, or FAILED if anything fails."""
    parent = open_sweep(dataset, grid)
    try:
        outcomes = explain_runs(
            specs,
            users,
            shard_size,
            params={"sweep": parent},
            parent_run_id=parent,
            explain_deployment=explain_deployment,
        )
        sweep_figures(parent, [outcome.result for outcome in outcomes if outcome.result])
    except BaseException:
        close_sweep(parent, "FAILED")
        raise
    close_sweep(parent, "FINISHED")
    return outcomes


def run_plan(
    plan: Plan, explain_deployment: str | None = None, *, sweep: bool = False
) -> list[dict[str, Any]]:
    """Per dataset, split and seed of ``plan``: prepare → train → explain every run; then the
    dataset's figures and report (not in a ``sweep``, whose parent run has its own figures).
    The body of ``lcer-pipeline`` and ``lcer-sweep``."""
    check_environment()
    if explain_deployment:  # before any work: the other pool must run this code
        check_deployment_code(explain_deployment)
    summaries: list[dict[str, Any]] = []
    for dataset in plan.datasets:
        for split_seed in plan.splits():
            for seeds in plan.model_seeds(MODEL_SEED):
                model, _ = prepare_and_train(
                    dataset,
                    _epochs(plan),
                    seeds[0],
                    split_seed,
                    plan.recommender,
                    plan.recommender_fields(),
                )
                summaries += _explain_model(
                    plan,
                    dataset,
                    model.key,
                    seeds,
                    split_seed,
                    explain_deployment=explain_deployment,
                    sweep=sweep,
                )
        if not sweep:
            item_figures(dataset)
            html_report(dataset)
    return summaries


def _epochs(plan: Plan) -> int:
    """The recommender's training epochs of ``plan`` (its default where none is given)."""
    return int(plan.training_options().get("epochs", DEFAULT_EPOCHS))


@flow(name="lcer-pipeline", task_runner=default_task_runner())
def lcer_pipeline(
    plan: Plan = DEFAULT_PLAN, explain_deployment: str | None = None
) -> list[dict[str, Any]]:
    """Explain the top-K recommendations of the test users of ``plan``'s datasets; Table 2 rows.

    The default plan: ML 100K, the paper's methods, K in {5, 10}, the paper's α and λ for each
    dataset, all test users. ``explain_deployment`` (e.g. ``lcer-explain/lcer-explain``) sends
    the explanations to that deployment's work pool.
    """
    return run_plan(plan, explain_deployment)
