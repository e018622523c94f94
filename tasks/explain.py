"""The explanation tasks: one shard of test users, one run (method, k, α, λ), one Parquet file.

``explain-shard`` runs where the flow's ``LCER_HOME`` is (threads of the flow's process);
``explain-shard-remote`` runs on a machine that shares no filesystem with the flow (a Ray
worker node, the ``gpu`` pool): it gets the model and the data as bytes
(:mod:`lcer_core.remote`), uses it only if its content has the digests its run is bound to,
and returns the shard file's bytes (stamped with those digests) with where it ran; the flow
writes the file (with its key). Every shard file says where it ran (columns ``shard``,
``node``, ``placement``: the device it took, :func:`lcer_core.devices.shard_device`, with the
GPU ids Ray gave it; ``device`` per row), and so does its log line. A shard computes on
CUDA only where torch sees CUDA: on a Ray node with logical GPUs and no CUDA it computes on
the CPU and still records the GPU id Ray assigned.

The shard file is the task's only record: Prefect caches nothing and persists no result (a
persisted result is a pickle whose file names its own serializer, so one planted under
LCER_HOME would run code when read). A task that finds a complete file holding its key
(:func:`lcer_core.shards.shard_key`) returns it at once, in a ``Cached`` state; a new flow run
after a crash thus computes only the shards that had not finished.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.states import Completed, State

from lcer_core import remote, shards
from lcer_core.datasets import load_prepared
from lcer_core.devices import device_label, shard_device
from lcer_core.fsio import parquet_bytes, write_parquet_atomic
from lcer_core.models import load_model
from lcer_core.runs import RunSpec
from tasks import progress

__all__ = [
    "ShardOutput",
    "node_name",
    "ray_gpu_ids",
    "explain_shard",
    "explain_shard_remote",
]


@dataclass(frozen=True)
class ShardOutput:
    """What a remote shard sends back: its file's bytes, and where it ran."""

    index: int
    parquet: bytes
    node: str
    device: str
    pid: int
    pairs: int


def node_name() -> str:
    """The Ray node id when running in a Ray worker, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return socket.gethostname()


def ray_gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to the task running here (none outside Ray, or without GPUs)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def _placed(frame: pl.DataFrame, index: int, node: str, placement: str) -> pl.DataFrame:
    return frame.with_columns(
        shard=pl.lit(index, pl.Int32), node=pl.lit(node), placement=pl.lit(placement)
    )


def _shard_run_name() -> str:
    params = task_run.parameters
    spec: RunSpec = params["spec"]
    return f"explain-{spec.slug}-shard-{params['index']:04d}"


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
    node = node_name()
    with shard_device() as device:
        frame = _explain_local(spec, index, users, device)
    placement = device_label(device)
    write_parquet_atomic(
        _placed(frame, index, node, placement), out, metadata={shards.SHARD_KEY_FIELD: key}
    )
    _log_done(spec, index, users, frame, node, placement, start)
    return str(out)


def _report(spec: RunSpec, index: int) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress.emit(progress.STEPS, run=spec.run_id, index=index, done=done, total=total)

    return report


def _explain_local(
    spec: RunSpec, index: int, users: list[int], device: torch.device
) -> pl.DataFrame:
    """A shard's rows from this machine's data and model (released on return)."""
    data = load_prepared(spec.dataset, spec.split_seed)
    model = load_model(spec.dataset, spec.model_key)
    return shards.explain_users(
        data, model, spec, users, device=device, progress=_report(spec, index)
    )


def _log_done(
    spec: RunSpec,
    index: int,
    users: list[int],
    frame: pl.DataFrame,
    node: str,
    device: str,
    start: float,
) -> None:
    get_run_logger().info(
        "shard %d of %s/%s k=%d: %d users, %d pairs, %d CEs found on node %s device %s in %.1f s",
        index,
        spec.dataset,
        spec.method,
        spec.k,
        len(users),
        frame.height,
        int(frame["found"].sum()),
        node,
        device,
        time.perf_counter() - start,
    )


@task(
    name="explain-shard-remote",
    task_run_name=_shard_run_name,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def explain_shard_remote(
    spec: RunSpec, index: int, users: list[int], bundle: dict[str, bytes] | str
) -> ShardOutput:
    """Explain the top-K pairs of ``users`` from a bundle of model and data (or its storage URL);
    the shard file's bytes.

    Reads and writes nothing under ``LCER_HOME``: the flow that submitted it writes the file.
    """
    start = time.perf_counter()
    node, pid = node_name(), os.getpid()
    get_run_logger().info(
        "shard %d of %s/%s k=%d started on node %s pid %d",
        index,
        spec.dataset,
        spec.method,
        spec.k,
        node,
        pid,
    )
    content = remote.get_bundle(bundle) if isinstance(bundle, str) else bundle
    digests = remote.check_bundle(content, spec.run_id, spec.digests)
    with shard_device() as device:
        frame = _explain_bundle(spec, index, users, content, device)
    placement = device_label(device, ray_gpu_ids())
    _log_done(spec, index, users, frame, node, placement, start)
    stamp = dict(zip(remote.SHARD_DIGEST_FIELDS, digests, strict=True))
    stamp[shards.SHARD_KEY_FIELD] = shards.shard_key(spec, index, users)  # resumable from storage
    return ShardOutput(
        index=index,
        parquet=parquet_bytes(_placed(frame, index, node, placement), metadata=stamp),
        node=node,
        device=placement,
        pid=pid,
        pairs=frame.height,
    )


def _explain_bundle(
    spec: RunSpec,
    index: int,
    users: list[int],
    content: dict[str, bytes],
    device: torch.device,
) -> pl.DataFrame:
    """A shard's rows from a bundle (its model and data released on return)."""
    data, model = remote.open_bundle(content)
    return shards.explain_users(
        data, model, spec, users, device=device, progress=_report(spec, index)
    )
