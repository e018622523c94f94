"""The explanation fan-out: one ``explain-shard`` task per (run, shard of test users).

:func:`submit_shards` is what every flow uses in its own process; the flow ``lcer-explain``
wraps it so that a deployment on the ``gpu`` work pool can take the explanations of a
pipeline whose other steps run on ``cpu``. The two pools share no filesystem when a storage
URL is set (``LCER_STORAGE``): the pipeline uploads each model with the data of the users to
explain, the ``gpu`` pool's flow leaves the shard files under the same URL, and the pipeline
copies them into its ``LCER_HOME``. On a Ray cluster the same travels through Ray's object
store (or the storage URL, when set).

Anyone who can create a flow run chooses ``lcer-explain``'s parameters, so it trusts none of
them with a place: the storage root is the worker's own ``LCER_STORAGE`` (a ``storage``
parameter must name the same), bundles are fetched only from under it, every run must be
bound to its bundle (digests of model and data, checked by the worker after fetching), and
the pipeline checks the same digests in each shard before storing it. Every refusal is one
line, before anything is fetched or written.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed

from flows.env import check_environment
from flows.runner import (
    ShardsStranded,
    check_cluster,
    default_task_runner,
    explain_placement,
    is_ray_runner,
    placement_resources,
    wait_on_ray,
)
from lcer_core import remote
from lcer_core.code_version import check_code_version
from lcer_core.datasets import load_prepared
from lcer_core.errors import LcerError, OrchestrationError
from lcer_core.fsio import write_parquet_atomic
from lcer_core.keys import content_key
from lcer_core.models import load_model
from lcer_core.shards import (
    DEFAULT_SHARD_SIZE,
    SHARD_KEY_FIELD,
    RunSpec,
    shard_is_complete,
    shard_key,
    shard_path,
    split_users,
)
from tasks import progress
from tasks.explain import ShardOutput, explain_shard, explain_shard_remote

__all__ = [
    "submit_shards",
    "resolve_shards",
    "shard_file",
    "shard_paths",
    "keep_finished_shards",
    "upload_bundle",
    "model_networks",
    "write_shard_bytes",
    "lcer_explain",
]


class ShardFutures(dict[str, list[PrefectFuture[Any] | str]]):
    """Per run id, in shard order: a future, or the path of a shard file complete before the
    run; with, per run id, what each of its Ray tasks asks of a node and the run's label."""

    def __init__(self) -> None:
        super().__init__()
        self.needs: dict[str, dict[str, float]] = {}
        self.labels: dict[str, str] = {}


def _label(spec: RunSpec) -> str:
    return spec.label


def _plan(specs: Sequence[RunSpec], chunks: Sequence[Sequence[int]]) -> None:
    """Tell the progress display what is about to run."""
    progress.emit(progress.PLANNED, shards=len(specs) * len(chunks), runs=len(specs))
    for spec in specs:
        progress.emit(
            progress.RUN_PLANNED,
            run=spec.run_id,
            label=_label(spec),
            shard_pairs=[len(chunk) * spec.k for chunk in chunks],
        )


def submit_shards(
    specs: Sequence[RunSpec],
    users: Sequence[int],
    shard_size: int,
    bundles: Mapping[str, str] | None = None,
    finished: Mapping[tuple[str, int], str] | None = None,
) -> ShardFutures:
    """Submit one explanation task per (run, shard); futures by run id, in shard order.

    On threads, a task whose complete shard file is found returns it without work (the file
    is the record). On Ray, the model and data go to the cluster once per model (``ray.put``)
    and each task sends its shard back (:func:`shard_file` writes it, with its key); shards
    complete on disk are not submitted. With ``bundles`` (the storage URL of each model's
    bundle, by model key: the ``lcer-explain`` deployment on another machine) or a storage URL
    set (``LCER_STORAGE``), the model and data go through the storage URL instead; the shards
    of ``finished`` (by (run id, index): where their file is) are not submitted.
    """
    if bundles is not None or is_ray_runner():
        return _submit_remote(specs, users, shard_size, bundles, finished or {})
    logger = get_run_logger()
    chunks = split_users(list(users), shard_size)
    futures = ShardFutures()
    _plan(specs, chunks)
    with explain_placement(False) as where:
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


