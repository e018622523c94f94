"""The explanation task: one shard of test users, one run (method, k, α, λ), one Parquet file.

Its cache key is its inputs and its source (not the flow run), with results persisted under
``$LCER_HOME/prefect-results``: a new flow run after a crash finds the finished shards in the
cache and does not compute them again. The flow asks for a refresh when a shard's file has
gone missing, and the task itself skips the work when a complete file is already there.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.runtime import task_run

from lcer_core import api, shards
from lcer_core.datasets import load_prepared
from lcer_core.shards import RunSpec
from tasks import progress

__all__ = ["SHARD_CACHE_POLICY", "SHARD_CACHE_EXPIRATION", "explain_shard"]

#: Inputs and source, not the flow run: what makes a finished shard reusable by a new run.
SHARD_CACHE_POLICY = INPUTS + TASK_SOURCE
#: Persisted shard results older than this are recomputed (and Prefect's files can be pruned).
SHARD_CACHE_EXPIRATION = timedelta(days=30)


def _shard_run_name() -> str:
    params = task_run.parameters
    spec: RunSpec = params["spec"]
    extra = (
        f"-a{spec.alpha:g}-l{spec.lam:g}" if spec.alpha is not None and spec.lam is not None else ""
    )
    return f"explain-{spec.method}-k{spec.k}{extra}-shard-{params['index']:04d}"


@task(
    name="explain-shard",
    task_run_name=_shard_run_name,
    cache_policy=SHARD_CACHE_POLICY,
    cache_expiration=SHARD_CACHE_EXPIRATION,
    persist_result=True,
)
def explain_shard(spec: RunSpec, index: int, users: list[int], path: str) -> str:
    """Explain the top-K pairs of ``users`` with the run's method and write them to ``path``; the path."""
    logger = get_run_logger()
    out = Path(path)
    if shards.shard_is_complete(out, users):
        logger.info(
            "shard %d of %s/%s k=%d already on disk: %s",
            index,
            spec.dataset,
            spec.method,
            spec.k,
            out,
        )
        return str(out)
    start = time.perf_counter()
    device = api.default_device()
    data = load_prepared(spec.dataset)
    model = api.load_model(spec.dataset, spec.model_key)

    def report(done: int, total: int) -> None:
        progress.emit("steps", run=spec.run_id, index=index, done=done, total=total)

    frame = shards.explain_users(data, model, spec, users, device=device, progress=report)
    shards.write_parquet_atomic(frame, out)
    logger.info(
        "shard %d of %s/%s k=%d: %d users, %d pairs, %d CEs found on %s in %.1f s",
        index,
        spec.dataset,
        spec.method,
        spec.k,
        len(users),
        frame.height,
        int(frame["found"].sum()),
        device.type,
        time.perf_counter() - start,
    )
    return str(out)
