"""What an explanation shard needs and returns, as bytes, for workers that share no filesystem with the flow.

A *bundle* is the model's checkpoint (weights only) and the prepared data of the users to
explain (Parquet tables in the layout of ``$LCER_HOME/data/NAME``), as ``{name: bytes}``. It
travels through Ray's object store (``ray.put`` once per model, a reference per shard) or
through a storage URL that every machine can reach (``LCER_STORAGE``, an fsspec URL:
``file:///shared/folder``, ``s3://bucket/prefix``, ...). A worker rebuilds the model and the
data from it, explains its shard, and sends the shard file's bytes back; the flow writes
them to its own ``$LCER_HOME/work/RUN_ID/shard-XXXX.parquet``, so everything after the
explanations (evaluate, DuckDB, MLflow) stays with the flow. Nothing here imports Prefect
or Ray.
"""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from lcer_core.datasets import PreparedDataset
from lcer_core.datasets.prepared import PARTS
from lcer_core.errors import InvalidParameterError, MissingDataError, StorageError
from lcer_core.fsio import io_reason, parquet_bytes
from lcer_core.models import TrainedModel, model_bytes, model_from_bytes

__all__ = [
    "STORAGE_ENV",
    "CONNECT_TIMEOUT_S",
    "check_address",
    "wants_gpu",
    "make_bundle",
    "open_bundle",
    "storage_url",
    "check_storage",
    "put_bundle",
    "get_bundle",
    "put_bytes",
    "get_bytes",
    "shard_url",
]

#: Environment variable naming the storage URL shared by the flow and its workers.
STORAGE_ENV = "LCER_STORAGE"
#: The largest object read from the storage URL (whoever can write there must not fill memory):
#: far above an Epinions-shaped checkpoint (139 M parameters, 0.56 GB) and far below the machine.
MAX_OBJECT_BYTES_ENV = "LCER_MAX_STORAGE_BYTES"
MAX_OBJECT_BYTES = 4 << 30

_TABLES = ("users", "items", *PARTS)


#: Seconds to wait for a TCP connection to a Ray address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0


def check_address(address: str) -> None:
    """Refuse, in one line, a Ray address that is malformed or where nothing answers (before
    ``ray.init``, which would wait a long time and end in a traceback)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_text = hostport.rstrip("/").rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidParameterError(
            f"address must be HOST:PORT (or ray://HOST:PORT), got {address!r}", param="address"
        )
    try:
        with socket.create_connection(
            (host.strip("[]"), int(port_text)), timeout=CONNECT_TIMEOUT_S
        ):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise InvalidParameterError(
            f"cannot reach the Ray cluster at {address}: {reason} "
            "(start it with `ray start --head`, or check the address)"
        ) from None


def wants_gpu(method: str) -> bool:
    """Whether a method's shards ask a cluster for a GPU (the explainer's ``prefers_gpu``)."""
    from lcer_core.explainers import get_method

    return get_method(method).prefers_gpu


def make_bundle(
    data: PreparedDataset, model: TrainedModel, users: Sequence[int]
) -> dict[str, bytes]:
    """The model and the data of ``users`` (their interactions, all items) as ``{name: bytes}``."""
    keep = pl.Series("uid", sorted(set(users)), dtype=pl.Int64)
    bundle = {
        "model.pt": model_bytes(model),
        "meta.json": json.dumps(
            {**data.meta, "bundle": {"dataset": data.name, "model_key": model.key}}
        ).encode(),
        "items.parquet": parquet_bytes(data.items),
        "users.parquet": parquet_bytes(data.users.filter(pl.col("uid").is_in(keep.implode()))),
    }
    for part in PARTS:
        frame = data.part(part).filter(pl.col("uid").is_in(keep.implode()))
        bundle[f"{part}.parquet"] = parquet_bytes(frame)
    return bundle


def open_bundle(bundle: Mapping[str, bytes]) -> tuple[PreparedDataset, TrainedModel]:
    """The (data, model) of :func:`make_bundle`; a bundle with a part missing is a one-line error."""
    missing = [
        n for n in ("model.pt", "meta.json", *(f"{t}.parquet" for t in _TABLES)) if n not in bundle
    ]
    if missing:
        raise MissingDataError(f"the shard's inputs lack {', '.join(missing)}")
    try:
        meta = json.loads(bundle["meta.json"])
        name, key = str(meta["bundle"]["dataset"]), str(meta["bundle"]["model_key"])
        tables = {t: pl.read_parquet(io.BytesIO(bundle[f"{t}.parquet"])) for t in _TABLES}
    except (ValueError, KeyError, TypeError, pl.exceptions.PolarsError) as exc:
        raise MissingDataError(f"the shard's inputs cannot be read: {io_reason(exc)}") from None
    data = PreparedDataset(
        name=name,
        folder=Path(f"<{name} sent to this worker>"),
        meta=meta,
        users=tables["users"],
        items=tables["items"],
        _parts={p: tables[p] for p in PARTS},
    )
    return data, model_from_bytes(bundle["model.pt"], name, key)


# --------------------------------------------------------------------------- storage URL


def storage_url(url: str | None = None) -> str | None:
    """``url``, else ``LCER_STORAGE``, without a trailing slash; None when neither is set."""
    text = (url if url is not None else os.environ.get(STORAGE_ENV, "")).strip()
    return text.rstrip("/") or None


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    if "://" not in url:
        raise StorageError(
            f"storage URL {url!r} has no scheme: use e.g. file:///shared/folder or s3://bucket/prefix"
        )
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"storage URL {url!r} cannot be used: {io_reason(exc)}") from None
    return fs, path


def put_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` whole (a temporary name, then a move where the store has one)."""
    fs, path = _fs(url)
    parent = path.rsplit("/", 1)[0]
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    try:
        fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except Exception as exc:  # fsspec back ends raise their own types
        raise StorageError(f"cannot write {url}: {io_reason(exc)}") from None