def _submit_remote(
    specs: Sequence[RunSpec],
    users: Sequence[int],
    shard_size: int,
    bundles: Mapping[str, str] | None,
    finished: Mapping[tuple[str, int], str],
) -> ShardFutures:
    logger = get_run_logger()
    ray_runner = is_ray_runner()
    gpu = check_cluster([s.method for s in specs]) if ray_runner else False
    storage = remote.storage_url()
    chunks = split_users(list(users), shard_size)
    # per model: (its bundle or the bundle's URL, the digests its runs are bound to here)
    inputs: dict[str, tuple[Any, tuple[str, str] | None]] = {
        key: (url, None) for key, url in (bundles or {}).items()
    }
    futures = ShardFutures()
    _plan(specs, chunks)
    places: dict[str, int] = {}
    for spec in specs:
        futures[spec.run_id] = []
        futures.labels[spec.run_id] = _label(spec)
        for index, chunk in enumerate(chunks):
            path = shard_path(spec.run_id, index)
            done = finished.get((spec.run_id, index))
            if done is None and bundles is None:
                key = shard_key(spec, index, chunk)
                done = str(path) if shard_is_complete(path, chunk, key) else None
            if done is not None:
                futures[spec.run_id].append(done)
                continue
            if spec.model_key not in inputs:
                inputs[spec.model_key] = _bundle(spec, specs, users, storage, ray_runner)
            bundle, digests = inputs[spec.model_key]
            bound = spec if digests is None else spec.bound(*digests)
            with explain_placement(gpu) as where:
                future = explain_shard_remote.submit(bound, index, chunk, bundle)
            places[where] = places.get(where, 0) + 1
            futures.needs[spec.run_id] = placement_resources(where)
            futures[spec.run_id].append(future)
    logger.info(
        "submitted %s explanation tasks (%d runs x %d shards of up to %d users; the rest "
        "finished before), model and data through %s",
        ", ".join(f"{n} to {w}" for w, n in sorted(places.items())) or "no",
        len(specs),
        len(chunks),
        shard_size,
        "the storage URL" if bundles is not None or storage else "Ray's object store",
    )
    return futures


def _bundle(
    spec: RunSpec,
    specs: Sequence[RunSpec],
    users: Sequence[int],
    storage: str | None,
    ray_runner: bool,
) -> tuple[Any, tuple[str, str]]:
    """The model and data of ``spec`` for remote shards (a storage URL, a Ray reference, or
    bytes), with the explainer networks of every run of ``specs`` on that model, and their
    digests."""
    data = load_prepared(spec.dataset, spec.split_seed)
    networks = model_networks(specs, spec.model_key)
    model = load_model(spec.dataset, spec.model_key)
    bundle = remote.make_bundle(data, model, users, networks)
    digests = remote.bundle_digests(bundle)
    if storage:
        return upload_bundle(storage, spec.model_key, users, bundle, networks), digests
    if ray_runner:
        import ray

        return ray.put(bundle), digests
    return bundle, digests


def upload_bundle(
    storage: str,
    model_key: str,
    users: Sequence[int],
    bundle: Mapping[str, bytes],
    networks: Sequence[str] = (),
) -> str:
    """Upload a bundle once per (model, users, explainer networks) under the storage URL; its URL."""
    what: dict[str, Any] = {"users": sorted(set(users))}
    if networks:
        what["networks"] = sorted(set(networks))
    key = f"{model_key}-{content_key(what)}"
    return remote.put_bundle(storage, key, bundle)


def model_networks(specs: Sequence[RunSpec], model_key: str) -> list[str]:
    """The explainer networks that the runs of ``specs`` on model ``model_key`` read."""
    from lcer_core.amortised_store import config_networks

    return config_networks(s.config for s in specs if s.model_key == model_key)


def shard_file(spec: RunSpec, index: int, users: Sequence[int], result: str | ShardOutput) -> str:
    """The path of a finished shard's file: a remote shard's bytes are written here first."""
    if isinstance(result, ShardOutput):
        path = shard_path(spec.run_id, index)
        key = shard_key(spec, index, users)
        return str(write_shard_bytes(result.parquet, path, key, len(users) * spec.k))
    return str(result)


