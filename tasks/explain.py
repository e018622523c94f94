"""The explanation task: one shard of test users, one run (method, k, α, λ), one Parquet file.

The shard file is the task's only record: Prefect caches nothing and persists no result (a
persisted result is a pickle whose file names its own serializer, so one planted under
LCER_HOME would run code when read). A task that finds a complete file holding its key
(:func:`lcer_core.shards.shard_key`) returns it at once, in a ``Cached`` state; a new flow run
after a crash thus computes only the shards that had not finished.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.states import Completed, State

from lcer_core import api, shards
from lcer_core.datasets import load_prepared
from lcer_core.shards import RunSpec
from tasks import progress

__all__ = ["explain_shard"]


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
    cache_policy=NO_CACHE,
    persist_result=False,
)
def explain_shard(spec: RunSpec, index: int, users: list[int], path: str) -> str | State:
    """Explain the top-K pairs of ``users`` with the run's method and write them to ``path``; the path."""
    logger = get_run_logger()
    out = Path(path)
    key = shards.shard_key(spec, index, users)
    if shards.shard_is_complete(out, users, key):
        logger.info(
            "shard %d of %s/%s k=%d already on disk: %s",
            index,
            spec.dataset,
            spec.method,
            spec.k,
            out,
        )
        return Completed(name="Cached", message=f"complete shard file {out}", data=str(out))
    start = time.perf_counter()
    device = api.default_device()
    data = load_prepared(spec.dataset)
    model = api.load_model(spec.dataset, spec.model_key)

    def report(done: int, total: int) -> None:
        progress.emit("steps", run=spec.run_id, index=index, done=done, total=total)

    frame = shards.explain_users(data, model, spec, users, device=device, progress=report)
    shards.write_parquet_atomic(frame, out, metadata={shards.SHARD_KEY_FIELD: key})
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
