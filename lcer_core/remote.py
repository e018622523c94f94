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

Whoever can start a flow run chooses its parameters, so a worker trusts none of them with a
place: its storage root is its own ``LCER_STORAGE``, a bundle is fetched only from under it
(:func:`bundle_base`), and a bundle is used only if its content has the digests that the run
it explains is bound to (:func:`check_bundle`). A shard file sent back carries the digests of
the bundle it was explained from (:data:`SHARD_DIGEST_FIELDS`), which the pipeline checks
before storing it.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from lcer_core.checks import NAME_RE
from lcer_core.datasets import PreparedDataset
from lcer_core.datasets.prepared import PARTS
from lcer_core.errors import InvalidParameterError, MissingDataError, StorageError
from lcer_core.fsio import io_reason, parquet_bytes
from lcer_core.models import TrainedModel, model_bytes, model_from_bytes
from lcer_core.settings import settings

__all__ = [
    "STORAGE_ENV",
    "STORAGE_OPTIONS_ENV",
    "CONNECT_TIMEOUT_S",
    "check_address",
    "make_bundle",
    "open_bundle",
    "bundle_digests",
    "require_bound",
    "check_bundle",
    "SHARD_DIGEST_FIELDS",
    "check_shard_digests",
    "worker_storage",
    "bundle_base",
    "storage_url",
    "storage_options",
    "check_storage",
    "put_bundle",
    "get_bundle",
    "put_bytes",
    "get_bytes",
    "max_object_bytes",
    "parquet_extent",
    "read_parquet_object",
    "shard_url",
]

#: Environment variable naming the storage URL shared by the flow and its workers.
STORAGE_ENV = "LCER_STORAGE"
#: Environment variable holding fsspec storage options for it, as a JSON object.
STORAGE_OPTIONS_ENV = "LCER_STORAGE_OPTIONS"
#: Protocols whose fsspec back end is an extra of lcer: (its module, the extra). They are object
#: stores: no folders to make, and an object written appears whole or not at all.
_EXTRAS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
}
#: Protocols whose storage lives in one process, where no worker can reach it.
_PROCESS_LOCAL = frozenset({"memory"})
#: What a protocol needs beyond a package, said with its failure.
_NEEDS = {
    "hdfs": "hdfs:// needs Java and a Hadoop client for pyarrow's libhdfs (JAVA_HOME, HADOOP_HOME, "
    "CLASSPATH); webhdfs:// needs neither",
}
#: The largest object read from the storage URL, and the most a Parquet object received may
#: decode to (whoever can write there must not fill memory; default
#: :data:`lcer_core.settings.MAX_STORAGE_BYTES`).
MAX_OBJECT_BYTES_ENV = "LCER_MAX_STORAGE_BYTES"
_READ_CHUNK = 1 << 20
#: Bytes a value of each Parquet physical type takes once decoded (a string: its 16-byte view,
#: its characters being counted in the column's uncompressed size).
_DECODED_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}

_TABLES = ("users", "items", *PARTS)
#: Every entry of a bundle; all but ``model.pt`` are its data.
_ENTRIES = ("model.pt", "meta.json", *(f"{t}.parquet" for t in _TABLES))
#: The Parquet metadata fields of a shard sent back: the digests of the bundle it came from.
SHARD_DIGEST_FIELDS = ("lcer.model_digest", "lcer.data_digest")


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


def make_bundle(
    data: PreparedDataset,
    model: TrainedModel,
    users: Sequence[int],
    networks: Sequence[str] = (),
) -> dict[str, bytes]:
    """The model and the data of ``users`` (their interactions, all items) as ``{name: bytes}``,
    with the explainer ``networks`` the runs read (:func:`_network_entries`)."""
    keep = pl.Series("uid", sorted(set(users)), dtype=pl.Int64)
    head: dict[str, object] = {"dataset": data.name, "model_key": model.key}
    if networks:
        head["networks"] = sorted(set(networks))
    bundle = {
        "model.pt": model_bytes(model),
        "meta.json": json.dumps({**data.meta, "bundle": head}).encode(),
        "items.parquet": parquet_bytes(data.items),
        "users.parquet": parquet_bytes(data.users.filter(pl.col("uid").is_in(keep.implode()))),
    }
    for part in PARTS:
        frame = data.part(part).filter(pl.col("uid").is_in(keep.implode()))
        bundle[f"{part}.parquet"] = parquet_bytes(frame)
    return bundle | _network_entries(networks)