def write_shard_bytes(
    data: bytes, path: Path, key: str, pairs: int, spec: RunSpec | None = None
) -> Path:
    """Write a shard file received as bytes, with its key, whole or not at all (bytes that are
    no Parquet file raise, and so do more rows than the shard's ``pairs``, before decoding, and
    bytes not explained from the bundle ``spec`` is bound to)."""
    if spec is not None and spec.digests is not None:
        remote.check_shard_digests(data, path.name, spec.run_id, spec.digests)
    try:
        frame = remote.read_parquet_object(data, f"shard {path.name}", max_rows=pairs)
    except (ValueError, pl.exceptions.PolarsError) as exc:
        raise OrchestrationError(f"shard {path.name} came back unreadable: {exc}") from None
    return write_parquet_atomic(frame, path, metadata={SHARD_KEY_FIELD: key})


#: Called with (run id, shard index, future) as each shard finishes well.
OnDone = Callable[[str, int, PrefectFuture[Any]], None]


def resolve_shards(futures: ShardFutures, on_done: OnDone | None = None) -> None:
    """Wait for every shard (finished, failed or cached), reporting each as it ends (and passing
    each that finished well to ``on_done``).

    On Ray, shards that no live node can take any more (:func:`flows.runner.wait_on_ray`) are
    given up: once the others have ended, :class:`~flows.runner.ShardsStranded` names them by
    (run id, shard index).
    """
    where = {
        id(f): (run_id, i)
        for run_id, fs in futures.items()
        for i, f in enumerate(fs)
        if not isinstance(f, str)
    }
    for run_id, fs in futures.items():
        for i, f in enumerate(fs):
            if isinstance(f, str):
                progress.emit(progress.SHARD_DONE, run=run_id, index=i, ok=True)
    pending = [f for fs in futures.values() for f in fs if not isinstance(f, str)]
    if pending and is_ray_runner():
        _wait_on_ray(futures, pending, where, on_done)
        return
    for future in as_completed(pending):
        run_id, index = where[id(future)]
        future.wait()  # done: this only takes its final state (not the server's, which lags)
        ok = future.state.is_completed()
        if ok and on_done is not None:
            on_done(run_id, index, future)
        progress.emit(progress.SHARD_DONE, run=run_id, index=index, ok=ok)


def _wait_on_ray(
    futures: ShardFutures,
    pending: Sequence[PrefectFuture[Any]],
    where: Mapping[int, tuple[str, int]],
    on_done: OnDone | None,
) -> None:
    by_key = {where[id(f)]: f for f in pending}

    def done(key: tuple[str, int]) -> None:
        future = by_key[key]
        future.wait()  # the object is ready: this only takes its final state
        ok = future.state.is_completed()
        if ok and on_done is not None:
            on_done(key[0], key[1], future)
        progress.emit(progress.SHARD_DONE, run=key[0], index=key[1], ok=ok)

    wait_on_ray(
        {key: f.wrapped_future for key, f in by_key.items()},
        {key: futures.needs.get(key[0], {"CPU": 1.0}) for key in by_key},
        {key: f"{futures.labels.get(key[0], key[0])} shard {key[1]}" for key in by_key},
        done=done,
    )


def keep_finished_shards(
    spec: RunSpec,
    chunks: Sequence[Sequence[int]],
    futures: Sequence[PrefectFuture[Any] | str],
    stranded: ShardsStranded,
) -> list[str]:
    """Write the files of a run's shards that finished when others were given up (so that
    running the same command again resumes from them); their paths."""
    kept = []
    for index, future in enumerate(futures):
        if (spec.run_id, index) in stranded.shards:
            continue
        if isinstance(future, str):
            kept.append(future)
        elif future.state.is_completed():
            kept.append(shard_file(spec, index, chunks[index], future.result()))
    return kept


def shard_paths(
    spec: RunSpec, chunks: Sequence[Sequence[int]], futures: Sequence[PrefectFuture[Any] | str]
) -> list[str]:
    """The files of a run's shards, in order (raises the first shard's failure)."""
    return [
        shard_file(spec, i, chunks[i], f if isinstance(f, str) else f.result())
        for i, f in enumerate(futures)
    ]


