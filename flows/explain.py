"""The explanation fan-out: one ``explain-shard`` task per (run, shard of test users).

:func:`submit_shards` is what every flow uses in its own process; the flow ``lcer-explain``
wraps it so that a deployment on the ``gpu`` work pool can take the explanations of a
pipeline whose other steps run on ``cpu`` (both pools must see the same ``LCER_HOME``).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed

from flows.env import check_environment
from flows.runner import default_task_runner, explain_placement
from lcer_core.shards import DEFAULT_SHARD_SIZE, RunSpec, shard_path, split_users
from tasks import progress
from tasks.explain import explain_shard

__all__ = ["submit_shards", "resolve_shards", "lcer_explain"]

ShardFutures = dict[str, list[PrefectFuture[str]]]


def _label(spec: RunSpec) -> str:
    grid = (
        f" α={spec.alpha:g} λ={spec.lam:g}"
        if spec.alpha is not None and spec.lam is not None
        else ""
    )
    return f"{spec.dataset} {spec.method} k={spec.k}{grid}"


def submit_shards(specs: Sequence[RunSpec], users: Sequence[int], shard_size: int) -> ShardFutures:
    """Submit one explanation task per (run, shard); futures by run id, in shard order.

    A task whose complete shard file is found returns it without work (the file is the record).
    """
    logger = get_run_logger()
    chunks = split_users(list(users), shard_size)
    futures: ShardFutures = {}
    progress.emit("planned", shards=len(specs) * len(chunks), runs=len(specs))
    for spec in specs:
        progress.emit(
            "run_planned",
            run=spec.run_id,
            label=_label(spec),
            shard_pairs=[len(chunk) * spec.k for chunk in chunks],
        )
    with explain_placement() as where:
        for spec in specs:
            futures[spec.run_id] = []
            for index, chunk in enumerate(chunks):
                path = shard_path(spec.run_id, index)
                futures[spec.run_id].append(explain_shard.submit(spec, index, chunk, str(path)))
    logger.info(
        "submitted %d explanation tasks (%d runs x %d shards of up to %d users) to %s",
        len(specs) * len(chunks),
        len(specs),
        len(chunks),
        shard_size,
        where,
    )
    return futures


def resolve_shards(futures: ShardFutures) -> None:
    """Wait for every shard (finished, failed or cached), reporting each as it ends."""
    where = {id(f): (run_id, i) for run_id, fs in futures.items() for i, f in enumerate(fs)}
    for future in as_completed([f for fs in futures.values() for f in fs]):
        run_id, index = where[id(future)]
        progress.emit("shard_done", run=run_id, index=index, ok=future.state.is_completed())


@flow(name="lcer-explain", task_runner=default_task_runner())
def lcer_explain(
    specs: list[RunSpec], users: list[int], shard_size: int = DEFAULT_SHARD_SIZE
) -> list[list[str]]:
    """Explain the shards of ``specs`` (as planned by a pipeline) where this flow runs; their paths per run."""
    check_environment()
    futures = submit_shards(specs, users, shard_size)
    resolve_shards(futures)
    return [[f.result() for f in futures[spec.run_id]] for spec in specs]