def open_bundle(bundle: Mapping[str, bytes]) -> tuple[PreparedDataset, TrainedModel]:
    """The (data, model) of :func:`make_bundle`; a bundle with a part missing is a one-line error."""
    missing = [n for n in _ENTRIES if n not in bundle]
    if missing:
        raise MissingDataError(f"the shard's inputs lack {', '.join(missing)}")
    try:
        meta = json.loads(bundle["meta.json"])
        name, key = str(meta["bundle"]["dataset"]), str(meta["bundle"]["model_key"])
        tables = {t: read_parquet_object(bundle[f"{t}.parquet"], f"{t}.parquet") for t in _TABLES}
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
    _adopt_networks(bundle)
    return data, model_from_bytes(bundle["model.pt"], name, key)


def bundle_digests(bundle: Mapping[str, bytes]) -> tuple[str, str]:
    """(model digest, data digest) of a bundle: sha256 of its checkpoint, and of the sha256 of
    each of its other entries by name (what a run crossing to a worker is bound to)."""
    model = hashlib.sha256(bundle.get("model.pt", b"")).hexdigest()
    parts = {n: hashlib.sha256(v).hexdigest() for n, v in bundle.items() if n != "model.pt"}
    data = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return model, data


def _mismatch(what: str, run_id: str, got: tuple[str, str], want: tuple[str, str]) -> str | None:
    for name, g, w in zip(("model", "data"), got, want, strict=True):
        if g != w:
            return (
                f"{what} holds another {name} than run {run_id} is bound to "
                f"({name} digest {g[:12]}, expected {w[:12]})"
            )
    return None


def require_bound(run_id: str, digests: tuple[str, str] | None) -> tuple[str, str]:
    """``digests`` of run ``run_id``; a run bound to no bundle is a one-line error."""
    if digests is None:
        raise InvalidParameterError(
            f"run {run_id} carries no model_digest and data_digest: no bundle can be checked "
            "against it (start it from a pipeline of this version)"
        )
    return digests


def check_bundle(
    bundle: Mapping[str, bytes], run_id: str, want: tuple[str, str] | None
) -> tuple[str, str]:
    """The digests of a bundle that is what run ``run_id`` is bound to (``want``: its model and
    data digests); any other bundle, or an unbound run, is a one-line error."""
    got = bundle_digests(bundle)
    message = _mismatch("the bundle", run_id, got, require_bound(run_id, want))
    if message:
        raise InvalidParameterError(message)
    return got


def check_shard_digests(data: bytes, name: str, run_id: str, want: tuple[str, str]) -> None:
    """Refuse, in one line, shard file bytes not explained from the bundle run ``run_id`` is
    bound to (the digests in its Parquet metadata; absent ones do not match)."""
    try:
        meta = pl.read_parquet_metadata(io.BytesIO(data))
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise MissingDataError(f"shard {name} came back unreadable: {io_reason(exc)}") from None
    got = (meta.get(SHARD_DIGEST_FIELDS[0], "none"), meta.get(SHARD_DIGEST_FIELDS[1], "none"))
    message = _mismatch(f"shard {name}", run_id, got, want)
    if message:
        raise InvalidParameterError(f"{message}: not stored")


# --------------------------------------------------------------------------- storage URL


def storage_url(url: str | None = None) -> str | None:
    """``url``, else ``LCER_STORAGE``, without a trailing slash; None when neither is set."""
    if url is None:
        return settings().storage
    return url.strip().rstrip("/") or None