@flow(name="lcer-explain", task_runner=default_task_runner())
def lcer_explain(
    specs: list[RunSpec],
    users: list[int],
    shard_size: int = DEFAULT_SHARD_SIZE,
    storage: str | None = None,
    bundles: dict[str, str] | None = None,
    code_version: str | None = None,
) -> list[list[str]]:
    """Explain the shards of ``specs`` (as planned by a pipeline) where this flow runs; their files per run.

    With ``bundles`` (the URL of each model's bundle under this worker's storage URL,
    ``LCER_STORAGE``, by model key; every run bound to its bundle's digests), nothing is read
    from or written to this machine's ``LCER_HOME``: the shard files are left under
    ``STORAGE/work/RUN_ID/`` (each as it finishes) and their URLs returned; a shard whose file
    is already there, complete and explained from the same bundle, is not explained again, so
    running the same pipeline again after a crash resumes. ``storage``, if given, must be that
    same URL. Without either, both pools must share one ``LCER_HOME``. ``code_version`` is
    the pipeline's (:func:`lcer_core.code_version.code_version`): a run deployed with other
    code than this worker's is refused before any work.
    """
    check_environment()
    check_code_version(code_version)
    chunks = split_users(list(users), shard_size)
    if storage is None and bundles is None:
        futures = submit_shards(specs, users, shard_size)
        resolve_shards(futures)
        return [shard_paths(spec, chunks, futures[spec.run_id]) for spec in specs]
    root, urls = _check_remote(specs, storage, bundles or {})
    finished = _finished_on_storage(root, specs, chunks)
    if finished:
        get_run_logger().info(
            "%d of %d shards already under the storage URL: not explained again",
            len(finished),
            len(specs) * len(chunks),
        )
    futures = submit_shards(specs, users, shard_size, bundles=urls, finished=finished)

    def leave(run_id: str, index: int, future: PrefectFuture[Any]) -> None:
        _leave_shard(root, run_id, index, future.result())

    resolve_shards(futures, on_done=leave)
    for spec in specs:  # the first failure, if any, once every shard has ended
        for future in futures[spec.run_id]:
            if not isinstance(future, str):
                future.result()
    return [[remote.shard_url(root, s.run_id, i) for i in range(len(chunks))] for s in specs]


def _check_remote(
    specs: Sequence[RunSpec], storage: str | None, bundles: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """This worker's storage root and the bundle URL of every model of ``specs``, checked
    before anything is fetched or written (see the module docstring)."""
    root = remote.check_storage(remote.worker_storage(storage))
    urls = {key: remote.bundle_base(root, url) for key, url in bundles.items()}
    for spec in specs:
        if spec.model_key not in urls:
            raise OrchestrationError(
                f"no bundle given for model {spec.model_key} of run {spec.run_id}"
            )
        remote.require_bound(spec.run_id, spec.digests)
    return root, urls


def _leave_shard(storage: str, run_id: str, index: int, result: Any) -> None:
    """Put a finished shard's file (sent back as bytes) under the storage URL."""
    if not isinstance(result, ShardOutput):
        raise OrchestrationError(f"shard {index} of run {run_id} returned no file")
    remote.put_bytes(remote.shard_url(storage, run_id, index), result.parquet)


def _finished_on_storage(
    storage: str, specs: Sequence[RunSpec], chunks: Sequence[Sequence[int]]
) -> dict[tuple[str, int], str]:
    """The shards whose files under the storage URL are complete and explained from the bundle
    their run is bound to (an earlier flow run left them); their URLs by (run id, index)."""
    found: dict[tuple[str, int], str] = {}
    for spec in specs:
        for index, chunk in enumerate(chunks):
            url = remote.shard_url(storage, spec.run_id, index)
            try:
                data = remote.get_bytes(url)
                remote.check_shard_digests(
                    data, url, spec.run_id, remote.require_bound(spec.run_id, spec.digests)
                )
                key = pl.read_parquet_metadata(io.BytesIO(data)).get(SHARD_KEY_FIELD)
                frame = remote.read_parquet_object(data, url, max_rows=len(chunk) * spec.k)
            except (LcerError, OSError, ValueError, pl.exceptions.PolarsError):
                continue  # missing, unreadable or from another bundle: explain it
            users = set(frame["uid"].to_list()) if "uid" in frame.columns else set()
            if key == shard_key(spec, index, chunk) and users == set(chunk):
                found[(spec.run_id, index)] = url
    return found