def get_bytes(url: str) -> bytes:
    """The bytes at ``url``; a missing or unreadable object is a one-line error."""
    fs, path = _fs(url)
    cap = int(os.environ.get(MAX_OBJECT_BYTES_ENV) or MAX_OBJECT_BYTES)
    try:
        size = fs.size(path)
        if size is not None and size > cap:
            raise StorageError(
                f"{url} holds {size:,} bytes, more than the {cap:,} allowed "
                f"({MAX_OBJECT_BYTES_ENV}); not read"
            )
        data = bytes(fs.cat_file(path, start=0, end=cap + 1))
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot read {url}: {io_reason(exc)}") from None
    if len(data) > cap:  # the size the store reported was wrong
        raise StorageError(f"{url} holds more than the {cap:,} bytes allowed; not read")
    return data


def check_storage(url: str) -> str:
    """Refuse, in one line, a storage URL that cannot be written (probe: write and delete a file)."""
    url = storage_url(url) or ""
    if not url:
        raise StorageError("the storage URL is empty")
    probe = f"{url}/.lcer-probe-{uuid.uuid4().hex}"
    put_bytes(probe, b"lcer")
    fs, path = _fs(probe)
    try:
        fs.rm_file(path)
    except Exception as exc:
        raise StorageError(f"cannot delete {probe}: {io_reason(exc)}") from None
    return url


def _bundle_url(url: str, key: str) -> str:
    return f"{url}/bundles/{key}"


def put_bundle(url: str, key: str, bundle: Mapping[str, bytes]) -> str:
    """Upload a bundle under ``URL/bundles/KEY/`` (``meta.json`` last: its presence means complete)."""
    base = _bundle_url(url, key)
    for name in sorted(bundle, key=lambda n: n == "meta.json"):
        put_bytes(f"{base}/{name}", bundle[name])
    return base


def get_bundle(base: str) -> dict[str, bytes]:
    """The bundle uploaded by :func:`put_bundle` at ``base``."""
    names = ("model.pt", "meta.json", *(f"{t}.parquet" for t in _TABLES))
    return {name: get_bytes(f"{base}/{name}") for name in names}


def shard_url(url: str, run_id: str, index: int) -> str:
    """Where a worker leaves a shard file for the flow: ``URL/work/RUN_ID/shard-XXXX.parquet``."""
    return f"{url}/work/{run_id}/shard-{index:04d}.parquet"