def storage_options() -> dict[str, Any]:
    """fsspec storage options from ``LCER_STORAGE_OPTIONS`` (a JSON object, e.g.
    ``{"endpoint_url": "https://minio:9000"}``), else none: credentials and endpoints then come
    from the back end's usual environment (``AWS_*`` for s3fs, Google's for gcsfs)."""
    text = settings().storage_options
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:  # the text may hold secrets: not repeated
        raise StorageError(f"{STORAGE_OPTIONS_ENV} is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise StorageError(f"{STORAGE_OPTIONS_ENV} must be a JSON object of fsspec storage options")
    return options


def _reason(exc: BaseException) -> str:
    """The first line of a failure's reason (a back end's message may run over several)."""
    lines = io_reason(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` (with :func:`storage_options`) and its path there; a
    URL no back end here can serve is a one-line error, before anything is read or written."""
    if "://" not in url:
        raise StorageError(
            f"storage URL {url!r} has no scheme: use e.g. file:///shared/folder or s3://bucket/prefix"
        )
    protocol = _protocol(url)
    if protocol in _PROCESS_LOCAL:
        raise StorageError(
            f"storage URL {url!r} lives in this process only, where no worker can reach it: "
            "use file:// on a shared folder, s3:// or gs://"
        )
    import fsspec

    options = storage_options()
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        if protocol in _EXTRAS:
            module, extra = _EXTRAS[protocol]
            raise StorageError(
                f"storage URL {url!r} needs {module} (install lcer[{extra}]: "
                f"pip install 'lcer[{extra}]'): {_reason(exc.__cause__ or exc)}"
            ) from None
        raise StorageError(f"storage URL {url!r} cannot be used: {_reason(exc)}") from None
    except ValueError as exc:
        if protocol not in fsspec.available_protocols():
            raise StorageError(
                f"storage URL {url!r} has an unknown protocol {protocol}://: use file://, "
                "s3:// (lcer[s3]), gs:// (lcer[gcs]) or another fsspec protocol"
            ) from None
        raise StorageError(f"storage URL {url!r} cannot be used: {_reason(exc)}") from None
    except Exception as exc:  # a back end's own failure, e.g. pyarrow's libhdfs not loading
        needs = f" ({_NEEDS[protocol]})" if protocol in _NEEDS else ""
        raise StorageError(f"storage URL {url!r} cannot be used: {_reason(exc)}{needs}") from None


def _object_store(url: str) -> bool:
    return _protocol(url) in _EXTRAS


def put_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` whole: on an object store in one request (an object appears
    whole or not at all; no folder, no bucket is made), elsewhere under a temporary name, then
    moved."""
    fs, path = _fs(url)
    try:
        if _object_store(url):
            fs.pipe_file(path, data)
            return
        parent = path.rsplit("/", 1)[0]
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except Exception as exc:  # fsspec back ends raise their own types
        raise StorageError(f"cannot write {url}: {_storage_reason(url, exc)}") from None


def _storage_reason(url: str, exc: BaseException) -> str:
    """The reason of a storage failure on one line, with what to set when no credentials
    were found for an object store."""
    reason = _reason(exc)
    if _object_store(url) and "credentials" in reason.lower():
        hint = (
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            if _EXTRAS[_protocol(url)][1] == "s3"
            else "GOOGLE_APPLICATION_CREDENTIALS"
        )
        reason += f" (set {hint}, or {STORAGE_OPTIONS_ENV})"
    return reason


def max_object_bytes() -> int:
    """The cap of one object read from storage, and of what Parquet received decodes to:
    ``LCER_MAX_STORAGE_BYTES``, else 4 GiB."""
    return settings().max_storage_bytes


def get_bytes(url: str) -> bytes:
    """The bytes at ``url``, read in chunks under the cap (nothing reserved up front); a missing,
    unreadable or too large object is a one-line error."""
    cap = max_object_bytes()
    fs, path = _fs(url)
    parts: list[bytes] = []
    n = 0
    try:
        size = fs.size(path)
        if size is not None and size > cap:
            raise StorageError(
                f"{url} holds {size:,} bytes, more than the {cap:,} allowed "
                f"({MAX_OBJECT_BYTES_ENV}); not read"
            )
        with fs.open(path, "rb") as fh:
            while n <= cap and (chunk := fh.read(min(_READ_CHUNK, cap + 1 - n))):
                parts.append(chunk)
                n += len(chunk)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot read {url}: {_storage_reason(url, exc)}") from None
    if n > cap:  # the size the store reported was wrong
        raise StorageError(f"{url} holds more than the {cap:,} bytes allowed; not read")
    return b"".join(parts)


def parquet_extent(data: bytes) -> tuple[int, int]:
    """(rows, bytes) that Parquet ``data`` decodes to, as its footer tells (nothing decoded):
    the bytes estimated from each column chunk's value count and uncompressed size. A few MB
    of Parquet can hold 600 M rows; Parquet that is no Parquet raises ``ValueError``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    rows, size = meta.num_rows, 0
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    for group in groups:
        for j in range(group.num_columns):
            column = group.column(j)
            width = _DECODED_WIDTH.get(column.physical_type, 16)
            if column.physical_type == "FIXED_LEN_BYTE_ARRAY":
                width = meta.schema.column(j).length
            size += column.num_values * (width + 1) + column.total_uncompressed_size
    return max(rows, sum(g.num_rows for g in groups)), size


def read_parquet_object(data: bytes, what: str, *, max_rows: int | None = None) -> pl.DataFrame:
    """Parquet ``data`` received from storage or a worker as a frame, decoded only once its
    footer shows at most ``max_rows`` rows and a decoded size within :func:`max_object_bytes`
    (polars aborts the whole process when it cannot allocate what a file declares).
    Unreadable Parquet raises ``ValueError`` or a polars error; too much, :class:`StorageError`."""
    cap = max_object_bytes()
    rows, size = parquet_extent(data)
    if max_rows is not None and rows > max_rows:
        raise StorageError(
            f"{what} declares {rows:,} rows, more than the {max_rows:,} expected; not read"
        )
    if size > cap:
        raise StorageError(
            f"{what} decodes to about {size:,} bytes, more than the {cap:,} allowed "
            f"({MAX_OBJECT_BYTES_ENV}); not read"
        )
    return pl.read_parquet(io.BytesIO(data))


def worker_storage(given: str | None = None) -> str:
    """This worker's storage root, from its own ``LCER_STORAGE``; a ``given`` root (a flow
    parameter) is accepted only if it is the same, never used to choose a place."""
    own = storage_url()
    if own is None:
        raise StorageError(
            f"this worker has no storage URL ({STORAGE_ENV}): it cannot take bundles; "
            f"set {STORAGE_ENV} on its work pool, as on the pipeline's"
        )
    if given is not None and storage_url(given) != own:
        raise InvalidParameterError(
            f"storage {given!r} is not this worker's storage URL {own} ({STORAGE_ENV}): "
            "a worker writes only under its own",
            param="storage",
        )
    return own


def bundle_base(storage: str, url: str) -> str:
    """``url`` if it is a bundle folder right under ``STORAGE/bundles/`` (a name checked like a
    dataset name); else a one-line error, before anything is fetched."""
    prefix = _bundle_url(storage, "")
    name = url.removeprefix(prefix) if isinstance(url, str) else ""
    if not (isinstance(url, str) and url.startswith(prefix) and NAME_RE.fullmatch(name)):
        raise InvalidParameterError(
            f"bundle URL {url!r} is not a bundle under this worker's storage URL {prefix}NAME: "
            "not fetched",
            param="bundles",
        )
    return _bundle_url(storage, name)


def check_storage(url: str) -> str:
    """Refuse, in one line, a storage URL that cannot serve: no back end for its protocol (an
    extra not installed), no bucket, credentials missing or refused, no right to write, read
    or delete (probe: an object written, read back and deleted)."""
    url = storage_url(url) or ""
    if not url:
        raise StorageError("the storage URL is empty")
    max_object_bytes()  # a bad cap is refused before anything runs
    _fs(url)  # a protocol no back end here serves is named with the URL as given
    probe = f"{url}/.lcer-probe-{uuid.uuid4().hex}"
    token = uuid.uuid4().bytes
    put_bytes(probe, token)
    try:
        same = get_bytes(probe) == token
    finally:  # the probe is not left behind, even when it cannot be read
        fs, path = _fs(probe)
        try:
            fs.rm_file(path)
        except Exception as exc:
            raise StorageError(f"cannot delete {probe}: {_storage_reason(url, exc)}") from None
    if not same:
        raise StorageError(f"{probe} reads back other bytes than were written to it")
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
    """The bundle uploaded by :func:`put_bundle` at ``base`` (with the networks it names)."""
    bundle = {name: get_bytes(f"{base}/{name}") for name in _ENTRIES}
    names = [_network_entry(k) for k in _bundle_networks(bundle)]
    return bundle | {name: get_bytes(f"{base}/{name}") for name in names}


# --------------------------------------------------------------------------- explainer networks
# A trained explainer network (the amortised explainer's; LCER's warm start) travels in the
# bundle of its recommender as one more entry, ``network-KEY.pt``, named in ``meta.json``
# (``bundle.networks``) and covered by the data digest; the worker keeps it in memory
# (:func:`lcer_core.amortised_store.adopt_network`), so it needs none in its own LCER_HOME.


def _network_entry(key: str) -> str:
    return f"network-{key}.pt"


def _network_entries(keys: Sequence[str]) -> dict[str, bytes]:
    from lcer_core.amortised_store import network_bytes

    return {_network_entry(k): network_bytes(k) for k in sorted(set(keys))}


def _bundle_networks(bundle: Mapping[str, bytes]) -> list[str]:
    """The network keys a bundle's ``meta.json`` names (checked: none becomes a bad path)."""
    from lcer_core.explainers.amortised import KEY_PATTERN

    try:
        keys = json.loads(bundle["meta.json"])["bundle"].get("networks", [])
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    if not isinstance(keys, list) or not all(
        isinstance(k, str) and KEY_PATTERN.fullmatch(k) for k in keys
    ):
        raise MissingDataError("the shard's inputs name explainer networks that are no keys")
    return keys


def _adopt_networks(bundle: Mapping[str, bytes]) -> None:
    from lcer_core.amortised_store import adopt_network

    keys = _bundle_networks(bundle)
    missing = [_network_entry(k) for k in keys if _network_entry(k) not in bundle]
    if missing:
        raise MissingDataError(f"the shard's inputs lack {', '.join(missing)}")
    for key in keys:
        adopt_network(key, bundle[_network_entry(key)])


def shard_url(url: str, run_id: str, index: int) -> str:
    """Where a worker leaves a shard file for the flow: ``URL/work/RUN_ID/shard-XXXX.parquet``."""
    return f"{url}/work/{run_id}/shard-{index:04d}.parquet"
