"""``prepare``: download (or take from the mirror), parse, filter, split, persist; idempotent.

The prepared files are written into a new folder ``$LCER_HOME/data/NAME/prepared-ID/``
(``meta.json`` last, with the sha256 of every file), then the pointer file ``current`` is
replaced atomically and the older preparations are removed (see
:mod:`lcer_core.datasets.prepared`). A failure leaves nothing half-written, and a dataset
folder this call created is removed again.

The settings a dataset was prepared with (seed, held-out users, threshold, ...) are part of
its identity: a later call that does not name them uses the stored ones, and one that names
other values is refused unless ``force`` is given. A preparation whose files no longer match
their recorded digests is prepared again with its own settings.

A split seed ``S`` (``split_seed``, ``lcer prepare NAME --split-seed S``) prepares, in
``data/NAME/split-S/`` and beside the default preparation, the same data split with seed ``S``
(the user shuffle and the fold-in split) and the default preparation's other settings
(held-out users, split protocol): another assignment of users to train, validation and test.
The default preparation, its files and its fingerprint are unchanged by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lcer_core import __version__
from lcer_core.checks import check_heldout, check_seed, check_split_seed
from lcer_core.errors import DamagedDataError, InvalidParameterError, LcerHomeError
from lcer_core.fsio import (
    TMP_PREFIX,
    ensure_writable,
    home_error,
    io_reason,
    parquet_bytes,
    write_text_atomic,
)
from lcer_core.paths import dataset_dir, lcer_home

from .download import DownloadSettings, FetchedArchive, fetch_archive, read_members, sha256_file
from .parse import GivenSplit, RawInteractions, parse_members
from .prepared import (
    CURRENT,
    PARTS,
    VERSION_PREFIX,
    PreparedDataset,
    load_prepared,
    prepared_dir,
    split_dir,
)
from .preprocess import (
    TEST_PROP,
    SplitResult,
    check_split,
    from_given_split,
    split_mult_vae,
)
from .registry import DEFAULT_SEED, DatasetSpec, get_spec
from .user_files import read_custom

__all__ = [
    "PrepareResult",
    "prepare",
    "prepare_dataset",
    "build",
    "write_prepared",
    "fingerprint",
    "dataset_lock",
    "source_record",
    "damaged_file",
    "stored_settings",
]

log_ = logging.getLogger("lcer.datasets")
META = "meta.json"
TABLES = (*PARTS, "users", "items")


@dataclass(frozen=True)
class PrepareResult:
    """Where a prepared dataset lies, whether this call did the work, and its statistics."""

    name: str
    path: Path
    did_work: bool
    stats: dict[str, Any]
    seed: int


_lock_state = threading.local()
_thread_lock = threading.RLock()


@contextlib.contextmanager
def dataset_lock() -> Iterator[None]:
    """Serialise dataset preparation across processes (a flock on LCER_HOME); re-entrant."""
    with _thread_lock:
        depth = getattr(_lock_state, "depth", 0)
        if depth:
            _lock_state.depth = depth + 1
            try:
                yield
            finally:
                _lock_state.depth -= 1
            return
        home = lcer_home()
        try:
            home.mkdir(parents=True, exist_ok=True)
            fd = os.open(home, os.O_RDONLY)
        except OSError as exc:
            raise LcerHomeError(f"cannot use LCER_HOME {home}: {io_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _lock_state.depth = 1
            try:
                yield
            finally:
                _lock_state.depth = 0
        finally:
            os.close(fd)  # closing releases the flock


def fingerprint(result: SplitResult) -> str:
    """sha256 of the prepared content (every table as canonical CSV), independent of file encoding."""
    h = hashlib.sha256()
    tables = {**result.parts, "users": result.users, "items": result.items}
    for name in TABLES:
        h.update(f"# {name}\n".encode())
        h.update(tables[name].write_csv().encode())
    return h.hexdigest()


def _settings(
    spec: DatasetSpec, seed: int, heldout: int, split: str = "reference"
) -> dict[str, Any]:
    """What determines the prepared content: equal settings mean there is nothing to redo."""
    # the split is named only when it is not the reference protocol (older folders match)
    return ({"split": split} if split != "reference" else {}) | {
        "format": spec.raw_format,
        "seed": seed,
        "heldout_users": heldout,
        "threshold": spec.threshold,
        "min_user_interactions": spec.min_user_interactions,
        "test_prop": TEST_PROP,
        "checksums": dict(spec.checksums),
    }


def build(
    spec: DatasetSpec,
    raw: RawInteractions | GivenSplit,
    *,
    seed: int,
    heldout: int,
    split: str = "reference",
) -> SplitResult:
    """The prepared dataset in memory, from parsed raw data (no file is written)."""
    if isinstance(raw, GivenSplit):
        return from_given_split(spec.name, raw)
    return split_mult_vae(
        spec.name,
        raw.ratings,
        raw.items,
        threshold=spec.threshold,
        min_user_interactions=spec.min_user_interactions,
        heldout_users=heldout,
        seed=seed,
        split=split,
    )


def source_record(
    spec: DatasetSpec, archive_sha256: str, members: dict[str, str]
) -> dict[str, Any]:
    """Which exact bytes a preparation read: the archive's and each member's sha256, and
    which of them were checked against a digest published in the registry."""
    return {
        "format": spec.raw_format,
        "archive": spec.archive,
        "url": spec.url,
        "archive_sha256": archive_sha256,
        "members_sha256": dict(sorted(members.items())),
        "published_sha256": sorted(n for n in members if n in spec.checksums),
    }


def meta_record(
    spec: DatasetSpec,
    result: SplitResult,
    seed: int,
    heldout: int,
    source: dict[str, Any],
    split: str = "reference",
) -> dict[str, Any]:
    return {
        "dataset": spec.name,
        "stats": result.stats,
        "seed": seed,
        "heldout_users": heldout,
        "fingerprint": fingerprint(result),
        "settings": _settings(spec, seed, heldout, split),
        "source": source,
        "table1_paper": None
        if spec.table1 is None
        else {
            "users": spec.table1.users,
            "items": spec.table1.items,
            "interactions": spec.table1.interactions,
            "density_pct": spec.table1.density_pct,
        },
        "protocol": "mult-vae (Liang et al. 2018): rating > threshold, users >= min, N/N held-out users, 80/20 fold-in",
        "lcer_version": __version__,
        "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_pointer(folder: Path, version: str) -> None:
    """Point ``folder/current`` at ``version``, atomically (a reader sees the old or the new)."""
    write_text_atomic(folder / CURRENT, version + "\n", parents=False)


def _remove_stale(folder: Path, keep: str) -> None:
    """Older preparations, leftovers of killed ones and the files of the flat layout of old."""
    for child in folder.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and child.name.startswith((VERSION_PREFIX, ".prepare-")):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name in {META, *(f"{t}.parquet" for t in TABLES)} or child.name.startswith(
            (".current-", TMP_PREFIX)  # a pointer's temporary file (.current- before fsio)
        ):
            child.unlink(missing_ok=True)


def write_prepared(folder: Path, result: SplitResult, meta: dict[str, Any]) -> None:
    """Write the layout of :mod:`lcer_core.datasets.prepared` into a new version folder under
    ``folder`` and switch ``folder/current`` to it; ``meta.json`` records every file's sha256."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=folder))
    except OSError as exc:
        raise home_error(folder, exc) from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    version = f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    switched = False
    try:
        tables = {**result.parts, "users": result.users, "items": result.items}
        files: dict[str, str] = {}
        for name in TABLES:
            # Through bytes: a full disk is then an OSError, not an opaque Parquet error.
            blob = parquet_bytes(tables[name])
            (tmp / f"{name}.parquet").write_bytes(blob)
            files[f"{name}.parquet"] = hashlib.sha256(blob).hexdigest()
        full = {**meta, "files": files}
        (tmp / META).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        os.rename(tmp, folder / version)
        _write_pointer(folder, version)
        switched = True
        _remove_stale(folder, keep=version)
    except OSError as exc:
        raise home_error(folder, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not switched:
            shutil.rmtree(folder / version, ignore_errors=True)


def _read_meta(name: str, split_seed: int | None = None) -> dict[str, Any] | None:
    """The current preparation's ``meta.json``, or None if there is none (or it is unreadable)."""
    folder = prepared_dir(name, split_seed)
    if folder is None:
        return None
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def damaged_file(name: str, meta: dict[str, Any], split_seed: int | None = None) -> str | None:
    """The first file of the current preparation that is missing or differs from its recorded
    sha256 (files of preparations that recorded none are only checked to exist), or None."""
    folder = prepared_dir(name, split_seed)
    if folder is None:
        return META
    recorded = meta.get("files")
    names = list(recorded) if isinstance(recorded, dict) else [f"{t}.parquet" for t in TABLES]
    for fname in names:
        path = folder / fname
        if not path.is_file():
            return fname
        if isinstance(recorded, dict) and sha256_file(path) != recorded[fname]:
            return fname
    return None


def _load_raw(
    spec: DatasetSpec, fetched: FetchedArchive
) -> tuple[RawInteractions | GivenSplit, dict[str, Any]]:
    """The parsed raw data and the record of the bytes it was parsed from."""
    if spec.raw_format == "custom":
        return read_custom(spec), source_record(spec, fetched.sha256, fetched.members)
    contents = read_members(spec, fetched.path)  # capped and checked again, as parsed
    raw = parse_members(spec, contents.data, fetched.path.name)
    return raw, source_record(spec, fetched.sha256, contents.sha256)


def stored_settings(name: str, split_seed: int | None = None) -> tuple[int, int] | None:
    """(seed, held-out users) of the current preparation of ``name`` (or of one in the flat
    layout of earlier versions, which the next preparation replaces), or None."""
    meta = _read_meta(name, split_seed)
    if meta is None and split_seed is None and prepared_dir(name) is None:
        try:
            meta = json.loads((dataset_dir(name) / META).read_text())
        except (OSError, ValueError):
            meta = None
    if not isinstance(meta, dict):
        return None
    try:
        return int(meta["seed"]), int(meta["heldout_users"])
    except (KeyError, TypeError, ValueError):
        return None


def _resolve_settings(
    name: str,
    spec: DatasetSpec,
    seed: int | None,
    heldout: int | None,
    force: bool,
    split_seed: int | None = None,
) -> tuple[int, int]:
    """The seed and held-out users to prepare with: the given ones, else the stored ones, else
    the defaults; other values than the stored ones are refused without ``force``."""
    stored = stored_settings(name, split_seed)
    folder = prepared_dir(name, split_seed)
    if stored is None and folder is not None and folder.is_dir() and not force:
        raise DamagedDataError(
            f"the prepared data of {name!r} in {folder} is damaged (its meta.json cannot be "
            f"read): run `lcer prepare {name} --force` to prepare it again"
        )
    if stored is None:
        return (
            DEFAULT_SEED if seed is None else seed,
            spec.heldout_users if heldout is None else heldout,
        )
    want = (stored[0] if seed is None else seed, stored[1] if heldout is None else heldout)
    if want != stored and not force:
        raise InvalidParameterError(
            f"{name} is prepared with seed {stored[0]} and {stored[1]} held-out users, not "
            f"seed {want[0]} and {want[1]}: pass --force to prepare it again with these "
            f"settings (its models must then be trained again)"
        )
    return want


def _resolve_split(name: str, split: str | None, force: bool, split_seed: int | None = None) -> str:
    """The split to prepare with: the given one, else the stored one, else the reference
    protocol; another split than the stored one is refused without ``force``."""
    meta = _read_meta(name, split_seed)
    settings = meta.get("settings") if isinstance(meta, dict) else None
    stored = settings.get("split", "reference") if isinstance(settings, dict) else None
    if split is None:
        return stored or "reference"
    if stored is not None and split != stored and not force:
        raise InvalidParameterError(
            f"{name} is prepared with the {stored} split, not {split}: pass --force to prepare "
            f"it again with it (its models must then be trained again)"
        )
    return split


def prepare_dataset(
    name: str,
    *,
    seed: int | None = None,
    force: bool = False,
    heldout: int | None = None,
    progress: bool | None = None,
    settings: DownloadSettings | None = None,
    log: Callable[[str], None] | None = None,
    split: str | None = None,
    split_seed: int | None = None,
) -> PrepareResult:
    """Prepare ``name`` unless it already is with the same settings; say which happened.

    ``seed`` and ``heldout`` default to the stored settings of an earlier preparation (else to
    the registry's); asking for others is refused unless ``force`` is given. ``split``:
    ``"reference"`` (Mult-VAE's protocol) or ``"authors-notebook"`` (the LCER authors'
    notebook as it ran; see :mod:`lcer_core.datasets.preprocess`), stored like the seed.
    ``split_seed``: prepare the split with that seed beside the default one (see the module
    docstring); it is that preparation's seed, so ``seed`` cannot be given with it.
    """
    say = log or log_.info
    if split_seed is not None:
        check_split_seed(split_seed)
        if seed is not None:
            raise InvalidParameterError(
                "split_seed is the seed of its own preparation: give seed or split_seed, not both",
                param="split_seed",
            )
    if seed is not None:
        check_seed(seed)
    if heldout is not None:
        check_heldout(heldout)
    if split is not None:
        check_split(split)
    spec = get_spec(name)
    folder = split_dir(name, split_seed)
    with dataset_lock():
        if split_seed is not None:  # the default preparation's other settings
            seed = split_seed
            if heldout is None and stored_settings(name, split_seed) is None:
                heldout = (stored_settings(name) or (0, None))[1]
            if split is None and _read_meta(name, split_seed) is None:
                split = _resolve_split(name, None, False)
        seed, n_heldout = _resolve_settings(name, spec, seed, heldout, force, split_seed)
        split = _resolve_split(name, split, force, split_seed)
        check_seed(seed)
        check_heldout(n_heldout)
        meta = _read_meta(name, split_seed)
        if (
            not force
            and meta is not None
            and meta.get("settings") == _settings(spec, seed, n_heldout, split)
        ):
            broken = damaged_file(name, meta, split_seed)
            if broken is None:
                say(f"{name} is already prepared (seed {seed}) in {folder}: nothing to do")
                return PrepareResult(name, folder, False, dict(meta["stats"]), seed)
            say(f"{name}: {broken} of its prepared data is damaged: preparing it again")
        existed = folder.exists()
        try:
            ensure_writable(folder)  # before the download and the parsing
            fetched = fetch_archive(spec, progress=progress, settings=settings)
            raw, source = _load_raw(spec, fetched)
            result = build(spec, raw, seed=seed, heldout=n_heldout, split=split)
            meta = meta_record(spec, result, seed, n_heldout, source, split)
            write_prepared(folder, result, meta)
        except BaseException:
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            raise
    say(f"prepared {name} in {folder}")
    return PrepareResult(name, folder, True, dict(result.stats), seed)


def prepare(
    name: str,
    *,
    seed: int | None = None,
    force: bool = False,
    heldout: int | None = None,
    split_seed: int | None = None,
) -> Path:
    """Download, filter and split dataset ``name`` into ``$LCER_HOME/data/NAME`` (with a split
    seed, ``data/NAME/split-S``); its folder."""
    return prepare_dataset(
        name, seed=seed, force=force, heldout=heldout, split_seed=split_seed
    ).path


def ensure_prepared(name: str, split_seed: int | None = None) -> PreparedDataset:
    """Dataset ``name`` (with ``split_seed``: that split), prepared first if it is not yet."""
    prepare(name, split_seed=split_seed)
    return load_prepared(name, split_seed)
